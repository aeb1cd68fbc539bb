package trunk

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
)

// eventWait bounds every wait for an event; the events themselves are
// what the tests assert, not their timing.
const eventWait = 30 * time.Second

// sipgoSender is what the daemon wires: a sipgo client on a listening
// socket, so the responses come back to it.
// Requests leave from the listening socket (Laddr), as the proxy's do.
type sipgoSender struct {
	c     *sipgo.Client
	laddr sip.Addr
}

func (s sipgoSender) Do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	req.Laddr = s.laddr
	return s.c.Do(ctx, req)
}

// sipStack listens on UDP 127.0.0.1 and returns a Sender through it and
// its port.
func sipStack(t *testing.T) (Sender, int) {
	t.Helper()
	port := testkit.FreePort(t, "127.0.0.1")
	send, closeStack := sipStackOn(t, port)
	t.Cleanup(closeStack)
	return send, port
}

// sipStackOn listens on UDP 127.0.0.1:port until closed.
func sipStackOn(t *testing.T, port int) (Sender, func()) {
	t.Helper()
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ListenAndServe(ctx, "udp", addr); err != nil && ctx.Err() == nil {
			t.Errorf("listen %s: %v", addr, err)
		}
	}()
	// The client sends from the server's socket once sipgo has it in its
	// pool, which follows the bind: a REGISTER sent in between makes the
	// client bind the same port itself and fail (EADDRINUSE).
	if !testkit.Poll(5*time.Second, func() bool {
		c, err := ua.TransportLayer().GetConnection("udp", addr)
		return err == nil && c != nil
	}) {
		t.Fatalf("sipgo never served udp %s", addr)
	}
	var once sync.Once
	return sipgoSender{cl, sip.Addr{IP: net.IPv4(127, 0, 0, 1), Port: port}}, func() { once.Do(func() { cancel(); <-done; ua.Close() }) }
}

// provider runs the challenging registrar scenario on 127.0.0.1.
func provider(t *testing.T) (*testkit.SIPp, int) {
	t.Helper()
	return providerWith(t, "provider_registrar.xml")
}

// providerWith runs SIPp on 127.0.0.1 with the scenario testdata/name.
func providerWith(t *testing.T, name string) (*testkit.SIPp, int) {
	t.Helper()
	port := testkit.FreePort(t, "127.0.0.1")
	sf, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := testkit.StartSIPp(t, "127.0.0.1", port, "-sf", sf)
	testkit.WaitListening(t, "udp", p.Addr, 5*time.Second)
	return p, port
}

func trunkConfig(hosts ...string) Config {
	return Config{
		Name: "p1", Hosts: hosts, Register: true, User: "4930123", Domain: "provider.test",
		RegisterInterval: 60 * time.Second,
	}.WithDefaults()
}

// startRegistration runs a registration until the test ends; its states
// come on the channel.
func startRegistration(t *testing.T, cfg Config, password string, res *Resolver, send Sender, port int, m *Metrics, from *State) (*Registration, <-chan State, context.CancelFunc) {
	t.Helper()
	tr, err := NewTrunk(cfg, res)
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan State, 100)
	rc := RegistrationConfig{
		Contact:    sip.Uri{Scheme: "sip", User: cfg.User, Host: "127.0.0.1", Port: port},
		Timeout:    500 * time.Millisecond,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
	}
	r, err := NewRegistration(cfg, password, rc, tr, send, m, zaptest.NewLogger(t), WithNotify(func(s State) { states <- s }))
	if err != nil {
		t.Fatal(err)
	}
	if from != nil {
		r.Continue(*from)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r, states, cancel
}

// next returns the next state for which ok holds.
func next(t *testing.T, states <-chan State, what string, ok func(State) bool) State {
	t.Helper()
	deadline := time.After(eventWait)
	for {
		select {
		case s := <-states:
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no %s within %v", what, eventWait)
		}
	}
}

func registered(s State) bool { return s.Registered && s.LastError == "" }

