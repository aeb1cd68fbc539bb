package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
)

// Addresses of this package's tests; other packages use other 127.0.x.
const (
	proxyIP = "127.0.2.1"
	phoneIP = "127.0.2.50"
	be1IP   = "127.0.2.11"
	be2IP   = "127.0.2.12"
)

type testProxy struct {
	*Proxy
	reg  *prometheus.Registry
	port int
	addr string
}

// startProxy starts a proxy on UDP and TCP over backends in configured
// order (StaticRouter).
func startProxy(t *testing.T, backends []Backend, mutate func(*Config)) *testProxy {
	t.Helper()
	names := make([]string, len(backends))
	for i, b := range backends {
		names[i] = b.Name
	}
	return startProxyWith(t, []string{"udp", "tcp"}, backends, NewStaticRouter(names, false), mutate)
}

// startProxyWith starts a proxy listening on transports (one port), routing
// through router, with cfg changed by mutate and the options given.
func startProxyWith(t testing.TB, transports []string, backends []Backend, router Router, mutate func(*Config), opts ...Option) *testProxy {
	t.Helper()
	port := testkit.FreePort(t, proxyIP)
	cfg := DefaultConfig()
	cfg.Listen = nil
	for _, tr := range transports {
		cfg.Listen = append(cfg.Listen, fmt.Sprintf("%s://%s:%d", tr, proxyIP, port))
	}
	cfg.Advertise = proxyIP
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	p, err := New(cfg, backends, router, quietInBenchmarks(t), reg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return &testProxy{Proxy: p, reg: reg, port: port, addr: net.JoinHostPort(proxyIP, strconv.Itoa(port))}
}

// startRelay starts a media relay on proxyIP over ports ("lo-hi").
func startRelay(t testing.TB, ports string, reg prometheus.Registerer) *media.Relay {
	t.Helper()
	mc := media.DefaultConfig()
	mc.Enabled, mc.Address, mc.Ports = true, proxyIP, ports
	relay, err := media.New(mc, quietInBenchmarks(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, relay.Run)
	return relay
}

func backendOn(t testing.TB, name, ip, transport string) (Backend, int) {
	port := testkit.FreePort(t, ip)
	return Backend{Name: name, Address: net.JoinHostPort(ip, strconv.Itoa(port)), Transport: transport}, port
}

func scenario(name string) string {
	p, _ := filepath.Abs(filepath.Join("testdata", name))
	return p
}

// runCall drives calls from a SIPp phone through the proxy to a SIPp
// backend and checks that both ends count every call successful.
func runCall(t *testing.T, transport, uas, uac string, calls int) *testProxy {
	testkit.RequireSIPp(t)
	sippT := "u1"
	if transport == "tcp" {
		sippT = "t1"
	}
	be, bePort := backendOn(t, "asterisk1", be1IP, transport)
	backend := testkit.StartSIPp(t, be1IP, bePort, "-t", sippT, "-sf", scenario(uas), "-m", strconv.Itoa(calls))
	testkit.WaitListening(t, transport, be.Address, 3*time.Second)
	p := startProxy(t, []Backend{be}, nil)

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-t", sippT, "-sf", scenario(uac),
		"-s", "202", "-m", strconv.Itoa(calls), "-r", "10", "-timeout", "30s", "-timeout_error", p.addr)
	if code := phone.Wait(40 * time.Second); code != 0 {
		t.Fatalf("phone sipp exit %d\n%s", code, phone.Output())
	}
	if c := phone.Counts(); c.Successful != calls || c.Failed != 0 {
		t.Fatalf("phone counts %+v, want %d successful\n%s", c, calls, phone.Output())
	}
	if code := backend.Wait(10 * time.Second); code != 0 {
		t.Fatalf("backend sipp exit %d\n%s", code, backend.Output())
	}
	if got := testutil.ToFloat64(p.m.selected.WithLabelValues("asterisk1")); got < float64(calls) {
		t.Errorf("hapbx_proxy_backend_selected_total = %v, want >= %d", got, calls)
	}
	return p
}

func TestCallUDP(t *testing.T) { runCall(t, "udp", "uas_call.xml", "uac_call.xml", 5) }

func TestCallTCP(t *testing.T) { runCall(t, "tcp", "uas_call.xml", "uac_call.xml", 5) }

func TestCancelRingingCall(t *testing.T) { runCall(t, "udp", "uas_cancel.xml", "uac_cancel.xml", 3) }

func TestBusyFromBackend(t *testing.T) { runCall(t, "udp", "uas_486.xml", "uac_busy.xml", 3) }

func TestRegisterChallenged(t *testing.T) {
	runCall(t, "udp", "uas_register.xml", "uac_register.xml", 3)
}

func Test2xxRetransmissionsRelayed(t *testing.T) {
	p := runCall(t, "udp", "uas_call.xml", "uac_call_retrans.xml", 2)
	// The backend retransmits its 200 at 0.5 s and 1 s while the phone
	// withholds the ACK: each retransmission must reach the phone too.
	if got := testutil.ToFloat64(p.m.responses.WithLabelValues("INVITE", "200")); got < 4 {
		t.Fatalf("200 responses to INVITE relayed = %v, want >= 4 (2 calls + retransmissions)", got)
	}
}

// rawRequest sends one datagram from a fresh socket and returns the first
// final response text, or "" on timeout.
// rawRequest sends msg from phoneIP to `to` and returns the first final
// response (testkit.Exchange).
func rawRequest(t *testing.T, to string, msg string, wait time.Duration) string {
	t.Helper()
	return testkit.Exchange(t, phoneIP, to, msg, wait)
}

func request(method, ruri string, maxForwards int, extra string) string {
	return fmt.Sprintf(`%s %s SIP/2.0
Via: SIP/2.0/UDP PEER;branch=z9hG4bK%d;rport
From: <sip:201@example.com>;tag=f1
To: <%s>
Call-ID: %d@test
CSeq: 1 %s
Max-Forwards: %d
%sContent-Length: 0

`, method, ruri, time.Now().UnixNano(), ruri, time.Now().UnixNano(), method, maxForwards, extra)
}

func statusLine(res string) string {
	line, _, _ := strings.Cut(res, "\r\n")
	return line
}

func TestLocalAnswersAndLimits(t *testing.T) {
	// A backend that is never started: anything forwarded would fail.
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	p := startProxy(t, []Backend{be}, func(c *Config) {
		c.HopTimeout = 200 * time.Millisecond
		c.RetryAfter = 7 * time.Second
		c.NoBackendWait = 100 * time.Millisecond
	})
	self := "sip:" + p.addr

	cases := []struct {
		name, msg, want string
	}{
		{"keepalive OPTIONS to the proxy", request("OPTIONS", self, 70, ""), "SIP/2.0 200 "},
		{"OPTIONS with Max-Forwards 0", request("OPTIONS", "sip:202@"+p.addr, 0, ""), "SIP/2.0 200 "},
		{"INVITE with Max-Forwards 0", request("INVITE", "sip:202@"+p.addr, 0, ""), "SIP/2.0 483 "},
		{"INVITE, backend dead", request("INVITE", "sip:202@"+p.addr, 70, ""), "SIP/2.0 503 "},
		{"CANCEL matching nothing", request("CANCEL", "sip:202@"+p.addr, 70, ""), "SIP/2.0 481 "},
		{"CSeq method mismatch", strings.Replace(request("INFO", "sip:202@"+p.addr, 70, ""), "CSeq: 1 INFO", "CSeq: 1 BYE", 1), "SIP/2.0 400 "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := rawRequest(t, p.addr, tc.msg, 3*time.Second)
			if !strings.HasPrefix(res, tc.want) {
				t.Fatalf("got %q, want %q", statusLine(res), tc.want)
			}
			if strings.HasPrefix(tc.want, "SIP/2.0 503") && !strings.Contains(res, "Retry-After: 7") {
				t.Errorf("503 without Retry-After: 7\n%s", res)
			}
			// The request's Via has rport and the sender's own address:
			// RFC 3581 §4 still wants both received and rport filled in.
			if !strings.Contains(res, "received="+phoneIP) || !strings.Contains(res, "rport=") || strings.Contains(res, "rport;") {
				t.Errorf("response Via lacks received=%s or a filled rport:\n%s", phoneIP, res)
			}
		})
	}
	if got := testutil.ToFloat64(p.m.malformed.WithLabelValues("cseq_method")); got != 1 {
		t.Errorf("malformed{cseq_method} = %v, want 1", got)
	}
}

