package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestFramer: the framer says "in a message" from a message's first byte
// to its last, whatever the reads' boundaries, and not for keep-alives.
func TestFramer(t *testing.T) {
	msg := "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length: 5\r\n\r\nhello"
	compact := "MESSAGE sip:x SIP/2.0\r\nl : 3\r\nSubject: a\r\n folded\r\n\r\nabc"
	noBody := "SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
	cases := []struct {
		name   string
		chunks []string
		// in is whether a message is under way after each chunk, started
		// whether one started in it.
		in, started []bool
	}{
		{"whole message", []string{msg}, []bool{false}, []bool{true}},
		{"keep-alives", []string{"\r\n\r\n", "\r\n"}, []bool{false, false}, []bool{false, false}},
		{"headers only", []string{msg[:30]}, []bool{true}, []bool{true}},
		{"body missing", []string{msg[:len(msg)-5]}, []bool{true}, []bool{true}},
		{"body split", []string{msg[:len(msg)-2], msg[len(msg)-2:]}, []bool{true, false}, []bool{true, false}},
		{"CR and LF of one line apart", []string{msg[:22], msg[22:23], msg[23:]}, []bool{true, true, false}, []bool{true, false, false}},
		{"empty line split", []string{msg[:len(msg)-7], msg[len(msg)-7:]}, []bool{true, false}, []bool{true, false}},
		{"two messages, second partial", []string{msg + noBody[:10]}, []bool{true}, []bool{true}},
		{"two messages in one read", []string{noBody + msg}, []bool{false}, []bool{true}},
		{"compact form, folded header", []string{compact}, []bool{false}, []bool{true}},
		{"compact form without its body", []string{compact[:len(compact)-1]}, []bool{true}, []bool{true}},
		{"keep-alive then message", []string{"\r\n\r\n" + noBody}, []bool{false}, []bool{true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var f framer
			for i, c := range tc.chunks {
				started := f.feed([]byte(c))
				if f.inMessage() != tc.in[i] || started != tc.started[i] {
					t.Fatalf("after chunk %d %q: in message %v, started %v; want %v, %v", i, c, f.inMessage(), started, tc.in[i], tc.started[i])
				}
			}
		})
	}
}

// startTCPProxy starts a proxy on TCP (and TLS when cert is given) with the
// sip.tcp settings changed by mutate.
func startTCPProxy(t *testing.T, mutate func(*TCPConfig)) *testProxy {
	t.Helper()
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	return startProxyWith(t, []string{"udp", "tcp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), func(c *Config) {
		c.TCP.ReadTimeout = 300 * time.Millisecond
		c.TCP.IdleTimeout = time.Hour
		if mutate != nil {
			mutate(&c.TCP)
		}
	})
}

