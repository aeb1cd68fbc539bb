package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestMain sets sipgo up as hapbx's wiring does at start-up.
func TestMain(m *testing.M) {
	LiftTransportLimits()
	TakeOverTrying()
	ShortenRetention()
	os.Exit(m.Run())
}

// suspectLog records what a proxy reports to health.
type suspectLog struct {
	mu  sync.Mutex
	got []string
}

func (s *suspectLog) Suspect(backend, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, backend+": "+reason)
}

func (s *suspectLog) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// Issue 12 §6(c): calls whose INVITE and 200 are far beyond 1300 bytes go
// through, to backends that listen on TCP (over TCP) and to backends that
// do not (one UDP datagram), and no backend is suspected for a size.
func TestLargeInvites(t *testing.T) {
	testkit.RequireSIPp(t)
	for _, tc := range []struct {
		phone string // the phone's transport to hapbx
		tcp   bool   // the UDP backend listens on TCP (and SIPp runs over TCP)
		size  int
	}{
		{"udp", false, 1500},
		{"udp", false, 4000},
		{"udp", false, 16000},
		{"udp", true, 1500},
		{"udp", true, 4000},
		{"udp", true, 16000},
		{"udp", true, 60000}, // a UDP datagram beyond sipgo's 32 KB read buffer
		{"tcp", false, 60000},
	} {
		t.Run(fmt.Sprintf("%s phone, tcp=%v, %d bytes", tc.phone, tc.tcp, tc.size), func(t *testing.T) {
			be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
			be.TCP = tc.tcp
			beT, beNet := "u1", "udp"
			if tc.tcp {
				beT, beNet = "t1", "tcp"
			}
			backend := testkit.StartSIPp(t, be1IP, bePort, "-t", beT, "-sf", testkit.LargeScenario(t, scenario("uas_large.xml"), tc.size), "-m", "1")
			testkit.WaitListening(t, beNet, be.Address, 3*time.Second)
			var sus suspectLog
			p := startProxyWith(t, []string{"udp", "tcp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, WithFailureReporter(&sus))

			phoneT := map[string]string{"udp": "u1", "tcp": "t1"}[tc.phone]
			phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-t", phoneT, "-sf", testkit.LargeScenario(t, scenario("uac_large.xml"), tc.size),
				"-s", "202", "-m", "1", "-timeout", "20s", "-timeout_error", p.addr)
			if code := phone.Wait(30 * time.Second); code != 0 {
				t.Fatalf("phone sipp exit %d\n%s", code, phone.Output())
			}
			if c := phone.Counts(); c.Successful != 1 || c.Failed != 0 {
				t.Fatalf("phone counts %+v, want 1 successful\n%s", c, phone.Output())
			}
			if code := backend.Wait(10 * time.Second); code != 0 {
				t.Fatalf("backend sipp exit %d\n%s", code, backend.Output())
			}
			if got := sus.list(); len(got) != 0 {
				t.Errorf("backends suspected: %q", got)
			}
			how := "udp"
			if tc.tcp {
				how = "tcp"
			}
			if got := testutil.ToFloat64(p.m.large.WithLabelValues(how)); got != 1 {
				t.Errorf("hapbx_proxy_large_requests_total{how=%q} = %v, want 1 (the INVITE)", how, got)
			}
		})
	}
}

// A request that grows beyond one UDP datagram on its way to a backend
// without TCP gets 513, and the backend is not suspected.
func TestTooLargeForUDPGets513(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp") // never started: nothing may reach it
	var sus suspectLog
	p := startProxyWith(t, []string{"udp", "tcp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, WithFailureReporter(&sus))

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(phoneIP)}, Timeout: 3 * time.Second}
	conn, err := d.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := "v=0\r\n" + strings.Repeat("a=x-pad:"+strings.Repeat("z", 90)+"\r\n", 652)
	msg := fmt.Sprintf("INVITE sip:202@%s SIP/2.0\r\n"+
		"Via: SIP/2.0/TCP %s;branch=z9hG4bKbig1;rport\r\n"+
		"From: <sip:201@%s>;tag=f1\r\nTo: <sip:202@%s>\r\nCall-ID: big1@test\r\nCSeq: 1 INVITE\r\n"+
		"Contact: <sip:201@%s;transport=tcp>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s",
		p.addr, conn.LocalAddr(), phoneIP, proxyIP, conn.LocalAddr(), len(body), body)
	if len(msg) > 65535 || len(msg) < udpMaxDatagram-60 {
		t.Fatalf("test INVITE is %d bytes: must be received (<= 65535) and outgrow a datagram once forwarded", len(msg))
	}
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no final response: %v", err)
		}
		if !strings.HasPrefix(line, "SIP/2.0 ") || strings.HasPrefix(line, "SIP/2.0 100 ") {
			continue
		}
		if !strings.HasPrefix(line, "SIP/2.0 513 ") {
			t.Fatalf("final response %q, want 513", strings.TrimSpace(line))
		}
		break
	}
	if got := sus.list(); len(got) != 0 {
		t.Errorf("backends suspected: %q", got)
	}
	if got := testutil.ToFloat64(p.m.large.WithLabelValues("refused")); got != 1 {
		t.Errorf("hapbx_proxy_large_requests_total{how=\"refused\"} = %v, want 1", got)
	}
}