// TestTortureMessages sends every RFC 4475 message (testdata/rfc4475, one
// file per message with the RFC's name) at a running proxy, over UDP and
// over TCP, and checks each one's disposition against
// testdata/rfc4475/dispositions.txt: "forward" (it reached the SIPp
// backend, which answers 404), a status code hapbx answers itself without
// forwarding, or "drop" (no answer, nothing forwarded). Whatever reaches the
// backend must parse and carry each single-valued header once. The proxy
// still answers after each.
func TestTortureMessages(t *testing.T) {
	testkit.RequireSIPp(t)
	want := readDispositions(t)
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) { tortureOver(t, tr, want) })
	}
}

// disposition is one message's expected fate over udp and over tcp.
type disposition struct{ udp, tcp string }

func readDispositions(t *testing.T) map[string]disposition {
	t.Helper()
	data, err := os.ReadFile("testdata/rfc4475/dispositions.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]disposition{}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("dispositions.txt: %q: want name udp tcp", line)
		}
		want[f[0]] = disposition{udp: f[1], tcp: f[2]}
	}
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	if len(files) != len(want) || len(files) < 40 {
		t.Fatalf("%d messages, %d dispositions", len(files), len(want))
	}
	return want
}

// viaPort is the port of the first Via line's sent-by, if any.
var viaPort = regexp.MustCompile(`(?mi)^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*\S+[ \t]+[^;:\s]+:([0-9]+)`)

