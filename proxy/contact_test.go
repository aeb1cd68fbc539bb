package proxy

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

var (
	contactRE = regexp.MustCompile(`(?m)^Contact: <([^>]*)>`)
	routeRE   = regexp.MustCompile(`(?m)^Record-Route: (.*?)\r?$`)
)

// answerWithContact answers msg from `to` with 200 OK, the To tagged, its
// Record-Route kept and contact as Contact.
func (p *peer) answerWithContact(msg string, to net.Addr, contact string) {
	p.t.Helper()
	var b strings.Builder
	b.WriteString("SIP/2.0 200 OK\r\n")
	for _, line := range strings.Split(msg, "\r\n") {
		for _, h := range []string{"Via:", "Record-Route:", "From:", "To:", "Call-ID:", "CSeq:"} {
			if strings.HasPrefix(line, h) {
				if h == "To:" && !strings.Contains(line, ";tag=") {
					line += ";tag=callee"
				}
				b.WriteString(line + "\r\n")
			}
		}
	}
	b.WriteString("Contact: <" + contact + ">\r\nContent-Length: 0\r\n\r\n")
	if _, err := p.WriteTo([]byte(b.String()), to); err != nil {
		p.t.Fatal(err)
	}
}

// calleeRequest is a request of the callee of a call set up by msg (the 200 it
// answered, with its Record-Route), sent to ruri.
func calleeRequest(t *testing.T, method, ruri, callID, invite string) string {
	t.Helper()
	var routes []string
	for _, m := range routeRE.FindAllStringSubmatch(invite, -1) {
		routes = append(routes, m[1])
	}
	if len(routes) == 0 {
		t.Fatalf("no Record-Route in:\n%s", invite)
	}
	return sipRequest(method, ruri, callID, "callee", "f1", routes...)
}

// TestTrunkContactAlias: the provider sees hapbx's address, never a
// backend's, in the Contact of the backend's 200 to its call and of the
// backend's call to it; its in-dialog requests to that Contact reach the
// backend at the Contact the backend wrote, also through the twin that took
// the VIP (the same dialog secret). An alias altered, forged or copied into
// another dialog is refused (403, counted) and reaches nobody.
func TestTrunkContactAlias(t *testing.T) {
	backend := listenPeer(t, be1IP)
	provider := listenPeer(t, providerIP)
	be := Backend{Name: "asterisk1", Address: backend.addr(), Transport: "udp"}
	router := NewStaticRouter([]string{"asterisk1"}, false)
	trunks := WithTrunks(&fakeTrunks{hosts: []TrunkHost{{Addr: netip.MustParseAddrPort(provider.addr()), Transport: "udp"}}})
	pa := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, WithDialogSecret(twinSecret), trunks, quiet)
	twin := startProxyWith(t, []string{"udp"}, []Backend{be}, router, nil, WithDialogSecret(twinSecret), trunks, quiet)
	beContact := "sip:asterisk@" + backend.addr()

	// The provider calls in; the backend's 200 carries its own Contact.
	provider.send(pa.addr, sipRequest("INVITE", "sip:4930@"+pa.addr, "in@test", "f1", ""))
	inv, from := backend.recv("INVITE", 5*time.Second)
	backend.answerWithContact(inv, from, beContact)
	ok := finalResponse(t, provider, "in@test")
	m := contactRE.FindStringSubmatch(ok)
	if m == nil || !strings.HasPrefix(m[1], "sip:asterisk@"+pa.addr+";"+contactParam+"=") {
		t.Fatalf("the provider's 200 does not show hapbx's address alone as Contact:\n%s", ok)
	}
	alias := m[1]
	// Its BYE to that Contact, through the twin: the backend gets it at
	// its own Contact.
	provider.send(twin.addr, strings.ReplaceAll(calleeRequest(t, "BYE", alias, "in@test", ok), pa.addr, twin.addr))
	bye, from := backend.recv("BYE", 5*time.Second)
	if !strings.HasPrefix(bye, "BYE "+beContact+" SIP/2.0\r\n") {
		t.Fatalf("the provider's BYE reached the backend as:\n%s", bye)
	}
	backend.answer(bye, from, "200 OK")
	if res := finalResponse(t, provider, "in@test"); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("the provider's BYE: %q", statusLine(res))
	}

	// Refused: an altered alias, a forged one, one from another dialog.
	enc, _, _ := strings.Cut(strings.SplitN(alias, contactParam+"=", 2)[1], ".")
	forged := "sip:asterisk@" + pa.addr + ";" + contactParam + "=" + enc + ".AAAAAAAAAAAAAAAA"
	other := strings.Replace(alias, enc, enc[:len(enc)-2]+"Ag", 1)
	for _, c := range []struct{ name, ruri, callID string }{
		{"altered URI", other, "in@test"},
		{"forged MAC", forged, "in@test"},
		{"another dialog", alias, "other@test"},
	} {
		before := testutil.ToFloat64(pa.m.refused.WithLabelValues(refusedBadAlias))
		provider.send(pa.addr, calleeRequest(t, "BYE", c.ruri, c.callID, ok))
		if res := finalResponse(t, provider, c.callID); !strings.HasPrefix(res, "SIP/2.0 403 ") {
			t.Errorf("%s: %q, want 403", c.name, statusLine(res))
		}
		if got := testutil.ToFloat64(pa.m.refused.WithLabelValues(refusedBadAlias)); got != before+1 {
			t.Errorf("%s: hapbx_proxy_refused_total{reason=%q} = %v, want %v", c.name, refusedBadAlias, got, before+1)
		}
	}
	backend.silent()

	// The backend calls out through the trunk: the provider sees hapbx's
	// address as Contact; its BYE reaches the backend at its own Contact.
	out := withTrunkHeader(sipRequest("INVITE", "sip:4930999@"+pa.addr, "out@test", "f1", ""), "p1")
	backend.send(pa.addr, strings.Replace(out, "Contact: <sip:201@PEER>", "Contact: <"+beContact+">", 1))
	inv, from = provider.recv("INVITE", 5*time.Second)
	m = contactRE.FindStringSubmatch(inv)
	if m == nil || !strings.HasPrefix(m[1], "sip:asterisk@"+pa.addr+";"+contactParam+"=") {
		t.Fatalf("the provider's INVITE does not show hapbx's address alone as Contact:\n%s", inv)
	}
	provider.answerWithContact(inv, from, "sip:4930999@"+provider.addr())
	if res := finalResponse(t, backend, "out@test"); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("the backend's call: %q", statusLine(res))
	}
	provider.send(twin.addr, strings.ReplaceAll(calleeRequest(t, "BYE", m[1], "out@test", inv), pa.addr, twin.addr))
	bye, from = backend.recv("BYE", 5*time.Second)
	if !strings.HasPrefix(bye, "BYE "+beContact+" SIP/2.0\r\n") {
		t.Fatalf("the provider's BYE reached the backend as:\n%s", bye)
	}
	backend.answer(bye, from, "200 OK")
}