func dialFrom(t *testing.T, ip, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", &net.TCPAddr{IP: net.ParseIP(ip)}, mustTCPAddr(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// optionsTCP is a keep-alive OPTIONS to the proxy itself, which it answers.
func optionsTCP(c net.Conn, proxyAddr string) string {
	cid := strconv.FormatInt(time.Now().UnixNano(), 10)
	return fmt.Sprintf("OPTIONS sip:%s;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK%s;rport\r\n"+
		"From: <sip:201@example.com>;tag=f1\r\nTo: <sip:%s>\r\nCall-ID: %s@conns\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		proxyAddr, c.LocalAddr(), cid, proxyAddr, cid)
}

// ask sends a keep-alive OPTIONS over c and returns the status line of
// the answer ("" when the connection is closed or silent for 5 s).
func ask(t *testing.T, c *net.TCPConn, r *bufio.Reader, proxyAddr string) string {
	t.Helper()
	if _, err := c.Write([]byte(optionsTCP(c, proxyAddr))); err != nil {
		return ""
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, err := r.ReadString('\n')
	if err != nil {
		return ""
	}
	for { // the rest of the header; hapbx's 200 to OPTIONS has no body
		line, err := r.ReadString('\n')
		if err != nil || line == "\r\n" {
			break
		}
	}
	return strings.TrimSpace(status)
}

// closedByPeer waits up to d for c to be closed by the proxy.
func closedByPeer(c *net.TCPConn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestHalfMessageClosed: a message whose body never arrives is cut off
// after read_timeout and counted; a connection quiet between two whole
// messages for longer than read_timeout is not.
func TestHalfMessageClosed(t *testing.T) {
	p := startTCPProxy(t, nil)

	quiet := dialFrom(t, phoneIP, p.addr)
	qr := bufio.NewReader(quiet)
	if got := ask(t, quiet, qr, p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("first OPTIONS: %q", got)
	}

	half := dialFrom(t, phoneIP, p.addr)
	msg := strings.Replace(optionsTCP(half, p.addr), "Content-Length: 0", "Content-Length: 100", 1) + "only part of the body"
	if _, err := half.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if !closedByPeer(half, 20*time.Second) {
		t.Fatal("a connection with half a message is still open 20s after it, read_timeout 300ms")
	}
	if got := testutil.ToFloat64(p.m.connClosed.WithLabelValues("read_timeout")); got != 1 {
		t.Errorf("hapbx_proxy_connections_closed_total{reason=read_timeout} = %v, want 1", got)
	}
	// The quiet one has waited longer than read_timeout by now.
	if got := ask(t, quiet, qr, p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("OPTIONS on a connection quiet between messages: %q, want 200 (it must stay open)", got)
	}
	if got := testutil.ToFloat64(p.m.conns); got != 1 {
		t.Errorf("hapbx_proxy_connections = %v, want 1", got)
	}
}

// TestIdleConnectionClosed: a connection on which nothing arrives for
// idle_timeout is closed and counted; keep-alive CRLFs keep one open.
func TestIdleConnectionClosed(t *testing.T) {
	p := startTCPProxy(t, func(c *TCPConfig) { c.ReadTimeout, c.IdleTimeout = 100*time.Millisecond, 2*time.Second })
	idle := dialFrom(t, phoneIP, p.addr)
	if got := ask(t, idle, bufio.NewReader(idle), p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("OPTIONS: %q", got)
	}
	kept := dialFrom(t, phoneIP, p.addr)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // RFC 5626 keep-alives, well within idle_timeout even on a loaded machine
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := kept.Write([]byte("\r\n")); err != nil {
					return
				}
			}
		}
	}()
	if !closedByPeer(idle, 20*time.Second) {
		t.Fatal("an idle connection is still open 20s after its last message, idle_timeout 2s")
	}
	if got := testutil.ToFloat64(p.m.connClosed.WithLabelValues("idle_timeout")); got != 1 {
		t.Errorf("hapbx_proxy_connections_closed_total{reason=idle_timeout} = %v, want 1", got)
	}
	if closedByPeer(kept, 0) {
		t.Fatal("a connection sending keep-alives was closed")
	}
	if got := ask(t, kept, bufio.NewReader(kept), p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("OPTIONS after keep-alives: %q, want 200", got)
	}
}

// TestConnectionLimits: the connection over max_per_source from one
// address is closed at once and counted, another address still gets in,
// a slot freed is taken again; max_connections bounds them all.
func TestConnectionLimits(t *testing.T) {
	const otherIP = "127.0.2.51"
	p := startTCPProxy(t, func(c *TCPConfig) { c.MaxPerSource, c.MaxConnections = 2, 3 })
	var conns []*net.TCPConn
	for range 2 {
		c := dialFrom(t, phoneIP, p.addr)
		if got := ask(t, c, bufio.NewReader(c), p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("connection within the limit: %q", got)
		}
		conns = append(conns, c)
	}
	third := dialFrom(t, phoneIP, p.addr)
	if !closedByPeer(third, 10*time.Second) {
		t.Fatal("the 3rd connection from one address is open, max_per_source 2")
	}
	if got := testutil.ToFloat64(p.m.connRefused.WithLabelValues("max_per_source")); got != 1 {
		t.Errorf("hapbx_proxy_connections_refused_total{reason=max_per_source} = %v, want 1", got)
	}
	other := dialFrom(t, otherIP, p.addr)
	if got := ask(t, other, bufio.NewReader(other), p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("connection from another address: %q, want 200", got)
	}
	fourth := dialFrom(t, "127.0.2.52", p.addr)
	if !closedByPeer(fourth, 10*time.Second) {
		t.Fatal("the 4th connection in all is open, max_connections 3")
	}
	if got := testutil.ToFloat64(p.m.connRefused.WithLabelValues("max_connections")); got != 1 {
		t.Errorf("hapbx_proxy_connections_refused_total{reason=max_connections} = %v, want 1", got)
	}

	conns[0].Close()
	testkit.Eventually(t, 10*time.Second, "the closed connection's slot freed", func() bool {
		return testutil.ToFloat64(p.m.conns) == 2
	})
	again := dialFrom(t, phoneIP, p.addr)
	if got := ask(t, again, bufio.NewReader(again), p.addr); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("connection after one closed: %q, want 200", got)
	}
	p.conns.mu.Lock()
	defer p.conns.mu.Unlock()
	if len(p.conns.bySource) != 2 || p.conns.bySource[netip.MustParseAddr(phoneIP)] != 2 {
		t.Errorf("per-source table %v, want %s: 2 and %s: 1 only", p.conns.bySource, phoneIP, otherIP)
	}
}