var callIDLine = regexp.MustCompile(`(?mi)^(?:call-id|i)[ \t]*:[ \t]*(\S+)`)

func tortureOver(t *testing.T, transport string, want map[string]disposition) {
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_record.xml"), "-trace_msg")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	cfg := func(c *Config) {
		c.HopTimeout = 2 * time.Second // a loaded machine: SIPp may answer late
		c.NoBackendWait = 0
	}
	got := map[string]string{}
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for _, f := range files {
		// A proxy per message: several RFC messages share a Via host and
		// branch, so one would match the transaction of another (§17.2.3).
		p := startProxy(t, []Backend{be}, cfg)
		name := strings.TrimSuffix(filepath.Base(f), ".dat")
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		w := want[name].udp
		if transport == "tcp" {
			w = want[name].tcp
		}
		wait := 4 * time.Second
		if w == "drop" || w == "-" {
			wait = 300 * time.Millisecond
		}
		if code := sendRaw(t, transport, p.addr, data, wait); code != 0 {
			got[name] = strconv.Itoa(code)
		} else {
			got[name] = "drop"
		}
		res := rawRequest(t, p.addr, request("OPTIONS", "sip:"+p.addr, 70, ""), 3*time.Second)
		if !strings.HasPrefix(res, "SIP/2.0 200 ") {
			t.Fatalf("proxy no longer answers after %s: %q", name, statusLine(res))
		}
	}
	backend.Stop()
	reached := backendRequests(t, backend.Trace())
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".dat")
		data, _ := os.ReadFile(f)
		w := want[name].udp
		if transport == "tcp" {
			w = want[name].tcp
		}
		fwd := false
		for _, m := range callIDLine.FindAllSubmatch(data, -1) {
			fwd = fwd || len(reached[string(m[1])]) > 0
		}
		switch {
		case w == "-":
		case w == "forward" && !fwd:
			t.Errorf("%s: want forwarded, not forwarded (hapbx answered %s)", name, got[name])
		case w != "forward" && fwd:
			t.Errorf("%s: want %s, forwarded to the backend", name, w)
		case w != "forward" && !slices.Contains(strings.Split(w, "|"), got[name]):
			t.Errorf("%s: want %s, got %s", name, w, got[name])
		}
	}
}

