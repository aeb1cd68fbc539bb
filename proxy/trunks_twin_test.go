package proxy

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// trunkTwins runs the proxies of a pair, with trunk p1 at provider, one
// after the other on one address (the VIP), backend at beAddr.
type trunkTwins struct {
	t      *testing.T
	be     Backend
	trunks Option
	port   int
}

func newTrunkTwins(t *testing.T, beAddr string, provider *peer) *trunkTwins {
	return &trunkTwins{
		t:      t,
		be:     Backend{Name: "asterisk1", Address: beAddr, Transport: "udp"},
		trunks: WithTrunks(&fakeTrunks{hosts: []TrunkHost{{Addr: netip.MustParseAddrPort(provider.addr()), Transport: "udp"}}}),
		port:   testkit.FreePort(t, proxyIP),
	}
}

func (tw *trunkTwins) addr() string { return net.JoinHostPort(proxyIP, strconv.Itoa(tw.port)) }

func (tw *trunkTwins) start() *testProxy {
	return startProxyWith(tw.t, []string{"udp"}, []Backend{tw.be}, NewStaticRouter([]string{tw.be.Name}, false), func(c *Config) {
		c.Listen = []string{"udp://" + tw.addr()}
	}, WithDialogSecret(twinSecret), tw.trunks, quiet)
}

