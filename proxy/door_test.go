package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/proxy/limits"
)

// The limits are the proxy's door (as the wiring has it).
var (
	_ Load       = (*limits.Budget)(nil)
	_ FloodGuard = (*limits.Guard)(nil)
)

// fakeLoad is hapbx's own load as a test sets it: strained now, or at
// strainedAt (UnixNano; 0: never).
type fakeLoad struct {
	shedding, strained atomic.Bool
	strainedAt         atomic.Int64
}

func (l *fakeLoad) Shedding() bool { return l.shedding.Load() }
func (l *fakeLoad) StrainedSince(t time.Time) bool {
	at := l.strainedAt.Load()
	return l.strained.Load() || l.shedding.Load() || at != 0 && at >= t.UnixNano()
}

// silentBackend is a UDP socket standing for a backend: it answers nothing
// and counts the datagrams it gets.
func silentBackend(t *testing.T) (Backend, *atomic.Int64) {
	return silentBackendAt(t, "asterisk1", be1IP)
}

func silentBackendAt(t *testing.T, name, ip string) (Backend, *atomic.Int64) {
	be, _ := backendOn(t, name, ip, "udp")
	c, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	got := new(atomic.Int64)
	go func() {
		buf := make([]byte, 65535)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	return be, got
}

// exchangeTCP sends msg over a new TCP connection and returns the first
// final response ("" when none came within wait).
func exchangeTCP(t *testing.T, to, msg string, wait time.Duration) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", to, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", c.LocalAddr().String()), "\n", "\r\n")
	msg = strings.Replace(msg, "SIP/2.0/UDP", "SIP/2.0/TCP", 1)
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	r := bufio.NewReader(c)
	for {
		var b strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return ""
			}
			b.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		if res := b.String(); !strings.HasPrefix(res, "SIP/2.0 1") {
			return res
		}
	}
}

func statusOf(res string) string {
	line, _, _ := strings.Cut(res, "\r\n")
	return line
}

// Issue 13.1: near the memory budget (or at max_transactions) new INVITE,
// REGISTER, SUBSCRIBE and MESSAGE get 503 with Retry-After at the door and
// reach no backend; in-dialog requests, CANCEL, ACK and OPTIONS to hapbx
// still pass; once the load is gone the same requests are forwarded.
func TestShedAtTheDoor(t *testing.T) {
	be, got := silentBackend(t)
	load := &fakeLoad{}
	p := startProxyWith(t, []string{"udp", "tcp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.HopTimeout, c.NoBackendWait = 50*time.Millisecond, 0 },
		WithDoor(Door{Load: load, MaxTransactions: 5}))
	service := "sip:service@" + p.addr
	load.shedding.Store(true)
	for _, m := range []string{"INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE"} {
		res := testkit.Exchange(t, phoneIP, p.addr, doorRequest(m, service, ""), 2*time.Second)
		if statusOf(res) != "SIP/2.0 503 Service Unavailable" || !strings.Contains(res, "Retry-After: 5\r\n") {
			t.Fatalf("new %s while shedding over UDP: got %q, want 503 with Retry-After: 5", m, res)
		}
		res = exchangeTCP(t, p.addr, doorRequest(m, service, ""), 2*time.Second)
		if statusOf(res) != "SIP/2.0 503 Service Unavailable" || !strings.Contains(res, "Retry-After: 5\r\n") {
			t.Fatalf("new %s while shedding over TCP: got %q, want 503 with Retry-After: 5", m, res)
		}
	}
	if n := testutil.ToFloat64(p.door.shed.WithLabelValues(shedMemory)); n != 8 {
		t.Fatalf("hapbx_proxy_shed_total{reason=memory} = %v, want 8", n)
	}
	passes := []struct{ what, msg, want string }{
		{"OPTIONS to hapbx", doorRequest("OPTIONS", "sip:"+p.addr, ""), "SIP/2.0 200 OK"},
		{"CANCEL", doorRequest("CANCEL", service, ""), "SIP/2.0 481 Call/Transaction Does Not Exist"},
		// in dialog: past the door, refused by the trust rules (no token)
		{"re-INVITE", doorRequest("INVITE", "sip:201@"+be.Address, "abc"), "SIP/2.0 403 Forbidden (not in a dialog of this proxy)"},
	}
	for _, c := range passes {
		if res := testkit.Exchange(t, phoneIP, p.addr, c.msg, 2*time.Second); statusOf(res) != c.want {
			t.Fatalf("%s while shedding: got %q, want %q", c.what, statusOf(res), c.want)
		}
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the backend got %d requests while hapbx was shedding", n)
	}

	load.shedding.Store(false)
	p.door.pending.Store(5)
	res := testkit.Exchange(t, phoneIP, p.addr, doorRequest("INVITE", service, ""), 2*time.Second)
	if statusOf(res) != "SIP/2.0 503 Service Unavailable" || testutil.ToFloat64(p.door.shed.WithLabelValues(shedTransactions)) != 1 {
		t.Fatalf("INVITE at max_transactions: got %q, shed{transactions}=%v", statusOf(res), testutil.ToFloat64(p.door.shed.WithLabelValues(shedTransactions)))
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the backend got %d requests at max_transactions", n)
	}
	p.door.pending.Store(0)
	testkit.Exchange(t, phoneIP, p.addr, doorRequest("REGISTER", service, ""), 2*time.Second)
	if n := got.Load(); n == 0 {
		t.Fatal("a REGISTER with the load gone did not reach the backend")
	}
}

// Issue 13.1: a backend's silence while hapbx itself is strained, or a send
// that failed for a reason of this host, is not held against the backend;
// the same silence with hapbx at ease is.
func TestLocalOverloadNotHeldAgainstBackend(t *testing.T) {
	be, _ := silentBackend(t)
	load := &fakeLoad{}
	sus := &suspectLog{}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.HopTimeout, c.NoBackendWait = 50*time.Millisecond, 0 },
		WithDoor(Door{Load: load}), WithFailureReporter(sus))
	load.strained.Store(true)
	res := testkit.Exchange(t, phoneIP, p.addr, doorRequest("INVITE", "sip:service@"+p.addr, ""), 3*time.Second)
	if statusOf(res) != "SIP/2.0 503 Service Unavailable" {
		t.Fatalf("INVITE to a silent backend: %q, want 503", statusOf(res))
	}
	if s := sus.list(); len(s) != 0 {
		t.Fatalf("backend suspected while hapbx was strained: %v", s)
	}
	if n := testutil.ToFloat64(p.door.excused.WithLabelValues(excusedStrained)); n < 1 {
		t.Fatalf("excused{strained} = %v, want at least 1", n)
	}
	load.strained.Store(false)
	testkit.Exchange(t, phoneIP, p.addr, doorRequest("INVITE", "sip:service@"+p.addr, ""), 3*time.Second)
	if s := sus.list(); len(s) == 0 || !strings.HasPrefix(s[0], "asterisk1: ") {
		t.Fatalf("a silent backend with hapbx at ease was not suspected: %v", s)
	}
}