// The provider challenges; the registration answers with the trunk's
// credentials (SIPp verifies the digest, 403 otherwise), and refreshes
// before the 2 s the provider grants run out, in the same Call-ID.
func TestRegistrationChallengedAndRefreshed(t *testing.T) {
	p, pport := provider(t)
	send, port := sipStack(t)
	m, _ := NewMetrics(nil)
	cfg := trunkConfig(fmt.Sprintf("127.0.0.1:%d", pport))
	_, states, _ := startRegistration(t, cfg, "s3cret", nil, send, port, m, nil)

	first := next(t, states, "registration", registered)
	if first.Granted != 2*time.Second || first.Host != p.Addr || first.CSeq != 2 {
		t.Errorf("first registration %+v: want granted 2s, host %s, CSeq 2 (challenge, answer)", first, p.Addr)
	}
	if want := first.Expires.Add(-time.Second); !first.Refresh.Equal(want) {
		t.Errorf("refresh planned at %v, want half the granted 2 s before expiry (%v)", first.Refresh, want)
	}
	refresh := next(t, states, "refresh", registered)
	if refresh.CallID != first.CallID || refresh.FromTag != first.FromTag || refresh.CSeq != first.CSeq+2 {
		t.Errorf("refresh %+v does not continue %+v (same Call-ID and tag, CSeq +2)", refresh, first)
	}
	if !refresh.Expires.After(first.Expires) {
		t.Errorf("refresh expires %v, not after %v", refresh.Expires, first.Expires)
	}
	if got := testutil.ToFloat64(m.registrations.WithLabelValues("p1", resultRejected)); got != 0 {
		t.Errorf("%v REGISTERs rejected: the provider refused the digest\n%s", got, p.Output())
	}
	if got := testutil.ToFloat64(m.registered.WithLabelValues("p1")); got != 1 {
		t.Errorf("hapbx_trunk_registered = %v", got)
	}
}

// Wrong credentials: the provider's 403 is a failure that the next host
// would repeat; the registration is not in force and says why.
func TestRegistrationRejected(t *testing.T) {
	_, pport := provider(t)
	send, port := sipStack(t)
	m, _ := NewMetrics(nil)
	_, states, _ := startRegistration(t, trunkConfig(fmt.Sprintf("127.0.0.1:%d", pport)), "wrong", nil, send, port, m, nil)
	s := next(t, states, "failure", func(s State) bool { return s.LastError != "" })
	if s.Registered || !strings.Contains(s.LastError, "403") {
		t.Errorf("state %+v: want not registered, 403 in the error", s)
	}
	if got := testutil.ToFloat64(m.registrations.WithLabelValues("p1", resultRejected)); got < 1 {
		t.Errorf("rejected = %v", got)
	}
}

// Two provider hosts behind SRV (priorities 10 and 20): the registration
// goes to the first; when it dies, the refresh fails over to the second,
// in the same Call-ID.
func TestRegistrationFailsOverAcrossSRV(t *testing.T) {
	a, aport := provider(t)
	b, bport := provider(t)
	d := startDNS(t)
	d.Set(t,
		fmt.Sprintf(`_sip._udp.provider.test. 60 IN SRV 10 0 %d a.provider.test.`, aport),
		fmt.Sprintf(`_sip._udp.provider.test. 60 IN SRV 20 0 %d b.provider.test.`, bport),
		`a.provider.test. 60 IN A 127.0.0.1`,
		`b.provider.test. 60 IN A 127.0.0.1`,
	)
	res := newResolver(t, nil, d.Addr)
	send, port := sipStack(t)
	m, _ := NewMetrics(nil)
	_, states, _ := startRegistration(t, trunkConfig("provider.test"), "s3cret", res, send, port, m, nil)

	first := next(t, states, "registration", registered)
	if first.Host != a.Addr {
		t.Fatalf("registered at %s, want the priority-10 host %s", first.Host, a.Addr)
	}
	a.Kill()
	moved := next(t, states, "registration at the second host", func(s State) bool { return registered(s) && s.Host == b.Addr })
	if moved.CallID != first.CallID {
		t.Errorf("Call-ID changed on failover: %s -> %s", first.CallID, moved.CallID)
	}
	if got := testutil.ToFloat64(m.registrations.WithLabelValues("p1", resultTimeout)); got < 1 {
		t.Errorf("timeouts = %v: the dead host was never tried", got)
	}
}