// viaBranch is the branch of msg's top Via.
func viaBranch(t *testing.T, msg string) string {
	t.Helper()
	m, err := sip.ParseMessage([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.Via().Params.Get("branch")
	return b
}

// TestTrunkTwinSendsSameAuthorizedBranch: Asterisk's INVITE to a trunk
// had no provisional when the VIP holder died after answering the
// provider's 407; the twin forwards Asterisk's retransmission with the
// branch the provider challenged, gets the challenge again and answers it
// with the branch of the dead proxy's authorized INVITE: the provider sees
// retransmissions, not a second call.
func TestTrunkTwinSendsSameAuthorizedBranch(t *testing.T) {
	backend := listenPeer(t, be1IP)
	provider := listenPeer(t, providerIP)
	tw := newTrunkTwins(t, backend.addr(), provider)
	first := tw.start()
	invite := strings.ReplaceAll(withTrunkHeader(sipRequest("INVITE", "sip:4930999@"+tw.addr(), "trunk-twin-retrans", "f1", ""), "p1"), "PEER", backend.addr())

	backend.send(tw.addr(), invite)
	challenged, from := provider.recv("INVITE", 5*time.Second)
	provider.answer(challenged, from, "407 Proxy Authentication Required")
	authorized, _ := provider.recv("INVITE", 5*time.Second)
	if !strings.Contains(authorized, "Proxy-Authorization: ") {
		t.Fatalf("the INVITE sent again is not authorized:\n%s", authorized)
	}
	first.close()

	tw.start()
	backend.send(tw.addr(), invite) // Asterisk's retransmission
	again, from := provider.recv("INVITE", 5*time.Second)
	if got, want := viaBranch(t, again), viaBranch(t, challenged); got != want {
		t.Fatalf("the twin forwarded the retransmission with branch %s, the dead proxy with %s", got, want)
	}
	provider.answer(again, from, "407 Proxy Authentication Required") // the provider's retransmission of its 407
	authorizedAgain, _ := provider.recv("INVITE", 5*time.Second)
	if got, want := viaBranch(t, authorizedAgain), viaBranch(t, authorized); got != want {
		t.Fatalf("the twin answered the challenge with branch %s, the dead proxy with %s: a new transaction for the provider", got, want)
	}
	if !strings.Contains(authorizedAgain, "CSeq: 3 INVITE") {
		t.Errorf("the twin's authorized INVITE has not the raised CSeq 3:\n%s", authorizedAgain)
	}
}

// TestTrunkTwinForwardsAuthorizedAnswer: Asterisk (SIPp) calls out through
// the trunk; the VIP holder answers the provider's 407 and relays its 180,
// then dies. The provider's 200 to the authorized INVITE reaches the twin,
// which has no transaction for it and forwards it as a stray, with the CSeq
// of Asterisk's INVITE; Asterisk's ACK reaches the provider with the CSeq of
// the authorized INVITE, and the provider's BYE reaches Asterisk, all
// through the twin.
func TestTrunkTwinForwardsAuthorizedAnswer(t *testing.T) {
	testkit.RequireSIPp(t)
	provider := listenPeer(t, providerIP)
	bePort := testkit.FreePort(t, be1IP)
	tw := newTrunkTwins(t, net.JoinHostPort(be1IP, strconv.Itoa(bePort)), provider)
	first := tw.start()
	asterisk := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("trunk_backend_uac.xml"),
		"-s", "4930999", "-m", "1", "-timeout", "20s", "-timeout_error", "-trace_msg", tw.addr())

	challenged, from := provider.recv("INVITE", 5*time.Second)
	provider.answer(challenged, from, "407 Proxy Authentication Required")
	authorized, from := provider.recv("INVITE", 5*time.Second)
	if !strings.Contains(authorized, "CSeq: 2 INVITE") || !strings.Contains(authorized, "Proxy-Authorization: ") {
		t.Fatalf("the INVITE sent again is not authorized with CSeq 2:\n%s", authorized)
	}
	provider.answer(authorized, from, "180 Ringing")
	testkit.Eventually(t, 5*time.Second, "180 relayed to Asterisk", func() bool {
		return testutil.ToFloat64(first.m.responses.WithLabelValues("INVITE", "180")) == 1
	})
	first.close() // SIGKILL: the twin takes the VIP

	twin := tw.start()
	provider.answerWithContact(authorized, from, "sip:4930999@"+provider.addr())
	testkit.Eventually(t, 5*time.Second, "first copy of the provider's 200 held", func() bool {
		return testutil.ToFloat64(twin.m.strays.WithLabelValues("held")) == 1
	})
	provider.answerWithContact(authorized, from, "sip:4930999@"+provider.addr()) // its retransmission: no ACK came

	ack, _ := provider.recv("ACK", 5*time.Second)
	for viaBranch(t, ack) == viaBranch(t, challenged) { // the first proxy's ACK of the 407, late
		ack, _ = provider.recv("ACK", 5*time.Second)
	}
	if !strings.Contains(ack, "CSeq: 2 ACK") {
		t.Errorf("Asterisk's ACK reached the provider without the authorized INVITE's CSeq 2:\n%s", ack)
	}
	// The provider hangs up, to the Contact it saw (the VIP's alias).
	m := contactRE.FindStringSubmatch(authorized)
	if m == nil {
		t.Fatalf("no Contact in:\n%s", authorized)
	}
	req, err := sip.ParseMessage([]byte(authorized))
	if err != nil {
		t.Fatal(err)
	}
	inv := req.(*sip.Request)
	callID := inv.CallID().Value()
	bye := strings.Replace(calleeRequest(t, "BYE", m[1], callID, authorized), ";tag=f1", ";tag="+tagOf(inv.From().Params), 1)
	provider.send(tw.addr(), bye)
	if res := finalResponse(t, provider, callID); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("the provider's BYE: %q", statusLine(res))
	}
	if code := asterisk.Wait(20 * time.Second); code != 0 {
		t.Fatalf("Asterisk's call out through the trunk failed (exit %d)\n%s", code, asterisk.Output())
	}
	// Asterisk sent CSeq 1 only: a CSeq 2 INVITE in its trace is the
	// provider's 200 with the authorized INVITE's CSeq.
	if trace := asterisk.Trace(); strings.Contains(trace, "CSeq: 2 INVITE") {
		t.Errorf("the provider's 200 reached Asterisk without the CSeq of its INVITE, 1:\n%s", trace)
	}
	if got := testutil.ToFloat64(twin.m.strays.WithLabelValues("forwarded")); got != 1 {
		t.Errorf("hapbx_proxy_stray_responses_total{outcome=forwarded} = %v, want 1 (the provider's 200)", got)
	}
}