// sendRaw sends data to addr over transport from phoneIP and returns the
// code of the first final response to it (same Call-ID: a late answer to
// an earlier message may arrive) within wait, 0 for none.
func sendRaw(t *testing.T, transport, addr string, data []byte, wait time.Duration) int {
	t.Helper()
	var read func([]byte) (int, error)
	if transport == "tcp" {
		c, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP(phoneIP)}, mustTCPAddr(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		read = c.Read
	} else {
		// From the port the message's top Via names (5060 when none):
		// hapbx answers there (RFC 3261 §18.2.2, no rport).
		port := 5060
		if m := viaPort.FindSubmatch(data); m != nil {
			port, _ = strconv.Atoi(string(m[1]))
		}
		var c *net.UDPConn
		var err error
		for try := 0; try < 50; try++ {
			if c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(phoneIP), Port: port}); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond) // another run of this test holds it
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.WriteTo(data, mustUDPAddr(t, addr)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		read = func(b []byte) (int, error) { n, _, err := c.ReadFrom(b); return n, err }
	}
	cids := map[string]bool{} // multi01 has two
	for _, m := range callIDLine.FindAllSubmatch(data, -1) {
		cids[string(m[1])] = true
	}
	buf := make([]byte, 65535)
	var pending []byte
	for {
		n, err := read(buf)
		if err != nil {
			return 0
		}
		pending = append(pending, buf[:n]...)
		for {
			msg, rest, ok := strings.Cut(string(pending), "\r\n\r\n")
			if !ok {
				break
			}
			pending = []byte(rest) // hapbx's answers have no body
			f := strings.Fields(msg)
			if m := callIDLine.FindStringSubmatch(msg); (m == nil) != (len(cids) == 0) || (m != nil && !cids[m[1]]) {
				continue
			}
			if len(f) > 1 && strings.HasPrefix(f[0], "SIP/") && !strings.HasPrefix(f[1], "1") {
				code, _ := strconv.Atoi(f[1])
				return code
			}
		}
	}
}

func mustUDPAddr(t *testing.T, a string) *net.UDPAddr {
	ua, err := net.ResolveUDPAddr("udp", a)
	if err != nil {
		t.Fatal(err)
	}
	return ua
}

func mustTCPAddr(t *testing.T, a string) *net.TCPAddr {
	ta, err := net.ResolveTCPAddr("tcp", a)
	if err != nil {
		t.Fatal(err)
	}
	return ta
}