// Issue 13.1: a request sent before or during a strain that fails after
// it (Timer B, 32 s after a flood) is excused; one sent after it is not.
func TestFailureAfterStrainExcusedBySendTime(t *testing.T) {
	load := &fakeLoad{}
	p := &Proxy{log: zap.NewNop()}
	newDoorMetrics(&p.door, nilRegisterer{})
	WithDoor(Door{Load: load})(p)
	strain := time.Now()
	load.strainedAt.Store(strain.UnixNano())
	if !p.excused(strain.Add(-time.Second), "timeout: Timer_B timed out") {
		t.Error("a request sent before the strain, failed after it: not excused")
	}
	if p.excused(strain.Add(time.Second), "timeout: Timer_B timed out") {
		t.Error("a request sent after the strain: excused")
	}
	if n := testutil.ToFloat64(p.door.excused.WithLabelValues(excusedStrained)); n != 1 {
		t.Errorf("excused{strained} = %v, want 1", n)
	}
}

func TestTransportFailureOfThisHost(t *testing.T) {
	p := &Proxy{log: zap.NewNop()}
	newDoorMetrics(&p.door, nilRegisterer{})
	for _, c := range []struct {
		err   error
		local bool
	}{
		{fmt.Errorf("udp conn err. %w", &net.OpError{Op: "write", Err: os.NewSyscallError("sendto", syscall.ENOBUFS)}), true},
		{fmt.Errorf("dial: %w", syscall.EMFILE), true},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), false},
		{errors.New("transaction timed out"), false},
	} {
		if got := p.excused(time.Now(), transportFailure(c.err)); got != c.local {
			t.Errorf("%v: excused %v, want %v", c.err, got, c.local)
		}
	}
}

type nilRegisterer struct{}

func (nilRegisterer) Register(prometheus.Collector) error  { return nil }
func (nilRegisterer) MustRegister(...prometheus.Collector) {}
func (nilRegisterer) Unregister(prometheus.Collector) bool { return true }