// A twin continues a registration from its replicated State: same
// Call-ID and From tag, the CSeq after the last one the other node sent.
func TestRegistrationContinue(t *testing.T) {
	_, pport := provider(t)
	send, port := sipStack(t)
	cfg := trunkConfig(fmt.Sprintf("127.0.0.1:%d", pport))
	_, states, stop := startRegistration(t, cfg, "s3cret", nil, send, port, nil, nil)
	was := next(t, states, "registration", registered)
	stop()

	b, err := was.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Expires.Equal(was.Expires) || !got.Refresh.Equal(was.Refresh) || got.CallID != was.CallID || got.CSeq != was.CSeq || got.Granted != was.Granted {
		t.Fatalf("state did not survive Marshal/Unmarshal:\n %+v\n %+v", was, got)
	}
	twin, states2, _ := startRegistration(t, cfg, "s3cret", nil, send, port, nil, &got)
	cont := next(t, states2, "continued registration", registered)
	if cont.CallID != was.CallID || cont.FromTag != was.FromTag || cont.CSeq != was.CSeq+2 {
		t.Errorf("twin's registration %+v does not continue %+v", cont, was)
	}
	if twin.State().CallID != was.CallID {
		t.Errorf("twin's state %+v", twin.State())
	}
}

// A provider's 423 with Min-Expires: the REGISTER is asked again with it
// (SIPp fails the call unless Expires is 3600), then challenged as usual.
func TestRegistrationMinExpires(t *testing.T) {
	p, _ := providerWith(t, "provider_min_expires.xml")
	send, myPort := sipStack(t)
	_, states, _ := startRegistration(t, trunkConfig(p.Addr), "s3cret", nil, send, myPort, nil, nil)
	s := next(t, states, "registration", func(s State) bool { return s.Registered || s.LastError != "" })
	if !s.Registered || s.Asked != time.Hour || s.Granted != time.Hour || s.CSeq != 3 {
		t.Errorf("state %+v: want registered for 3600 s asked and granted, CSeq 3 (423, 401, 200)\n%s", s, p.Output())
	}
}

// Only the VIP holder registers: while active says no, nothing is sent;
// once it says yes, the registration goes out.
func TestRegistrationActiveGate(t *testing.T) {
	_, pport := provider(t)
	send, port := sipStack(t)
	cfg := trunkConfig(fmt.Sprintf("127.0.0.1:%d", pport))
	tr, err := NewTrunk(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var holder atomic.Bool
	asked := make(chan struct{}, 100)
	states := make(chan State, 100)
	rc := RegistrationConfig{Contact: sip.Uri{Scheme: "sip", User: cfg.User, Host: "127.0.0.1", Port: port}, Timeout: time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second}
	r, err := NewRegistration(cfg, "s3cret", rc, tr, send, nil, zaptest.NewLogger(t),
		WithNotify(func(s State) { states <- s }),
		WithActive(func() bool { asked <- struct{}{}; return holder.Load() }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for range 2 {
		select {
		case <-asked:
		case <-time.After(eventWait):
			t.Fatal("Run never asked whether it is active")
		}
	}
	if s := r.State(); s.CSeq != 0 {
		t.Fatalf("REGISTER sent while not the holder: %+v", s)
	}
	holder.Store(true)
	s := next(t, states, "registration once active", registered)
	if s.CSeq != 2 {
		t.Errorf("state %+v: want CSeq 2 (challenge, answer)", s)
	}
}