// backendRequests parses every request of a sipp -trace_msg log, checks
// it carries each single-valued header once, and returns their methods by
// Call-ID.
func backendRequests(t *testing.T, trace string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, block := range strings.Split(trace, "----------------------------------------------- ") {
		_, msg, ok := strings.Cut(block, "message received [")
		if !ok {
			continue
		}
		_, msg, _ = strings.Cut(msg, "] bytes :\n\n")
		msg = strings.TrimRight(msg, "\n") + "\n"
		if strings.HasPrefix(msg, "SIP/") {
			continue
		}
		req, err := sip.ParseMessage([]byte(strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")))
		if err != nil {
			t.Errorf("backend received a request that does not parse (%v):\n%s", err, msg)
			continue
		}
		for _, h := range singleValued {
			if n := len(req.GetHeaders(h)); n > 1 {
				t.Errorf("backend received %d %s headers:\n%s", n, h, msg)
			}
		}
		if cid := req.CallID(); cid != nil {
			out[cid.Value()] = append(out[cid.Value()], string(req.(*sip.Request).Method))
		}
	}
	return out
}

func TestTLSPhoneToUDPBackend(t *testing.T) { tlsPhoneToUDPBackend(t, "hello") }

// A 60 KB MESSAGE over TLS reaches a UDP backend as one datagram.
func TestTLSLargeMessageToUDPBackend(t *testing.T) {
	tlsPhoneToUDPBackend(t, strings.Repeat("0123456789", 6000))
}

func tlsPhoneToUDPBackend(t *testing.T, body string) {
	testkit.RequireSIPp(t)
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, proxyIP)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_message.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	tlsPort := testkit.FreePort(t, proxyIP)
	p := startProxy(t, []Backend{be}, func(c *Config) {
		c.Listen = append(c.Listen, fmt.Sprintf("tls://%s:%d", proxyIP, tlsPort))
		c.TLS = TLSConfig{Cert: cert, Key: key}
	})
	code := tlsMessage(t, cert, net.JoinHostPort(proxyIP, strconv.Itoa(tlsPort)), body)
	if code != 200 {
		t.Fatalf("MESSAGE over TLS: got %d, want 200", code)
	}
	if c := backend.Wait(10 * time.Second); c != 0 {
		t.Fatalf("backend exit %d\n%s", c, backend.Output())
	}
	_ = p
}

// TestHangUpBackend: confirmed calls on a backend that is declared down get
// a BYE from the proxy; each phone answers it and its scenario completes.
func TestHangUpBackend(t *testing.T) {
	testkit.RequireSIPp(t)
	const calls = 3
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", strconv.Itoa(calls))
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startProxy(t, []Backend{be}, nil)
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_wait_bye.xml"),
		"-s", "202", "-m", strconv.Itoa(calls), "-r", "10", "-timeout", "20s", "-timeout_error", p.addr)
	if !testkit.Poll(5*time.Second, func() bool { return p.dialogs.len() >= calls }) {
		t.Fatalf("%d dialogs confirmed, want %d\n%s", p.dialogs.len(), calls, phone.Output())
	}
	backend.Kill()
	if n := p.HangUpBackend("asterisk1", "backend down"); n != calls {
		t.Fatalf("HangUpBackend hung up %d dialogs, want %d", n, calls)
	}
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone exit %d: BYE not received\n%s", code, phone.Output())
	}
	if got := testutil.ToFloat64(p.dialogs.ended.WithLabelValues("backend down")); got != calls {
		t.Errorf("hapbx_dialogs_terminated_total = %v, want %d", got, calls)
	}
	if p.dialogs.len() != 0 {
		t.Errorf("%d dialogs left", p.dialogs.len())
	}
}

