package proxy

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// startWithRouter starts a UDP proxy over backends with router and cfg
// changed by mutate.
func startWithRouter(t *testing.T, backends []Backend, router Router, mutate func(*Config)) *testProxy {
	t.Helper()
	return startProxyWith(t, []string{"udp"}, backends, router, mutate)
}

func inviteFinals(p *testProxy, code int) float64 {
	return testutil.ToFloat64(p.m.responses.WithLabelValues("INVITE", strconv.Itoa(code)))
}

// TestCancelWhileHeld: a call held for want of a healthy backend
// (no_backend_wait) and cancelled by the caller meanwhile must never reach a
// backend that comes up afterwards: the callee would ring with nobody on the
// line, and no CANCEL would ever follow.
func TestCancelWhileHeld(t *testing.T) {
	testkit.RequireSIPp(t)
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	watch, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	router := &switchRouter{name: be.Name}
	p := startWithRouter(t, []Backend{be}, router, func(c *Config) { c.NoBackendWait = 5 * time.Second })
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_cancel_held.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("phone: exit %d\n%s", code, phone.Output())
	}
	router.on.Store(true) // the backend comes up within the held call's wait
	_ = watch.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	buf := make([]byte, 4096)
	if n, _, err := watch.ReadFrom(buf); err == nil {
		t.Fatalf("the cancelled call reached the backend:\n%s", buf[:n])
	}
	if got := testutil.ToFloat64(p.m.held); got != 0 {
		t.Errorf("hapbx_proxy_held_requests_total = %v, want 0", got)
	}
}

// TestTimerCCancelsLongRinging: a callee that rings longer than timer_c is
// cancelled by the proxy (RFC 3261 §16.8) and the caller gets its 487.
func TestTimerCCancelsLongRinging(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_cancel.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startWithRouter(t, []Backend{be}, NewStaticRouter([]string{be.Name}, false), func(c *Config) { c.TimerC = time.Second })
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_ring_ended.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("phone: exit %d\n%s", code, phone.Output())
	}
	if code := backend.Wait(5 * time.Second); code != 0 {
		t.Fatalf("backend (rings until CANCEL, then 487): exit %d\n%s", code, backend.Output())
	}
	if got := testutil.ToFloat64(p.m.timerC); got != 1 {
		t.Errorf("hapbx_proxy_timer_c_total = %v, want 1", got)
	}
	if got := inviteFinals(p, 487); got != 1 {
		t.Errorf("487 relayed to the caller %v times, want 1", got)
	}
}

// TestTimerCCalleeGone: the callee rang and then went silent; after Timer C
// its CANCEL goes unanswered, and the caller gets 408 once the guard
// expires instead of ringing forever.
func TestTimerCCalleeGone(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_ring_deaf.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startWithRouter(t, []Backend{be}, NewStaticRouter([]string{be.Name}, false), func(c *Config) { c.TimerC = 500 * time.Millisecond })
	p.cancelGuard = time.Second
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_ring_ended.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("phone: exit %d\n%s", code, phone.Output())
	}
	if got := inviteFinals(p, 408); got != 1 {
		t.Errorf("408 to the caller %v times, want 1", got)
	}
}

// TestDrainTimeoutAnswers503: a call still ringing when the drain times
// out gets 503 and its downstream INVITE a CANCEL, rather than a proxy that
// vanishes under it.
func TestDrainTimeoutAnswers503(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_cancel_noack.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startWithRouter(t, []Backend{be}, NewStaticRouter([]string{be.Name}, false), func(c *Config) { c.DrainTimeout = 500 * time.Millisecond })
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_ring_ended.xml"),
		"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
	if !testkit.Poll(5*time.Second, func() bool { return testutil.ToFloat64(p.m.responses.WithLabelValues("INVITE", "180")) >= 1 }) {
		t.Fatalf("no 180 relayed\n%s", phone.Output())
	}
	stopped, stop := context.WithCancel(context.Background())
	stop()
	if err := p.Run(stopped); err == nil {
		t.Errorf("Run's drain with a call in flight past the drain timeout: no error")
	}
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone (wants 503): exit %d\n%s", code, phone.Output())
	}
	if got := inviteFinals(p, 503); got != 1 {
		t.Errorf("503 to the caller %v times, want 1", got)
	}
	if code := backend.Wait(5 * time.Second); code != 0 {
		t.Fatalf("backend (wants the CANCEL): exit %d\n%s", code, backend.Output())
	}
}

// alternateRouter puts a different backend first for every request: what
// balance mode does across Call-IDs, here even within one.
type alternateRouter struct {
	names []string
	n     atomic.Int64
}

func (r *alternateRouter) Candidates(string) []string {
	i := int(r.n.Add(1)) % len(r.names)
	return append(append([]string(nil), r.names[i:]...), r.names[:i]...)
}

// TestChallengedResendSameBackend: the REGISTER answering a 401 goes to the
// backend that issued the nonce, even when the router would start with the
// other one; that one would only challenge it again.
func TestChallengedResendSameBackend(t *testing.T) {
	testkit.RequireSIPp(t)
	be1, p1 := backendOn(t, "asterisk1", be1IP, "udp")
	be2, p2 := backendOn(t, "asterisk2", be2IP, "udp")
	s1 := testkit.StartSIPp(t, be1IP, p1, "-sf", scenario("uas_register.xml"), "-m", "1")
	s2 := testkit.StartSIPp(t, be2IP, p2, "-sf", scenario("uas_register.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be1.Address, 3*time.Second)
	testkit.WaitListening(t, "udp", be2.Address, 3*time.Second)
	p := startWithRouter(t, []Backend{be1, be2}, &alternateRouter{names: []string{be1.Name, be2.Name}}, nil)
	for i := 0; i < 2; i++ {
		phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_register.xml"),
			"-s", "202", "-m", "1", "-timeout", "10s", "-timeout_error", p.addr)
		if code := phone.Wait(15 * time.Second); code != 0 {
			t.Fatalf("registration %d (exit %d): its authenticated re-send went elsewhere\n%s", i+1, code, phone.Output())
		}
	}
	for _, s := range []*testkit.SIPp{s1, s2} {
		if code := s.Wait(5 * time.Second); code != 0 {
			t.Fatalf("backend %s (one challenge, then 200): exit %d\n%s", s.Addr, code, s.Output())
		}
	}
}
