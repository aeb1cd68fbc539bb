package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/testkit"
)

// quiet drops the proxy's logs: sipgo still logs from its transaction
// timers after these tests' last exchange, when a test logger panics.
func quiet(p *Proxy) { p.log = zap.NewNop() }

// foreignIP is a host hapbx must never be made to send to.
const foreignIP = "127.0.2.99"

// peer is a UDP socket standing for a backend, a phone or a foreign host.
type peer struct {
	t *testing.T
	net.PacketConn
}

func listenPeer(t *testing.T, ip string) *peer {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(t, ip))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{t: t, PacketConn: c}
}

func (p *peer) addr() string { return p.LocalAddr().String() }

// send writes msg ("PEER" is the socket's address, "\n" becomes "\r\n") to `to`.
func (p *peer) send(to, msg string) {
	p.t.Helper()
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", p.addr()), "\n", "\r\n")
	dst, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.WriteTo([]byte(msg), dst); err != nil {
		p.t.Fatal(err)
	}
}

// recv returns the next request of method received within wait, and its sender.
func (p *peer) recv(method string, wait time.Duration) (string, net.Addr) {
	p.t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(wait)
	for {
		_ = p.SetReadDeadline(deadline)
		n, from, err := p.ReadFrom(buf)
		if err != nil {
			p.t.Fatalf("%s: no %s within %v: %v", p.addr(), method, wait, err)
		}
		if msg := string(buf[:n]); strings.HasPrefix(msg, method+" ") {
			return msg, from
		}
	}
}

