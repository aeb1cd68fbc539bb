package proxy

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// notifyingRouter is a switchRouter that announces its switch
// (ChangeNotifier, as failover.Selector does) and counts how often it is
// asked.
type notifyingRouter struct {
	switchRouter
	asked   atomic.Int64
	mu      sync.Mutex
	changed chan struct{}
}

func (r *notifyingRouter) Candidates(key string) []string {
	r.asked.Add(1)
	return r.switchRouter.Candidates(key)
}

func (r *notifyingRouter) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

func (r *notifyingRouter) switchOn() {
	r.on.Store(true)
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// heldCall places one call (SIPp phone to a SIPp backend, asterisk1)
// through a proxy whose router offers no backend until switchOn is called,
// 300 ms after the INVITE leaves: a cold standby started meanwhile. It
// fails the test unless the call is set up, held exactly once, and returns
// the proxy and how long the call took.
func heldCall(t *testing.T, router Router, switchOn func(), opts ...Option) (*testProxy, time.Duration) {
	t.Helper()
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, opts...)
	start := time.Now()
	time.AfterFunc(300*time.Millisecond, switchOn)
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_call.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("held call failed (exit %d)\n%s", code, phone.Output())
	}
	took := time.Since(start)
	if got := testutil.ToFloat64(p.m.held); got != 1 {
		t.Errorf("hapbx_proxy_held_requests_total = %v, want 1", got)
	}
	backend.Wait(5 * time.Second)
	return p, took
}

// TestHeldCallWakesOnRouterChange: a call held for a backend behind a
// router that announces its changes is set up when the router says so,
// and the router is not polled meanwhile (it used to be asked every 50 ms
// by every held request, which under overload cost more than the calls).
func TestHeldCallWakesOnRouterChange(t *testing.T) {
	router := &notifyingRouter{switchRouter: switchRouter{name: "asterisk1"}, changed: make(chan struct{})}
	_, held := heldCall(t, router, router.switchOn)
	// Asked when the INVITE came, when the router changed, and at most once
	// a second besides; a 50 ms poll would have asked held/50ms times.
	if limit := 3 + int64(held/time.Second); router.asked.Load() > limit {
		t.Errorf("router asked %d times while the call was held for %v, want at most %d", router.asked.Load(), held, limit)
	}
}

// TestStrainedProxyHoldsForAColdStandby: while hapbx is strained (the
// burst of a failover itself), a call with no backend up is still held for
// the cold standby being started, not answered 503 at once (the lab's cold
// failover under -race lost 57 of 120 calls so).
func TestStrainedProxyHoldsForAColdStandby(t *testing.T) {
	router := &notifyingRouter{switchRouter: switchRouter{name: "asterisk1"}, changed: make(chan struct{})}
	load := &fakeLoad{}
	load.strained.Store(true)
	heldCall(t, router, router.switchOn, WithDoor(Door{Load: load}))
}

// TestStrainedProxyDoesNotHoldForALiveBackend: while hapbx is strained, a
// request that a still routable backend failed is not held for another
// backend (none will come: the failure was excused), so it is answered at
// once instead of after no_backend_wait; at ease it is held.
func TestStrainedProxyDoesNotHoldForALiveBackend(t *testing.T) {
	be, _ := silentBackend(t)
	load := &fakeLoad{}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.NoBackendWait = 30 * time.Second }, WithDoor(Door{Load: load}))
	m, err := sip.NewParser().ParseSIP([]byte(strings.ReplaceAll(request("INVITE", "sip:202@"+proxyIP, 70, ""), "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	req := m.(*sip.Request)
	tried := map[string]bool{be.Name: true}
	tx := &fakeServerTx{done: make(chan struct{})}
	await := func() <-chan []target {
		c := make(chan []target, 1)
		go func() { c <- p.awaitBackend(tx, req, tried, nil) }()
		return c
	}
	load.strained.Store(true)
	select {
	case got := <-await():
		if len(got) != 0 {
			t.Fatalf("awaitBackend: %v, want nothing (the one backend already failed it)", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request failed by a routable backend while hapbx was strained was held for another backend")
	}
	load.strained.Store(false)
	held := await()
	select {
	case got := <-held:
		t.Fatalf("awaitBackend at ease returned at once (%v), want the request held", got)
	case <-time.After(300 * time.Millisecond):
	}
	close(tx.done)
	<-held
}
