package proxy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestMediaReofferNotAnchorable488: a re-INVITE of an anchored call whose
// SDP the relay cannot take (IPv6, or a new stream with no ports left) is
// answered 488 and the call keeps its relay session; forwarded raw, it would
// have moved the call's media off the relay.
func TestMediaReofferNotAnchorable488(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"))
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	mreg := prometheus.NewRegistry()
	relay := startRelay(t, "23610-23613", mreg) // two port pairs: one stream
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, WithMediaAnchor(relay))
	addr := p.addr
	withSDP := func(m, sdp string) string {
		n := len(strings.ReplaceAll(sdp, "\n", "\r\n")) // rawRequest turns \n into \r\n
		return strings.Replace(m, "Content-Length: 0\n\n", fmt.Sprintf("Content-Type: application/sdp\nContent-Length: %d\n\n", n), 1) + sdp
	}
	const good = "v=0\no=- 1 1 IN IP4 10.9.9.9\ns=-\nc=IN IP4 10.9.9.9\nt=0 0\nm=audio 40000 RTP/AVP 0\n"
	invite := request("INVITE", "sip:202@"+addr, 70, "")
	first := rawRequest(t, addr, withSDP(invite, good), 5*time.Second)
	if !strings.HasPrefix(first, "SIP/2.0 200 ") {
		t.Fatalf("call: %q, want 200\n%s", statusLine(first), first)
	}
	toTag := regexp.MustCompile(`(?m)^To:.*;tag=([^;\r\n]+)`).FindStringSubmatch(first)
	if toTag == nil {
		t.Fatalf("no To tag in %q", first)
	}
	before := relay.Snapshot()
	if len(before) != 1 {
		t.Fatalf("relay sessions: %d, want 1", len(before))
	}
	reinvite := func(cseq int, sdp string) string {
		m := strings.Replace(invite, "To: <sip:202@"+addr+">", "To: <sip:202@"+addr+">;tag="+toTag[1], 1)
		m = strings.Replace(m, "CSeq: 1 INVITE", fmt.Sprintf("CSeq: %d INVITE", cseq), 1)
		m = regexp.MustCompile(`branch=z9hG4bK\d+`).ReplaceAllString(m, fmt.Sprintf("branch=z9hG4bKre%d", cseq))
		return withSDP(m, sdp)
	}
	for i, sdp := range map[string]string{
		"ipv6":        "v=0\no=- 1 2 IN IP6 2001:db8::9\ns=-\nc=IN IP6 2001:db8::9\nt=0 0\nm=audio 40000 RTP/AVP 0\n",
		"added video": good + "m=video 40002 RTP/AVP 96\na=rtpmap:96 H264/90000\n", // no ports left for it
	} {
		res := rawRequest(t, addr, reinvite(2+len(i), sdp), 5*time.Second)
		if !strings.HasPrefix(res, "SIP/2.0 488 ") {
			t.Fatalf("re-INVITE (%s): got %q, want 488", i, statusLine(res))
		}
	}
	after := relay.Snapshot()
	if len(after) != 1 || after[0].CallID != before[0].CallID || len(after[0].Streams) < 1 || after[0].Streams[0].Ports != before[0].Streams[0].Ports {
		t.Fatalf("relay session changed: before %+v, after %+v", before, after)
	}
	// The counter moves right after the response is sent: it may lag the
	// phone's receipt by a moment.
	testkit.Poll(2*time.Second, func() bool { return testutil.ToFloat64(p.m.responses.WithLabelValues("INVITE", "488")) >= 2 })
	if got := testutil.ToFloat64(p.m.responses.WithLabelValues("INVITE", "488")); got != 2 {
		t.Fatalf("488 responses = %v, want 2", got)
	}
	mfs, err := mreg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "hapbx_media_updates_refused_total" {
			for _, m := range mf.Metric {
				refused[m.Label[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if refused["bad_sdp"] != 1 || refused["no_ports"] != 1 {
		t.Fatalf("hapbx_media_updates_refused_total = %v, want bad_sdp 1, no_ports 1", refused)
	}
}

// sourceAnchor records the signalling source of each AnchorFrom.
type sourceAnchor struct{ got []netip.Addr }

func (a *sourceAnchor) AnchorFrom(_ string, _ bool, source netip.Addr, body []byte) ([]byte, error) {
	a.got = append(a.got, source)
	return body, nil
}

func (a *sourceAnchor) Release(string, string) error { return nil }

// TestAnchorPassesTransportSource: the relay accepts a leg's media from the
// address its SIP came from (a phone behind NAT), so the proxy passes the
// address the transport received the INVITE and the answer from, not the
// Via's (the NATed phone's private address) nor nothing.
func TestAnchorPassesTransportSource(t *testing.T) {
	fake := &sourceAnchor{}
	p := &Proxy{}
	WithMediaAnchor(fake)(p)
	req := parseRequest(t, "INVITE", "caller", "") // Via 127.0.0.9
	req.SetBody([]byte("v=0\r\n"))
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetSource("203.0.113.7:40123")
	if !p.anchorRequest(nil, req) {
		t.Fatal("INVITE not passed on")
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", []byte("v=0\r\n"))
	res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	res.SetSource("[::ffff:198.51.100.20]:5060")
	p.anchorResponse(req, res)
	want := []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.51.100.20")}
	if !slices.Equal(fake.got, want) {
		t.Fatalf("signalling sources passed: %v, want %v", fake.got, want)
	}
}
