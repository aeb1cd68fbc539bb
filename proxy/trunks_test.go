package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// providerIP is a trunk's provider in this package's tests.
const providerIP = "127.0.2.61"

// fakeTrunks is one trunk, p1: the source providerIP, its hosts hosts.
type fakeTrunks struct {
	hosts    []TrunkHost
	backends []string
}

func (f *fakeTrunks) Match(src netip.Addr) (string, bool) {
	if src == netip.MustParseAddr(providerIP) {
		return "p1", true
	}
	return "", false
}

func (f *fakeTrunks) Targets(_ context.Context, name string) ([]TrunkHost, error) {
	if name != "p1" {
		return nil, fmt.Errorf("trunk %q: %w", name, ErrUnknownTrunk)
	}
	return f.hosts, nil
}

func (f *fakeTrunks) Authorize(string, *sip.Request, *sip.Response) (sip.Header, error) {
	return sip.NewHeader("Proxy-Authorization", `Digest username="u", response="fake"`), nil
}

func (f *fakeTrunks) Backends(string) []string { return f.backends }

// requestFrom parses a sipRequest sent from src.
func requestFrom(t *testing.T, msg, src string) *sip.Request {
	t.Helper()
	m, err := sip.ParseMessage([]byte(strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", src), "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	req := m.(*sip.Request)
	req.SetSource(src)
	return req
}

// withTrunkHeader adds X-Hapbx-Trunk: name to a sipRequest.
func withTrunkHeader(msg, name string) string {
	return strings.Replace(msg, "Max-Forwards: 70\n", "Max-Forwards: 70\nX-Hapbx-Trunk: "+name+"\n", 1)
}

// TestTrunkHeaderRules: X-Hapbx-Trunk is hapbx's alone. A backend's
// initial request names the trunk to call through; a provider's initial
// request gets its trunk's name (its own value replaced); a phone's
// initial request naming a trunk is refused; every in-dialog request loses
// the header.
func TestTrunkHeaderRules(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	p := &Proxy{}
	WithTrunks(&fakeTrunks{})(p)
	p.backends.Store(newBackendSet([]Backend{be}))
	for _, c := range []struct {
		name, from, toTag, header string
		out, why, want            string // want: the header left on the request
	}{
		{"backend initial", be1IP, "", "p1", "p1", "", ""},
		{"backend in-dialog", be1IP, "x", "p1", "", "", ""},
		{"provider initial", providerIP, "", "forged", "", "", "p1"},
		{"provider initial, none", providerIP, "", "", "", "", "p1"},
		{"provider in-dialog", providerIP, "x", "forged", "", "", ""},
		{"phone initial", phoneIP, "", "p1", "", refusedTrunk, ""},
		{"phone in-dialog", phoneIP, "x", "p1", "", "", ""},
		{"phone initial, none", phoneIP, "", "", "", "", ""},
	} {
		msg := sipRequest("INVITE", "sip:4930@"+proxyIP, "c1", "f1", c.toTag)
		if c.header != "" {
			msg = withTrunkHeader(msg, c.header)
		}
		req := requestFrom(t, msg, c.from+":5060")
		out, why := p.takeTrunkHeader(req)
		var left []string
		for _, h := range req.GetHeaders(TrunkHeader) {
			left = append(left, h.Value())
		}
		if out != c.out || why != c.why || strings.Join(left, ",") != c.want {
			t.Errorf("%s: out %q refusal %q header %q, want %q %q %q", c.name, out, why, left, c.out, c.why, c.want)
		}
	}
}

// TestTrunkSourcesExempt: the flood guard does not count a trunk's ACL
// source.
func TestTrunkSourcesExempt(t *testing.T) {
	p := &Proxy{}
	WithDoor(Door{})(p)
	WithTrunks(&fakeTrunks{})(p)
	p.backends.Store(newBackendSet(nil))
	if !p.exemptSource(netip.MustParseAddr(providerIP)) {
		t.Error("a trunk's source is counted by the flood guard")
	}
	if p.exemptSource(netip.MustParseAddr(phoneIP)) {
		t.Error("a phone is exempt from the flood guard")
	}
}

// TestTrunkChallengeNotRelayed: hapbx answers the provider's 407 once,
// with the trunk's credentials and CSeq + 1; a second 407 reaches the
// backend as 403 (never the challenge), with the backend's CSeq.
func TestTrunkChallengeNotRelayed(t *testing.T) {
	backend := listenPeer(t, be1IP)
	provider := listenPeer(t, providerIP)
	host := netip.MustParseAddrPort(provider.addr())
	tp := startProxyWith(t, []string{"udp"}, []Backend{{Name: "asterisk1", Address: backend.addr(), Transport: "udp"}},
		NewStaticRouter([]string{"asterisk1"}, false), nil, WithTrunks(&fakeTrunks{hosts: []TrunkHost{{Addr: host, Transport: "udp"}}}))
	quiet(tp.Proxy)

	backend.send(tp.addr, withTrunkHeader(sipRequest("INVITE", "sip:4930@"+tp.addr, "trunk-407", "f1", ""), "p1"))
	first, from := provider.recv("INVITE", 5*time.Second)
	if strings.Contains(first, "X-Hapbx-Trunk") || !strings.Contains(first, "CSeq: 2 INVITE") {
		t.Fatalf("the INVITE the provider got:\n%s", first)
	}
	if !strings.HasPrefix(first, "INVITE sip:4930@"+provider.addr()+" ") {
		t.Errorf("Request-URI not aimed at the provider's host:\n%s", first)
	}
	provider.answer(first, from, "407 Proxy Authentication Required")
	again, from := provider.recv("INVITE", 5*time.Second)
	if !strings.Contains(again, "CSeq: 3 INVITE") || !strings.Contains(again, `Proxy-Authorization: Digest username="u", response="fake"`) {
		t.Fatalf("the INVITE sent again is not authorized with CSeq 3:\n%s", again)
	}
	provider.answer(again, from, "407 Proxy Authentication Required")

	if msg := finalResponse(t, backend, "trunk-407"); !strings.HasPrefix(msg, "SIP/2.0 403 ") || !strings.Contains(msg, "CSeq: 2 INVITE") || strings.Contains(msg, "Proxy-Authenticate") {
		t.Fatalf("the backend got, for a challenge hapbx could not answer:\n%s", msg)
	}

	// A trunk hapbx does not have: 404, nothing sent.
	backend.send(tp.addr, withTrunkHeader(sipRequest("INVITE", "sip:4930@"+tp.addr, "trunk-none", "f1", ""), "nope"))
	if msg := finalResponse(t, backend, "trunk-none"); !strings.HasPrefix(msg, "SIP/2.0 404 ") {
		t.Fatalf("the backend got, for a trunk hapbx does not have:\n%s", msg)
	}
}

// finalResponse is the next final response of callID p receives.
func finalResponse(t *testing.T, p *peer, callID string) string {
	t.Helper()
	buf := make([]byte, 65535)
	_ = p.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := p.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no final response: %v", err)
		}
		if msg := string(buf[:n]); strings.HasPrefix(msg, "SIP/2.0 ") && !strings.HasPrefix(msg, "SIP/2.0 1") && strings.Contains(msg, "Call-ID: "+callID+"\r\n") {
			return msg
		}
	}
}