func TestExemptSources(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	twin := netip.MustParseAddr("127.0.2.2")
	p := &Proxy{}
	WithDoor(Door{Exempt: []netip.Addr{twin}})(p)
	p.backends.Store(newBackendSet([]Backend{be}))
	for _, c := range []struct {
		addr   string
		exempt bool
	}{{be1IP, true}, {"127.0.2.2", true}, {"::ffff:127.0.2.2", true}, {phoneIP, false}, {be2IP, false}} {
		if got := p.exemptSource(netip.MustParseAddr(c.addr).Unmap()); got != c.exempt {
			t.Errorf("%s: exempt %v, want %v", c.addr, got, c.exempt)
		}
	}
	// a reload that adds a backend makes it exempt at once
	be2, _ := backendOn(t, "asterisk2", be2IP, "udp")
	p.backends.Store(newBackendSet([]Backend{be, be2}))
	if !p.exemptSource(netip.MustParseAddr(be2IP)) {
		t.Error("a backend added by a reload is not exempt")
	}
}

// BenchmarkUDPDoor is the door's cost per datagram on the hot path: a
// phone's request passing the flood guard and the shedding check.
func BenchmarkUDPDoor(b *testing.B) {
	p := &Proxy{}
	WithDoor(Door{Load: &fakeLoad{}, Flood: limits.NewGuard(limits.DefaultConfig().Flood, nil, nil), MaxTransactions: 10000})(p)
	newDoorMetrics(&p.door, nilRegisterer{})
	p.backends.Store(newBackendSet(nil))
	data := []byte(strings.ReplaceAll(strings.ReplaceAll(doorRequest("INVITE", "sip:service@127.0.2.1:5060", ""), "PEER", "127.0.2.50:5062"), "\n", "\r\n"))
	info := sip.TransportReadProps{Transport: "UDP", RemoteAddr: &net.UDPAddr{IP: net.ParseIP(phoneIP), Port: 5062}}
	// the guard's rate is per window: spread the calls over many sources
	addrs := make([]*net.UDPAddr, 4096)
	for i := range addrs {
		addrs[i] = &net.UDPAddr{IP: net.IPv4(10, 1, byte(i>>8), byte(i)), Port: 5060}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		info.RemoteAddr = addrs[i%len(addrs)]
		if !p.udpDoor(info, data) {
			b.Fatal("refused")
		}
		i++
	}
}

// Issue 13.2, with real peers: a SIPp phone floods INVITEs through the
// proxy to a SIPp backend. Past the rate the phone gets one 503 with
// Retry-After, then nothing for the cool-down (its requests dropped and
// counted, none reaching the backend); the backend is never suspected; one
// log line says the source is blocked and one, with the count dropped,
// that it is released; after that the phone's calls go through again.
func TestFloodGuardSIPp(t *testing.T) {
	testkit.RequireSIPp(t)
	const rate = 60
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"))
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	core, logs := observer.New(zap.InfoLevel)
	reg := prometheus.NewRegistry()
	guard := limits.NewGuard(limits.FloodConfig{Rate: rate, Window: 2 * time.Second, Cooldown: 4 * time.Second, MaxSources: 100}, zap.New(core), reg)
	testkit.Run(t, guard.Run)
	sus := &suspectLog{}
	// The backend answers at once; a hop_timeout far beyond that keeps a
	// machine loaded by other tests from making it look silent.
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.HopTimeout = 5 * time.Second },
		WithDoor(Door{Flood: guard}), WithFailureReporter(sus))

	// 300 calls at 300/s: about 1 s, all inside the cool-down.
	phonePort := testkit.FreePort(t, phoneIP)
	phone := testkit.StartSIPp(t, phoneIP, phonePort, "-sf", scenario("flood_invite.xml"), "-s", "202",
		"-r", "300", "-m", "300", "-nr", "-recv_timeout", "1500", "-timeout", "30s", "-trace_msg", p.addr)
	phone.Wait(40 * time.Second)
	phone.Stop()
	trace := phone.Trace()
	refused := len(received503.FindAllString(trace, -1))
	if refused != 1 {
		t.Fatalf("the flooding phone got %d 503s, want 1 (then silence)\n%s", refused, phone.Output())
	}
	_, after, _ := strings.Cut(trace, "SIP/2.0 503 Service Unavailable")
	if head, _, _ := strings.Cut(after, "\r\n\r\n"); !strings.Contains(head, "Retry-After: 5") {
		t.Fatalf("the 503 has no Retry-After: %q", head)
	}
	blocked := logs.FilterMessageSnippet("source blocked").All()
	if len(blocked) != 1 || blocked[0].ContextMap()["source"] != phoneIP {
		t.Fatalf("block log lines: %v, want one naming %s", blocked, phoneIP)
	}
	// What passed the guard (before the block) is at most the rate; the
	// rest was dropped.
	passed := 0
	for _, m := range []string{"INVITE", "ACK", "BYE"} {
		passed += int(testutil.ToFloat64(p.m.requests.WithLabelValues(m)))
	}
	dropped := int(testutil.ToFloat64(guardCounter(t, reg, "hapbx_limits_flood_dropped_total")))
	if passed > rate || passed == 0 || dropped == 0 {
		t.Fatalf("%d requests passed the guard (rate %d), %d dropped", passed, rate, dropped)
	}
	if n := testutil.ToFloat64(p.door.shed.WithLabelValues(shedFlood)); n != 1 {
		t.Fatalf("hapbx_proxy_shed_total{reason=flood} = %v, want 1", n)
	}

	testkit.Eventually(t, 15*time.Second, "the release log line", func() bool {
		return logs.FilterMessageSnippet("source released").Len() > 0
	})
	released := logs.FilterMessageSnippet("source released").All()
	if len(released) != 1 || released[0].ContextMap()["dropped"] != int64(dropped) {
		t.Fatalf("release log lines %v, want one with dropped=%d", released, dropped)
	}
	again := testkit.StartSIPp(t, phoneIP, phonePort, "-sf", scenario("flood_invite.xml"), "-s", "202",
		"-m", "3", "-r", "3", "-recv_timeout", "3000", "-timeout", "20s", "-trace_msg", p.addr)
	again.Wait(25 * time.Second)
	if c := again.Counts(); c.Successful != 3 || c.Failed != 0 {
		t.Fatalf("after the release the phone's calls: %+v, want 3 successful\n%s", c, again.Output())
	}
	if s := sus.list(); len(s) != 0 {
		t.Fatalf("the backend was suspected during the flood: %v", s)
	}
	backend.Kill()
}

