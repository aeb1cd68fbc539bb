package registrar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hapbx/hapbx/internal/testkit"
)

func TestPersistenceAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	r, _, _ := newTest(t, dir, nil)
	long := "sip:401@10.0.0.1:5060"
	req, res := register(t, "401", long, "c401", 5, 3600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	req, res = register(t, "402", "sip:402@10.0.0.2:5060", "c402", 1, 60)
	if _, err := r.Save(req, res, src("192.0.2.2:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	req, res = register(t, "403", "sip:403@10.0.0.3:5060", "c403", 1, 600)
	if _, err := r.Save(req, res, src("192.0.2.3:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	req, res = register(t, "403", "sip:403@10.0.0.3:5060", "c403", 2, 0)
	if _, err := r.Save(req, res, src("192.0.2.3:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	// Close without Run: Close alone must flush.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen two minutes later: 402 (60 s) has expired and is dropped at load.
	r3 := reopenAt(t, dir, t0.Add(2*time.Minute))
	bs, err := r3.Lookup("sip:401@pbx.example.com")
	if err != nil || len(bs) != 1 || bs[0].Contact != long || bs[0].CSeq != 5 || bs[0].CallID != "c401" ||
		bs[0].Source.Addr.String() != "192.0.2.1:5060" || !bs[0].Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("401 after reopen: %+v %v", bs, err)
	}
	if _, err := r3.Lookup("sip:402@pbx.example.com"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("402 expired at load: err %v, want ErrNoBinding", err)
	}
	if _, err := r3.Lookup("sip:403@pbx.example.com"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("403 removed: err %v, want ErrNoBinding (tombstone kept)", err)
	}
	if s := r3.Snapshot(); s.Bindings != 1 || s.Tombstones != 1 {
		t.Fatalf("snapshot after reopen %+v", s)
	}
}

// reopenAt opens the store in dir with a registrar whose clock reads at.
func reopenAt(t *testing.T, dir string, at time.Time) *Registrar {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	r, err := newAt(cfg, at, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestRunFlushesAndPurges(t *testing.T) {
	dir := t.TempDir()
	r, _, _ := newTest(t, dir, func(c *Config) { c.PurgeInterval = 10 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	req, res := register(t, "501", "sip:501@10.0.0.1:5060", "c501", 1, 600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 2*time.Second, "Run wrote the queued binding", func() bool { return r.Snapshot().Store.Pending == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := reopenAt(t, dir, t0)
	if _, err := r2.Lookup("501"); err != nil {
		t.Fatalf("after Run wrote and reopen: %v", err)
	}
}

func TestDamagedStore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		garbage func(t *testing.T, path string)
	}{
		{"garbage file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(strings.Repeat("this is not a bbolt file\n", 500)), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"damaged pages", func(t *testing.T, path string) {
			dir := filepath.Dir(path)
			r := reopenAt(t, dir, t0)
			for _, u := range []string{"601", "602", "603"} {
				req, res := register(t, u, "sip:"+u+"@10.0.0.1:5060", "c"+u, 1, 600)
				if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			// Keep the meta pages (first two 4 KiB pages), smash the rest.
			junk := []byte(strings.Repeat("\xde\xad\xbe\xef", 1024))
			for off := int64(8192); off < st.Size(); off += int64(len(junk)) {
				if _, err := f.WriteAt(junk, off); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, storeFile)
			tc.garbage(t, path)

			core, logs := observer.New(zap.ErrorLevel)
			reg := prometheus.NewRegistry()
			cfg := DefaultConfig()
			cfg.DataDir = dir
			r, err := newAt(cfg, t0, zap.New(core), reg)
			if err != nil {
				t.Fatalf("New must start despite a damaged store: %v", err)
			}
			t.Cleanup(func() { _ = r.Close() })
			if n, _ := r.Count(); n != 0 {
				t.Fatalf("%d bindings from a damaged store", n)
			}
			st := r.Snapshot().Store
			t.Logf("store status: %+v", st)
			if !strings.Contains(st.Error, path) || st.MovedTo == "" || !strings.Contains(st.MovedTo, ".corrupt-") {
				t.Fatalf("status %+v: want error naming %s and a moved-to file", st, path)
			}
			if _, err := os.Stat(st.MovedTo); err != nil {
				t.Fatalf("damaged file not kept aside: %v", err)
			}
			if v := metricValue(t, reg, "hapbx_registrar_store_errors_total"); v < 1 {
				t.Fatalf("store_errors_total = %v", v)
			}
			found := false
			for _, e := range logs.All() {
				if e.ContextMap()["path"] == path {
					found = true
				}
			}
			if !found {
				t.Fatalf("no error log with the path; logs: %+v", logs.All())
			}
			// The fresh store works.
			req, res := register(t, "701", "sip:701@10.0.0.1:5060", "c701", 1, 600)
			if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := reopenAt(t, dir, t0).Lookup("701"); err != nil {
				t.Fatalf("fresh store after moving aside: %v", err)
			}
		})
	}
}

func TestUndecodableRecordDropped(t *testing.T) {
	dir := t.TempDir()
	st, cerr, err := openStore(dir, t0)
	if err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	st.enqueue(map[string]pendingOp{"bogus": {rec: Record{}}})
	if err := st.close(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	r, err := newAt(cfg, t0, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if v := metricValue(t, reg, "hapbx_registrar_store_errors_total"); v != 1 {
		t.Fatalf("store_errors_total = %v, want 1", v)
	}
	if s := r.Snapshot().Store; s.MovedTo != "" || !strings.Contains(s.Error, "bogus") {
		t.Fatalf("one bad record must not move the file: %+v", s)
	}
}

func TestStoreLockedFails(t *testing.T) {
	dir := t.TempDir()
	r := reopenAt(t, dir, t0)
	_ = r
	cfg := DefaultConfig()
	cfg.DataDir = dir
	if _, err := newAt(cfg, t0, zap.NewNop(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a store locked by another registrar must fail, not be moved aside")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt-*")); len(m) != 0 {
		t.Fatalf("locked store moved aside: %v", m)
	}
}

// TestDamagedLeafPages damages only the data pages: bbolt opens the file,
// and reading the records fails or yields garbage. Either way the problem
// is reported with the path and nothing damaged is loaded.
func TestDamagedLeafPages(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, storeFile)
	r := reopenAt(t, dir, t0)
	for i := range 200 {
		u := fmt.Sprint(800 + i)
		req, res := register(t, u, "sip:"+u+"@10.0.0.1:5060", "c"+u, 1, 600)
		if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var leaves []int
	pageSize := db.Info().PageSize
	if err := db.View(func(tx *bolt.Tx) error {
		for id := 0; ; id++ {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info == nil {
				return nil
			}
			if info.Type == "leaf" {
				leaves = append(leaves, id)
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if len(leaves) < 2 {
		t.Fatalf("want several leaf pages, got %v", leaves)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range leaves {
		// Keep the page header (16 bytes) so bbolt still sees a leaf; smash
		// the element table and the data behind it.
		junk := []byte(strings.Repeat("\x07\x00\xff\xff", (pageSize-16)/4))
		if _, err := f.WriteAt(junk, int64(id*pageSize+16)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	reg := prometheus.NewRegistry()
	core, logs := observer.New(zap.ErrorLevel)
	cfg := DefaultConfig()
	cfg.DataDir = dir
	r2, err := newAt(cfg, t0, zap.New(core), reg)
	if err != nil {
		t.Fatalf("New must start despite damaged pages: %v", err)
	}
	t.Cleanup(func() { _ = r2.Close() })
	st := r2.Snapshot()
	t.Logf("after damaged leaves: bindings %d, store %+v", st.Bindings, st.Store)
	if !strings.Contains(st.Store.Error, path) || metricValue(t, reg, "hapbx_registrar_store_errors_total") < 1 || logs.Len() == 0 {
		t.Fatalf("damage not reported: %+v, %d logs", st.Store, logs.Len())
	}
	if st.Bindings > 0 {
		// Whatever survived must be intact bindings.
		for _, b := range r2.Bindings() {
			if _, err := r2.Lookup(b.AOR); err != nil || b.CallID != "c"+strings.TrimSuffix(strings.TrimPrefix(b.AOR, "sip:"), "@pbx.example.com") {
				t.Fatalf("garbage binding loaded: %+v", b)
			}
		}
	}
}

// TestReopenWithOtherDomains: records keyed under an earlier domains
// setting are found and re-keyed, not duplicated or lost.
func TestReopenWithOtherDomains(t *testing.T) {
	dir := t.TempDir()
	r, _, _ := newTest(t, dir, func(c *Config) { c.Domains = []string{"old.example.com"} })
	req, res := register(t, "901", "sip:901@10.0.0.1:5060", "c901", 1, 600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second reopen reads what the first one rewrote
		cfg := DefaultConfig()
		cfg.DataDir = dir
		cfg.Domains = []string{"pbx.example.com"}
		r2, err := newAt(cfg, t0, zap.NewNop(), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		if bs, err := r2.Lookup("sip:901@pbx.example.com"); err != nil || len(bs) != 1 {
			t.Fatalf("after re-keying: %+v %v", bs, err)
		}
		if err := r2.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db, err := bolt.Open(filepath.Join(dir, storeFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	_ = db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketRecords).Stats().KeyN; return nil })
	if n != 1 {
		t.Fatalf("%d stored records, want 1", n)
	}
}