// fit's choice for each next hop and size.
func TestFitChoosesTransport(t *testing.T) {
	backends := []Backend{
		{Name: "both", Address: "127.0.2.11:5060", Transport: "udp", TCP: true},
		{Name: "udponly", Address: "127.0.2.12:5060", Transport: "udp"},
		{Name: "tcp", Address: "127.0.2.13:5060", Transport: "tcp"},
	}
	newProxy := func(listen ...string) *Proxy {
		cfg := DefaultConfig()
		cfg.Listen, cfg.Advertise = listen, proxyIP
		p, err := New(cfg, backends, nil, zaptest.NewLogger(t), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	both := newProxy("udp://127.0.2.1:5060", "tcp://127.0.2.1:5060")
	udpOnly := newProxy("udp://127.0.2.1:5060")
	for _, tc := range []struct {
		name    string
		p       *Proxy
		t       target
		size    int
		want    string
		tooBig  bool
		rebuilt bool
	}{
		{"small stays on UDP", both, target{backend: "both", addr: "127.0.2.11:5060", transport: "udp"}, 800, "udp", false, false},
		{"budget exactly stays on UDP", both, target{backend: "both", addr: "127.0.2.11:5060", transport: "udp"}, udpBudget, "udp", false, false},
		{"large to a TCP-capable backend", both, target{backend: "both", addr: "127.0.2.11:5060", transport: "udp"}, udpBudget + 1, "tcp", false, true},
		{"large to a UDP-only backend", both, target{backend: "udponly", addr: "127.0.2.12:5060", transport: "udp"}, 16000, "udp", false, false},
		{"large to a phone", both, target{addr: "127.0.2.50:5060", transport: "udp"}, 16000, "udp", false, false},
		{"large from a proxy without TCP", udpOnly, target{backend: "both", addr: "127.0.2.11:5060", transport: "udp"}, 16000, "udp", false, false},
		{"large to a TCP backend", both, target{backend: "tcp", addr: "127.0.2.13:5060", transport: "tcp"}, 16000, "tcp", false, false},
		{"beyond a datagram, UDP only", both, target{backend: "udponly", addr: "127.0.2.12:5060", transport: "udp"}, udpMaxDatagram + 1, "udp", true, false},
		{"beyond a datagram, TCP-capable", both, target{backend: "both", addr: "127.0.2.11:5060", transport: "udp"}, udpMaxDatagram + 1, "tcp", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			builds := 0
			out, got, err := tc.p.fit(tc.t, func(t target) *sip.Request {
				builds++
				return sizedRequest(t.transport, tc.size)
			})
			if got.transport != tc.want || got.backend != tc.t.backend || got.addr != tc.t.addr {
				t.Errorf("target %+v, want %+v over %s", got, tc.t, tc.want)
			}
			if strings.ToLower(out.Transport()) != tc.want {
				t.Errorf("request built for %s, want %s", out.Transport(), tc.want)
			}
			if errors.Is(err, errTooLarge) != tc.tooBig || (err != nil && !tc.tooBig) {
				t.Errorf("err = %v, want too large: %v", err, tc.tooBig)
			}
			if err != nil && !sizeError(err) {
				t.Errorf("sizeError(%v) = false", err)
			}
			if (builds == 2) != tc.rebuilt {
				t.Errorf("built %d times, rebuilt want %v", builds, tc.rebuilt)
			}
		})
	}
}

// sizedRequest is a request over transport of exactly size bytes on the wire.
func sizedRequest(transport string, size int) *sip.Request {
	req := sip.NewRequest(sip.INVITE, sip.Uri{User: "202", Host: proxyIP})
	req.SetTransport(strings.ToUpper(transport))
	req.SetBody(nil)
	pad := size - wireSize(req) - len("X-Pad: \r\n")
	req.AppendHeader(sip.NewHeader("X-Pad", strings.Repeat("p", pad)))
	return req
}

func TestSizeErrors(t *testing.T) {
	for _, err := range []error{errTooLarge, sip.ErrUDPMTUCongestion, fmt.Errorf("udp write: %w", &net.OpError{Op: "write", Err: os.NewSyscallError("sendto", syscall.EMSGSIZE)})} {
		if !sizeError(err) {
			t.Errorf("sizeError(%v) = false, want true", err)
		}
	}
	for _, err := range []error{errors.New("connection refused"), sip.ErrTransactionTimeout} {
		if sizeError(err) {
			t.Errorf("sizeError(%v) = true, want false", err)
		}
	}
}
