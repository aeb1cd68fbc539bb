package cluster

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hapbx/hapbx/internal/testkit"
)

// fakeVIP stands in for the VIP on an interface: failures can be injected, and it
// notices overlapping calls (two goroutines changing the address at once).
type fakeVIP struct {
	mu          sync.Mutex
	held        bool
	failRelease bool
	acquires    int
	// gate, if set, makes the next Acquire signal entered and wait for gate; then
	// afterGate runs before it returns.
	gate      chan struct{}
	entered   chan struct{}
	afterGate func()

	busy    atomic.Int32
	overlap atomic.Bool
}

func (f *fakeVIP) enter() func() {
	if f.busy.Add(1) > 1 {
		f.overlap.Store(true)
	}
	return func() { f.busy.Add(-1) }
}

func (f *fakeVIP) Acquire() error {
	defer f.enter()()
	f.mu.Lock()
	gate, entered, after := f.gate, f.entered, f.afterGate
	f.gate = nil
	f.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	time.Sleep(time.Millisecond) // a netlink call takes time: widen any overlap
	f.mu.Lock()
	f.held = true
	f.acquires++
	f.mu.Unlock()
	if after != nil {
		after()
	}
	return nil
}

func (f *fakeVIP) Release() error {
	defer f.enter()()
	time.Sleep(time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failRelease {
		return errors.New("injected: netlink says no")
	}
	f.held = false
	return nil
}

func (f *fakeVIP) Held() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, nil
}

func (f *fakeVIP) isHeld() bool {
	h, _ := f.Held()
	return h
}

func (f *fakeVIP) setFailRelease(v bool) {
	f.mu.Lock()
	f.failRelease = v
	f.mu.Unlock()
}

// proxyTrio starts, on loopback, one proxy whose VIP is fv and two witnesses, and
// waits until the proxy holds the VIP (unless the first Acquire is gated). prep runs
// on the proxy before Start.
func proxyTrio(t *testing.T, fv *fakeVIP, log *zap.Logger, reg prometheus.Registerer, prep func(*Cluster)) (*Cluster, []*Cluster) {
	t.Helper()
	k := writeKey(t, t.TempDir(), 3)
	cfgs := loopbackTrio(t, [3]string{k, k, k})
	pc := cfgs[0]
	pc.Name = "p0"
	cfgs[0].Peers[0].Name = "p0" // one slice shared by all three configs
	pc.Priority = 100
	pc.VIP = VIPConfig{Address: "10.213.9.13/24", Interface: "hclnone", GARPCount: 1, GARPInterval: time.Millisecond}
	p, err := New(pc, RoleProxy, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	p.hold.vip = fv
	if prep != nil {
		prep(p)
	}
	var ws []*Cluster
	for _, cfg := range cfgs[1:] {
		w := startNode(t, cfg, zap.NewNop())
		ws = append(ws, w)
	}
	for _, c := range append([]*Cluster{p}, ws...) {
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
	}
	return p, ws
}

func waitHolding(t *testing.T, p *Cluster, fv *fakeVIP) {
	t.Helper()
	testkit.Eventually(t, 15*time.Second, "the proxy to take the VIP", func() bool { return p.IsLeader() && fv.isHeld() })
}

// A VIP removal that fails is retried every tick, counted, logged at error once, and
// the node keeps saying it holds the VIP until the removal succeeds.
func TestReleaseFailureRetried(t *testing.T) {
	fv := &fakeVIP{}
	core, logs := observer.New(zapcore.DebugLevel)
	reg := prometheus.NewRegistry()
	p, ws := proxyTrio(t, fv, zap.New(core), reg, nil)
	waitHolding(t, p, fv)

	fv.setFailRelease(true)
	p.lead.pingOK.Store(false) // must let go of the VIP; no other proxy, so it stays raft leader
	p.lead.poke()
	testkit.Eventually(t, 3*time.Second, "several failed removals", func() bool {
		return gauge(t, reg, "hapbx_cluster_vip_release_failures_total") >= 5
	})
	if !fv.isHeld() {
		t.Fatal("fake released although every removal failed")
	}
	if !p.IsLeader() || !p.Status().VIPHeld {
		t.Fatalf("the VIP is still on the interface but IsLeader=%v VIPHeld=%v", p.IsLeader(), p.Status().VIPHeld)
	}
	// The others see the stuck holder (node metadata) even though it should not hold.
	testkit.Eventually(t, 3*time.Second, "the witnesses to list p0 as holder", func() bool {
		return slices.Equal(ws[0].Status().VIPHolders, []string{"p0"})
	})

	fv.setFailRelease(false)
	testkit.Eventually(t, 2*time.Second, "the retried removal", func() bool { return !fv.isHeld() && !p.IsLeader() })
	errs := 0
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel && e.Message == "cannot remove the VIP; retrying every lease tick" {
			errs++
		}
	}
	if errs != 1 {
		t.Fatalf("%d error log entries for one failure streak, want 1", errs)
	}
	if n := gauge(t, reg, "hapbx_cluster_vip_release_failures_total"); n < 5 {
		t.Fatalf("hapbx_cluster_vip_release_failures_total = %v", n)
	}
	testkit.Eventually(t, 3*time.Second, "no holder on the witnesses", func() bool {
		return len(ws[0].Status().VIPHolders) == 0 && ws[0].Status().Leader == "p0"
	})
}

