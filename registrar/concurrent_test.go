package registrar

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestConcurrentUse runs Save, Lookup, RefreshFromStore, Merge, Records and
// Purge at once with Run writing to the store; run with -race. At the end a
// peer fed through OnChange holds the same state.
func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	r, _, _ := newTest(t, dir, func(c *Config) { c.PurgeInterval = 5 * time.Millisecond })
	peer, _, _ := newTest(t, "", nil)
	var mu sync.Mutex
	var out []Record
	r.OnChange(func(rec Record) {
		mu.Lock()
		out = append(out, rec)
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				user := fmt.Sprint(1000 + (w*200+i)%50)
				req, res := register(t, user, "sip:"+user+"@10.0.0.1:5060", "c"+user, i+1, 600)
				if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
					t.Error(err)
					return
				}
				_, _ = r.Lookup(user)
				req, _ = register(t, user, "sip:"+user+"@10.0.0.1:5060", "c"+user, 10_000+i, 600)
				_, _ = r.RefreshFromStore(req, src("192.0.2.1:5060"))
				if i%50 == 0 {
					_, _ = r.Merge(r.Records())
					_ = r.Snapshot()
					r.Purge()
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if _, err := peer.Merge(out); err != nil {
		t.Fatal(err)
	}
	mu.Unlock()
	if a, b := canonical(t, r), canonical(t, peer); a != b {
		t.Fatalf("peer fed by OnChange differs from the origin")
	}
	if n, aors := r.Count(); n != 50 || aors != 50 {
		t.Fatalf("Count = %d, %d; want 50, 50", n, aors)
	}
}