// received503 is a 503 in a sipp -trace_msg log (which shows an unexpected
// message a second time).
var received503 = regexp.MustCompile(`message received \[\d+\] bytes :\s*SIP/2.0 503 `)

// guardCounter reads a counter of reg by name.
func guardCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: name}, func() float64 { return mf.GetMetric()[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// Issue 13.1 with real peers: 20 calls from a SIPp phone (50 a second)
// towards a backend that stays silent; with max_transactions 5, about five
// are forwarded and the others get 503 with Retry-After at the door, never
// reaching the backend. A request counts as pending once its handler runs,
// so the ones read meanwhile may pass too: the limit is a bound for bursts
// of some milliseconds' precision, not an exact count.
func TestMaxTransactionsSIPp(t *testing.T) {
	testkit.RequireSIPp(t)
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	c, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	calls := make(chan string, 100)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if msg, err := sip.ParseMessage(buf[:n]); err == nil {
				if req, ok := msg.(*sip.Request); ok && req.IsInvite() {
					calls <- req.CallID().Value()
				}
			}
		}
	}()
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.HopTimeout, c.NoBackendWait = 3*time.Second, 0 },
		WithDoor(Door{MaxTransactions: 5}))
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("flood_invite.xml"), "-s", "202",
		"-r", "50", "-m", "20", "-nr", "-recv_timeout", "6000", "-timeout", "20s", "-trace_msg", p.addr)
	phone.Wait(30 * time.Second)
	phone.Stop()
	// the forwarded ones end with 503 too, once the backend stays silent
	// past hop_timeout: 20 in all
	if n := len(received503.FindAllString(phone.Trace(), -1)); n != 20 {
		t.Fatalf("%d 503s, want 20\n%s", n, phone.Output())
	}
	shed := int(testutil.ToFloat64(p.door.shed.WithLabelValues(shedTransactions)))
	seen := map[string]bool{}
	for len(calls) > 0 {
		seen[<-calls] = true
	}
	if len(seen)+shed != 20 || len(seen) < 5 || shed < 10 {
		t.Fatalf("the backend got %d calls and %d were shed at the door; want at least 5 and 10, 20 in all", len(seen), shed)
	}
	t.Logf("max_transactions 5: %d calls forwarded, %d shed", len(seen), shed)
}