// Close must not race the leader loop: an Acquire in progress when Close begins ends
// before Close removes the VIP and hands leadership over, and none follows. The gated
// Acquire returns only after Close had its chance to run ahead; it must still find
// this node raft leader, i.e. no hand-over happened while the address was being added.
func TestCloseSerializesVIP(t *testing.T) {
	gate := make(chan struct{})
	fv := &fakeVIP{gate: gate, entered: make(chan struct{})}
	var left, violated atomic.Bool
	var p *Cluster
	fv.afterGate = func() {
		if left.Load() || p.lead.r.State() != raft.Leader {
			violated.Store(true)
		}
	}
	p, _ = proxyTrio(t, fv, zap.NewNop(), nil, nil)
	select {
	case <-fv.entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the proxy never tried to take the VIP")
	}
	ch := make(chan raft.Observation, 16)
	ob := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		s, ok := o.Data.(raft.RaftState)
		return ok && s != raft.Leader
	})
	p.lead.r.RegisterObserver(ob)
	go func() {
		for range ch {
			left.Store(true)
		}
	}()

	closed := make(chan struct{})
	go func() {
		p.close()
		close(closed)
	}()
	// Give Close time to run ahead: without serialisation it hands leadership over now.
	time.Sleep(200 * time.Millisecond)
	testkit.Poll(time.Second, left.Load)
	close(gate)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if violated.Load() {
		t.Fatal("an Acquire completed after Close had handed leadership over")
	}
	if fv.overlap.Load() {
		t.Fatal("two VIP changes ran at once")
	}
	if fv.isHeld() {
		t.Fatal("VIP still held after Close")
	}
	fv.mu.Lock()
	n := fv.acquires
	fv.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d Acquire calls, want 1", n)
	}
}

// Status lists the actual VIP holder(s), which need not be the raft leader.
func TestStatusVIPHolders(t *testing.T) {
	fv := &fakeVIP{}
	p, ws := proxyTrio(t, fv, zap.NewNop(), nil, nil)
	waitHolding(t, p, fv)
	for _, c := range append([]*Cluster{p}, ws...) {
		testkit.Eventually(t, 3*time.Second, c.cfg.Name+" to see p0 as holder and leader", func() bool {
			s := c.Status()
			return slices.Equal(s.VIPHolders, []string{"p0"}) && s.Leader == "p0"
		})
	}
	// p0 loses its ping targets: it stays raft leader (no other proxy) but drops the VIP.
	p.lead.pingOK.Store(false)
	p.lead.poke()
	for _, c := range append([]*Cluster{p}, ws...) {
		testkit.Eventually(t, 3*time.Second, c.cfg.Name+" to see no holder and leader p0", func() bool {
			s := c.Status()
			return s.VIPHolders != nil && len(s.VIPHolders) == 0 && s.Leader == "p0" && !s.VIPHeld
		})
	}
}

// A node that takes the VIP publishes its current decision; every node gets it.
func TestRepublishOnTakeover(t *testing.T) {
	fv := &fakeVIP{}
	var cur atomic.Value
	cur.Store([]byte("asterisk-b"))
	p, ws := proxyTrio(t, fv, zap.NewNop(), nil, func(p *Cluster) {
		p.RepublishOnTakeover("active_backend", func() []byte { return cur.Load().([]byte) })
	})
	waitHolding(t, p, fv)
	expect := func(want string) {
		t.Helper()
		for _, c := range append([]*Cluster{p}, ws...) {
			testkit.Eventually(t, 3*time.Second, "the value on "+c.cfg.Name, func() bool {
				v, ok := c.Get("active_backend")
				return ok && string(v) == want
			})
		}
	}
	expect("asterisk-b")
	// The app's own publication goes through as before.
	if err := p.Publish("active_backend", []byte("asterisk-a")); err != nil {
		t.Fatal(err)
	}
	expect("asterisk-a")
	// The next takeover publishes the decision the holder has then.
	cur.Store([]byte("asterisk-c"))
	p.lead.pingOK.Store(false)
	p.lead.poke()
	testkit.Eventually(t, 3*time.Second, "the VIP released", func() bool { return !p.IsLeader() })
	p.lead.pingOK.Store(true)
	p.lead.poke()
	waitHolding(t, p, fv)
	expect("asterisk-c")
}