// silent fails the test if anything at all reaches the socket. It is called
// after the proxy has answered (or counted) every request that could have
// been forwarded, so a forward would already be on its way.
func (p *peer) silent() {
	p.t.Helper()
	buf := make([]byte, 65535)
	_ = p.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, _, err := p.ReadFrom(buf)
	if err == nil {
		p.t.Fatalf("%s received a message hapbx must not send:\n%s", p.addr(), buf[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		p.t.Fatal(err)
	}
}

// answer answers the request msg from `to` with a bare final response
// (status: "200 OK", "486 Busy Here"), tagging the To header if need be.
func (p *peer) answer(msg string, to net.Addr, status string) {
	p.t.Helper()
	var b strings.Builder
	b.WriteString("SIP/2.0 " + status + "\r\n")
	for _, line := range strings.Split(msg, "\r\n") {
		for _, h := range []string{"Via:", "From:", "To:", "Call-ID:", "CSeq:"} {
			if strings.HasPrefix(line, h) {
				if h == "To:" && !strings.Contains(line, ";tag=") {
					line += ";tag=answered"
				}
				b.WriteString(line + "\r\n")
			}
		}
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	if _, err := p.WriteTo([]byte(b.String()), to); err != nil {
		p.t.Fatal(err)
	}
}

// sipRequest is a request from PEER; toTag "" makes it an initial one,
// each route a Route header.
func sipRequest(method, ruri, callID, fromTag, toTag string, routes ...string) string {
	to := "<sip:202@example.com>"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	var rs strings.Builder
	for _, r := range routes {
		rs.WriteString("Route: " + r + "\n")
	}
	return fmt.Sprintf(`%s %s SIP/2.0
Via: SIP/2.0/UDP PEER;branch=z9hG4bK%d;rport
From: <sip:201@example.com>;tag=%s
To: %s
Call-ID: %s
CSeq: 2 %s
Contact: <sip:201@PEER>
Max-Forwards: 70
%sContent-Length: 0

`, method, ruri, time.Now().UnixNano(), fromTag, to, callID, method, rs.String())
}

func tokenRoute(proxyAddr, tok string) string {
	return "<sip:" + proxyAddr + ";lr;" + tokenParam + "=" + tok + ">"
}

// TestNoOpenRelay: a phone cannot make hapbx send anything to a host of its
// choosing, nor into a dialog hapbx did not record-route; each attempt is
// answered 403 (an ACK dropped), counted, and neither the foreign host nor
// the backend receives anything. A phone's request inside a real dialog
// still reaches the backend, and a backend still reaches any phone.
func TestNoOpenRelay(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	backend, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	bePeer := &peer{t: t, PacketConn: backend}
	t.Cleanup(func() { backend.Close() })
	foreign := listenPeer(t, foreignIP)
	p := startProxyWith(t, []string{"udp", "tcp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, quiet)
	f := foreign.addr()
	own := "<sip:" + p.addr + ";lr>"
	valid := p.dialogToken("dlg@test", "f1", "asterisk1")

	cases := []struct {
		name, msg, reason string
	}{
		{"INVITE with a preloaded Route to another host",
			sipRequest("INVITE", "sip:202@"+p.addr, "r1@test", "f1", "", "<sip:"+f+";lr>"), refusedPreloadedRoute},
		{"INVITE with hapbx's Route, then another host's",
			sipRequest("INVITE", "sip:202@"+f, "r2@test", "f1", "", own, "<sip:"+f+";lr>"), refusedPreloadedRoute},
		{"MESSAGE with a preloaded Route to another host",
			sipRequest("MESSAGE", "sip:202@"+p.addr, "r3@test", "f1", "", "<sip:"+f+";lr>"), refusedPreloadedRoute},
		{"BYE with an invented To tag, hapbx's Route and a Request-URI at another host",
			sipRequest("BYE", "sip:x@"+f, "r4@test", "f1", "t1", own), refusedNoToken},
		{"BYE with an invented To tag, no Route and a Request-URI at another host",
			sipRequest("BYE", "sip:x@"+f, "r5@test", "f1", "t1"), refusedNoToken},
		{"re-INVITE with a valid token towards another host",
			sipRequest("INVITE", "sip:x@"+f, "dlg@test", "f1", "t1", tokenRoute(p.addr, valid)), refusedForeignHop},
		{"BYE with a valid token, then a Route to another host",
			sipRequest("BYE", "sip:x@"+be.Address, "dlg@test", "f1", "t1", tokenRoute(p.addr, valid), "<sip:"+f+";lr>"), refusedForeignHop},
		{"BYE to the backend with a forged token",
			sipRequest("BYE", "sip:x@"+be.Address, "dlg@test", "f1", "t1", tokenRoute(p.addr, "AAAAAAAAAAAAAAAA")), refusedBadToken},
		{"BYE to the backend with another dialog's token",
			sipRequest("BYE", "sip:x@"+be.Address, "other@test", "f1", "t1", tokenRoute(p.addr, valid)), refusedBadToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(p.m.refused.WithLabelValues(tc.reason))
			res := rawRequest(t, p.addr, tc.msg, 5*time.Second)
			if !strings.HasPrefix(res, "SIP/2.0 403 ") {
				t.Fatalf("got %q, want 403", statusLine(res))
			}
			if got := testutil.ToFloat64(p.m.refused.WithLabelValues(tc.reason)); got != before+1 {
				t.Errorf("hapbx_proxy_refused_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
			}
		})
	}

	t.Run("ACK with an invented To tag towards another host", func(t *testing.T) {
		before := testutil.ToFloat64(p.m.refused.WithLabelValues(refusedNoToken))
		phone := listenPeer(t, phoneIP)
		phone.send(p.addr, sipRequest("ACK", "sip:x@"+f, "r6@test", "f1", "t1", own))
		// An ACK gets no answer: wait for it to be counted.
		deadline := time.Now().Add(5 * time.Second)
		for testutil.ToFloat64(p.m.refused.WithLabelValues(refusedNoToken)) == before {
			if time.Now().After(deadline) {
				t.Fatal("ACK not counted as refused")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	foreign.silent()
	bePeer.silent()

	t.Run("BYE inside the dialog reaches the backend", func(t *testing.T) {
		byeReaches(t, p.addr, bePeer, sipRequest("BYE", "sip:x@"+be.Address, "dlg@test", "f1", "t1", tokenRoute(p.addr, valid)))
	})
	t.Run("a backend's BYE reaches the phone without a token", func(t *testing.T) {
		phone := listenPeer(t, phoneIP)
		bePeer.send(p.addr, sipRequest("BYE", "sip:201@"+phone.addr(), "in@test", "b1", "p1"))
		msg, from := phone.recv("BYE", 5*time.Second)
		phone.answer(msg, from, "200 OK")
	})
	foreign.silent()
}

// phoneFinal returns the first final response the phone receives.
func phoneFinal(t *testing.T, phone *peer) string {
	t.Helper()
	buf := make([]byte, 65535)
	_ = phone.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := phone.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no final response: %v", err)
		}
		if res := string(buf[:n]); strings.HasPrefix(res, "SIP/2.0 ") && !strings.HasPrefix(res, "SIP/2.0 1") {
			return res
		}
	}
}

var tokenRE = regexp.MustCompile(tokenParam + `=([A-Za-z0-9_-]+)`)

// TestDialogTokenSurvivesFailover: the twin holding the same secret accepts
// the dialogs the other proxy record-routed (the VIP moved to it); a proxy
// with another secret refuses them.
func TestDialogTokenSurvivesFailover(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	backend, err := net.ListenPacket("udp", be.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	bePeer := &peer{t: t, PacketConn: backend}
	secret := []byte("0123456789abcdef0123456789abcdef")
	router := NewStaticRouter([]string{be.Name}, false)
	pa := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, WithDialogSecret(secret), quiet)
	twin := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, WithDialogSecret(secret), quiet)
	stranger := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, quiet)

	// A SUBSCRIBE creates a dialog like an INVITE, and ends its transaction
	// without an ACK.
	phone := listenPeer(t, phoneIP)
	phone.send(pa.addr, sipRequest("SUBSCRIBE", "sip:202@"+pa.addr, "fo@test", "f9", ""))
	sub, from := bePeer.recv("SUBSCRIBE", 5*time.Second)
	m := tokenRE.FindStringSubmatch(sub)
	if m == nil {
		t.Fatalf("no dialog token in the forwarded SUBSCRIBE's Record-Route:\n%s", sub)
	}
	tok := m[1]
	bePeer.answer(sub, from, "200 OK")
	if res := phoneFinal(t, phone); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("SUBSCRIBE: phone got %q, want 200", statusLine(res))
	}

	res := rawRequest(t, stranger.addr, sipRequest("BYE", "sip:x@"+be.Address, "fo@test", "f9", "t9", tokenRoute(stranger.addr, tok)), 5*time.Second)
	if !strings.HasPrefix(res, "SIP/2.0 403 ") {
		t.Fatalf("a proxy with another secret: %q, want 403", statusLine(res))
	}
	byeReaches(t, twin.addr, bePeer, sipRequest("BYE", "sip:x@"+be.Address, "fo@test", "f9", "t9", tokenRoute(twin.addr, tok)))
}

// byeReaches sends bye from a phone to the proxy at proxyAddr: the backend
// must receive it, and its 200 must come back to the phone.
func byeReaches(t *testing.T, proxyAddr string, backend *peer, bye string) {
	t.Helper()
	phone := listenPeer(t, phoneIP)
	phone.send(proxyAddr, bye)
	msg, from := backend.recv("BYE", 5*time.Second)
	backend.answer(msg, from, "200 OK")
	if res := phoneFinal(t, phone); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("phone got %q, want the backend's 200", statusLine(res))
	}
}