// TestTrunkContactAliasInDialog: Asterisk's re-INVITE and UPDATE in a call
// with a provider show the provider hapbx's address as Contact (target
// refresh requests: with the backend's Contact the provider would send its
// next requests past hapbx), whether the provider's Contact names it by an
// address of the trunk's ACL, by a DNS name (A) or by an SRV domain (a real
// DNS server); a next hop whose name resolves outside every ACL (a phone)
// sees the backend's Contact.
func TestTrunkContactAliasInDialog(t *testing.T) {
	const dnsIP = "127.0.2.53"
	backend := listenPeer(t, be1IP)
	provider := listenPeer(t, providerIP)
	phone := listenPeer(t, phoneIP)
	zone := testkit.StartDNS(t, net.JoinHostPort(dnsIP, strconv.Itoa(testkit.FreePort(t, dnsIP))))
	_, provPort, _ := net.SplitHostPort(provider.addr())
	zone.Set(t,
		"sbc.provider.test. 60 IN A "+providerIP,
		"_sip._udp.provider.test. 60 IN SRV 10 0 "+provPort+" sbc.provider.test.",
		"phone.test. 60 IN A "+phoneIP,
	)
	dnsAddr := zone.Addr
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dnsAddr)
	}}
	be := Backend{Name: "asterisk1", Address: backend.addr(), Transport: "udp"}
	trunks := WithTrunks(&fakeTrunks{hosts: []TrunkHost{{Addr: netip.MustParseAddrPort(provider.addr()), Transport: "udp"}}})
	pa := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{"asterisk1"}, false), nil,
		WithDialogSecret(twinSecret), trunks, quiet, func(p *Proxy) { p.resolver = resolver })
	_, phonePort, _ := net.SplitHostPort(phone.addr())

	for _, c := range []struct {
		name, ruri string
		to         *peer
		aliased    bool
	}{
		{"ACL address", "sip:4930999@" + provider.addr(), provider, true},
		{"DNS name", "sip:4930999@sbc.provider.test:" + provPort, provider, true},
		{"SRV domain", "sip:4930999@provider.test", provider, true},
		{"a phone's DNS name", "sip:202@phone.test:" + phonePort, phone, false},
	} {
		for _, method := range []string{"INVITE", "UPDATE"} {
			callID := "in-dialog-" + strings.ReplaceAll(c.name, " ", "-") + "-" + method
			backend.send(pa.addr, sipRequest(method, c.ruri, callID, "f1", "callee", "<sip:"+pa.addr+";lr>"))
			got, from := c.to.recv(method, 5*time.Second)
			m := contactRE.FindStringSubmatch(got)
			switch {
			case m == nil:
				t.Errorf("%s, %s: no Contact:\n%s", c.name, method, got)
			case c.aliased && !strings.HasPrefix(m[1], "sip:201@"+pa.addr+";"+contactParam+"="):
				t.Errorf("%s, %s: the provider sees Contact %s, want hapbx's alias", c.name, method, m[1])
			case !c.aliased && m[1] != "sip:201@"+backend.addr():
				t.Errorf("%s, %s: Contact %s, want the backend's own", c.name, method, m[1])
			}
			c.to.answer(got, from, "200 OK")
			if res := finalResponse(t, backend, callID); !strings.HasPrefix(res, "SIP/2.0 200 ") {
				t.Errorf("%s, %s: the backend got %q", c.name, method, statusLine(res))
			}
		}
	}
}
