package proxy

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// TestHeldCallWakesOnRouterChange: a call held for a backend behind a
// router that announces its changes is set up when the router says so,
// and the router is not polled meanwhile (it used to be asked every 50 ms
// by every held request, which under overload cost more than the calls).
func TestHeldCallWakesOnRouterChange(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	router := &notifyingRouter{switchRouter: switchRouter{name: be.Name}, changed: make(chan struct{})}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil)
	start := time.Now()
	time.AfterFunc(300*time.Millisecond, router.switchOn)
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_call.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("held call failed (exit %d)\n%s", code, phone.Output())
	}
	held := time.Since(start)
	if got := testutil.ToFloat64(p.m.held); got != 1 {
		t.Errorf("hapbx_proxy_held_requests_total = %v, want 1", got)
	}
	// Asked when the INVITE came, when the router changed, and at most once
	// a second besides; a 50 ms poll would have asked held/50ms times.
	if limit := 3 + int64(held/time.Second); router.asked.Load() > limit {
		t.Errorf("router asked %d times while the call was held for %v, want at most %d", router.asked.Load(), held, limit)
	}
	backend.Wait(5 * time.Second)
}