// TestTLSHandshakeTimeout: a TLS client that never completes its
// handshake is cut off after read_timeout (TLS phones that do complete it:
// TestTLSPhoneToUDPBackend).
func TestTLSHandshakeTimeout(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir, proxyIP)
	tlsPort := testkit.FreePort(t, proxyIP)
	tlsAddr := net.JoinHostPort(proxyIP, strconv.Itoa(tlsPort))
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	tp := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), func(c *Config) {
		c.Listen = append(c.Listen, "tls://"+tlsAddr)
		c.TLS = TLSConfig{Cert: cert, Key: key}
		c.TCP.ReadTimeout = 300 * time.Millisecond
	})
	stalled := dialFrom(t, phoneIP, tlsAddr)
	if _, err := stalled.Write([]byte{0x16, 0x03, 0x01}); err != nil { // the start of a ClientHello
		t.Fatal(err)
	}
	if !closedByPeer(stalled, 20*time.Second) {
		t.Fatal("a stalled TLS handshake is still open 20s later, read_timeout 300ms")
	}
	if got := testutil.ToFloat64(tp.m.connClosed.WithLabelValues("tls_handshake")); got != 1 {
		t.Errorf("hapbx_proxy_connections_closed_total{reason=tls_handshake} = %v, want 1", got)
	}
}

// TestDialogKeepsConnection: a phone's TCP connection silent for longer
// than idle_timeout stays open while a call reaches the phone over it:
// the BYE hapbx sends when the call's backend dies arrives on it.
func TestDialogKeepsConnection(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	const idle = 500 * time.Millisecond
	p := startProxy(t, []Backend{be}, func(c *Config) { c.TCP.ReadTimeout, c.TCP.IdleTimeout = 100*time.Millisecond, idle })
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-t", "t1", "-sf", scenario("uac_wait_bye.xml"),
		"-s", "202", "-m", "1", "-timeout", "20s", "-timeout_error", p.addr)
	testkit.Eventually(t, 5*time.Second, "the call confirmed", func() bool { return p.dialogs.len() == 1 })
	time.Sleep(3 * idle) // the connection is silent: only the dialog keeps it
	// Read before the hang-up: once the BYE has ended the dialog, the
	// connection may rightly idle out before the phone's exit is seen.
	if got := testutil.ToFloat64(p.m.connClosed.WithLabelValues("idle_timeout")); got != 0 {
		t.Errorf("hapbx_proxy_connections_closed_total{reason=idle_timeout} = %v while the dialog was up, want 0", got)
	}
	backend.Kill()
	if n := p.HangUpBackend("asterisk1", "backend down"); n != 1 {
		t.Fatalf("HangUpBackend hung up %d dialogs, want 1", n)
	}
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone exit %d: BYE not received over its connection\n%s", code, phone.Output())
	}
}