// Over TCP the flood guard runs in handle: past the rate one request is
// answered 503, the next ones get nothing.
func TestFloodGuardTCP(t *testing.T) {
	guard := limits.NewGuard(limits.FloodConfig{Rate: 3, Window: time.Minute, Cooldown: time.Minute, MaxSources: 10}, nil, prometheus.NewRegistry())
	p := startProxyWith(t, []string{"tcp"}, nil, NewStaticRouter(nil, false), nil, WithDoor(Door{Flood: guard}))
	options := doorRequest("OPTIONS", "sip:"+p.addr, "")
	want := []string{"SIP/2.0 200 OK", "SIP/2.0 200 OK", "SIP/2.0 200 OK", "SIP/2.0 503 Service Unavailable", ""}
	for i, w := range want {
		wait := 2 * time.Second
		if w == "" {
			wait = 300 * time.Millisecond // waiting for nothing: how long is up to the test
		}
		if got := statusOf(exchangeTCP(t, p.addr, options, wait)); got != w {
			t.Fatalf("OPTIONS %d over TCP: %q, want %q", i+1, got, w)
		}
	}
}

// Issue 13.3: while shedding, the retransmission of a REGISTER the door
// let in is not answered 503: its transaction goes on and the phone gets
// the backend's 200, the only final answer it sees.
func TestRetransmissionOfATakenRequestNotShed(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	bc, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	held := make(chan *sip.Request, 4)
	from := make(chan net.Addr, 4)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, a, err := bc.ReadFrom(buf)
			if err != nil {
				return
			}
			if msg, err := sip.ParseMessage(buf[:n]); err == nil {
				if req, ok := msg.(*sip.Request); ok && req.Method == sip.REGISTER {
					held <- req
					from <- a
				}
			}
		}
	}()
	load := &fakeLoad{}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false),
		func(c *Config) { c.HopTimeout, c.NoBackendWait = 10*time.Second, 0 },
		WithDoor(Door{Load: load}))

	phone, err := net.ListenPacket("udp", net.JoinHostPort(phoneIP, strconv.Itoa(testkit.FreePort(t, phoneIP))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { phone.Close() })
	msg := doorRequest("REGISTER", "sip:"+p.addr, "")
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", phone.LocalAddr().String()), "\n", "\r\n")
	dst, _ := net.ResolveUDPAddr("udp", p.addr)
	if _, err := phone.WriteTo([]byte(msg), dst); err != nil {
		t.Fatal(err)
	}
	var req *sip.Request
	select {
	case req = <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the REGISTER did not reach the backend")
	}
	load.shedding.Store(true)
	if _, err := phone.WriteTo([]byte(msg), dst); err != nil { // the phone's retransmission
		t.Fatal(err)
	}
	// A fresh REGISTER is still shed: the door is closed to new work.
	if res := testkit.Exchange(t, phoneIP, p.addr, doorRequest("REGISTER", "sip:"+p.addr, ""), 2*time.Second); statusOf(res) != "SIP/2.0 503 Service Unavailable" {
		t.Fatalf("a new REGISTER while shedding: %q, want 503", statusOf(res))
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if _, err := bc.WriteTo([]byte(res.String()), <-from); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	_ = phone.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := phone.ReadFrom(buf)
		if err != nil {
			t.Fatal("no final response to the REGISTER")
		}
		if line := statusOf(string(buf[:n])); !strings.HasPrefix(line, "SIP/2.0 1") {
			if line != "SIP/2.0 200 OK" {
				t.Fatalf("the REGISTER's first final response: %q, want the backend's 200", line)
			}
			break
		}
	}
	if n := testutil.ToFloat64(p.door.shed.WithLabelValues(shedMemory)); n != 1 {
		t.Fatalf("shed{memory} = %v, want 1 (the new REGISTER only)", n)
	}
}

// Issue 13.7: while hapbx sheds new work, a request its backends failed is
// not held for another backend (no_backend_wait): holding it is new work
// too, and under a storm thousands of held requests were most of the
// memory. It gets 503 at once.
func TestNoHoldWhileShedding(t *testing.T) {
	be1, _ := silentBackendAt(t, "asterisk1", be1IP)
	be2, _ := silentBackendAt(t, "asterisk2", be2IP)
	p := startProxyWith(t, []string{"udp"}, []Backend{be1, be2}, NewStaticRouter([]string{be1.Name, be2.Name}, false),
		func(c *Config) { c.HopTimeout, c.NoBackendWait = 50*time.Millisecond, 30*time.Second },
		WithDoor(Door{Load: &fakeLoad{}, MaxTransactions: 1})) // the request itself fills max_transactions
	res := testkit.Exchange(t, phoneIP, p.addr, doorRequest("REGISTER", "sip:"+p.addr, ""), 10*time.Second)
	if statusOf(res) != "SIP/2.0 503 Service Unavailable" {
		t.Fatalf("REGISTER both backends failed while at max_transactions: %q, want 503 without the 30 s hold", statusOf(res))
	}
}