// TestListenBeforeVIP: a listener on an address this host does not have
// yet (the VIP before the cluster adds it) binds thanks to IP_FREEBIND.
// Nothing is sent: 192.0.2.0/24 is TEST-NET and only bound here.
func TestListenBeforeVIP(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	cfg := DefaultConfig()
	cfg.Listen = []string{"udp://192.0.2.77:15060", "tcp://192.0.2.77:15060"}
	cfg.Advertise = "192.0.2.77"
	p, err := New(cfg, []Backend{be}, NewStaticRouter([]string{be.Name}, false), testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(context.Background()); err != nil {
		t.Fatalf("listen on a VIP not yet present: %v", err)
	}
	p.close()
}

// TestLoopDetected: a request that comes back carrying the proxy's own Via
// with the same loop hash (nothing changed on the way) is refused 482; one
// whose Request-URI changed (a legitimate spiral) is not treated as a loop.
func TestLoopDetected(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	p := startProxy(t, []Backend{be}, func(c *Config) { c.HopTimeout = 200 * time.Millisecond })
	ruri := "sip:202@" + p.addr
	msg := request("INVITE", ruri, 70, "")
	parsed, err := sip.NewParser().ParseSIP([]byte(strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", phoneIP+":5999"), "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	h := loopHash(parsed.(*sip.Request))
	ownVia := fmt.Sprintf("Via: SIP/2.0/UDP %s:%d;branch=%s%s.abc\n", proxyIP, p.port, branchPrefix, h)
	looped := strings.Replace(msg, "From:", ownVia+"From:", 1)
	if res := rawRequest(t, p.addr, looped, 3*time.Second); !strings.HasPrefix(res, "SIP/2.0 482 ") {
		t.Fatalf("looped request: got %q, want 482", statusLine(res))
	}
	spiral := strings.Replace(looped, "INVITE "+ruri, "INVITE sip:203@"+p.addr, 1)
	if res := rawRequest(t, p.addr, spiral, 3*time.Second); strings.HasPrefix(res, "SIP/2.0 482 ") {
		t.Fatalf("a spiral (changed Request-URI) was refused as a loop")
	}
}

// TestMediaPortsExhausted: with relay ports for one call only, a second new
// call gets 503 while the first keeps its relay session.
func TestMediaPortsExhausted(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"))
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	relay := startRelay(t, "23600-23603", prometheus.NewRegistry()) // two port pairs: one call
	addr := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, WithMediaAnchor(relay)).addr
	// rawRequest turns every \n into \r\n, the body's included.
	sdp := "v=0\no=- 1 1 IN IP4 10.9.9.9\ns=-\nc=IN IP4 10.9.9.9\nt=0 0\nm=audio 40000 RTP/AVP 0\n"
	invite := func() string {
		m := request("INVITE", "sip:202@"+addr, 70, "Content-Type: application/sdp\n")
		n := len(strings.ReplaceAll(sdp, "\n", "\r\n"))
		return strings.Replace(m, "Content-Length: 0\n\n", fmt.Sprintf("Content-Length: %d\n\n", n), 1) + sdp
	}
	first := rawRequest(t, addr, invite(), 5*time.Second)
	if !strings.HasPrefix(first, "SIP/2.0 200 ") || !strings.Contains(first, "c=IN IP4 "+proxyIP) {
		t.Fatalf("first call: %q (want 200 with the relay's SDP)\n%s", statusLine(first), first)
	}
	second := rawRequest(t, addr, invite(), 5*time.Second)
	if !strings.HasPrefix(second, "SIP/2.0 503 ") {
		t.Fatalf("second call with no relay ports left: got %q, want 503", statusLine(second))
	}
	if n := len(relay.Snapshot()); n != 1 {
		t.Fatalf("relay sessions: %d, want the first call's 1", n)
	}
}

// switchRouter offers no backend until on is set: a cold standby starting.
type switchRouter struct {
	on   atomic.Bool
	name string
}

func (r *switchRouter) Candidates(string) []string {
	if r.on.Load() {
		return []string{r.name}
	}
	return nil
}

// TestNoBackendWaitHoldsNewCall: a call placed while no backend is healthy
// is held and set up once one comes up (here 300 ms later), not refused.
func TestNoBackendWaitHoldsNewCall(t *testing.T) {
	router := &switchRouter{name: "asterisk1"}
	p, _ := heldCall(t, router, func() { router.on.Store(true) })
	// With the wait off, a call with no backend is refused at once.
	router.on.Store(false)
	p.cfg.NoBackendWait = 0
	if res := rawRequest(t, p.addr, request("INVITE", "sip:202@"+proxyIP, 70, ""), 3*time.Second); !strings.HasPrefix(res, "SIP/2.0 503 ") {
		t.Fatalf("no backend, no wait: got %q, want 503", statusLine(res))
	}
}
