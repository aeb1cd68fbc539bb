package proxy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
)

var _ mediaJoiner = (*media.Relay)(nil)

// bridgedCall is phone 201 (SIPp, the caller) calling phone 202 (SIPp,
// echoing RTP) through hapbx and a test B2BUA standing in for Asterisk with
// the shipped dialplan.
type bridgedCall struct {
	p              *testProxy
	relay          *media.Relay
	b2b            *testkit.B2BUA
	caller, callee *testkit.SIPp
}

// bridgedSetup: the relay's ports, the scenarios of 201 (uac, with
// callerArgs) and 202 (uas, answering with calleeCodec: pt, name); when
// transcode is set, the B2BUA's offer to 202 (formats, rtpmap line); with
// trunk, 202 is a provider that the B2BUA dials through hapbx's trunk p1.
type bridgedSetup struct {
	ports, uac, uas        string
	calleeCodec, transcode [2]string
	callerArgs             []string
	trunk                  bool
	pbxHeaders             []string // name, value pairs on the B2BUA's outgoing INVITE
}

func startBridgedCall(t *testing.T, s bridgedSetup) *bridgedCall {
	t.Helper()
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	relay := startRelay(t, s.ports, prometheus.NewRegistry())
	calleeIP := phoneIP
	opts := []Option{WithMediaAnchor(relay)}
	if s.trunk {
		calleeIP = providerIP
	}
	calleePort := testkit.FreePort(t, calleeIP)
	if s.trunk {
		host := netip.AddrPortFrom(netip.MustParseAddr(providerIP), uint16(calleePort))
		opts = append(opts, WithTrunks(&fakeTrunks{hosts: []TrunkHost{{Addr: host, Transport: "udp"}}}))
	}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, opts...)
	target := fmt.Sprintf("sip:202@%s:%d", phoneIP, calleePort)
	if s.trunk {
		target = "sip:4930@" + p.addr
	}
	b2b := testkit.StartB2BUA(t, be1IP, bePort, p.addr, target)
	b2b.Transcode(s.transcode[0], s.transcode[1])
	if s.trunk {
		b2b.Header(TrunkHeader, "p1")
	}
	for i := 0; i+1 < len(s.pbxHeaders); i += 2 {
		b2b.Header(s.pbxHeaders[i], s.pbxHeaders[i+1])
	}
	callee := testkit.StartSIPp(t, calleeIP, calleePort, "-sf", scenario(s.uas),
		"-mi", calleeIP, "-mp", strconv.Itoa(testkit.FreePorts(t, calleeIP, 4)), "-rtp_echo",
		"-key", "pt", s.calleeCodec[0], "-key", "codec", s.calleeCodec[1], "-m", "1", "-timeout", "40", "-timeout_error")
	testkit.WaitListening(t, "udp", callee.Addr, 5*time.Second)
	args := append([]string{"-sf", scenario(s.uac), "-s", "300", "-mi", phoneIP, "-mp", strconv.Itoa(testkit.FreePorts(t, phoneIP, 4)),
		"-m", "1", "-timeout", "40", "-timeout_error"}, s.callerArgs...)
	caller := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), append(args, p.addr)...)
	return &bridgedCall{p: p, relay: relay, b2b: b2b, caller: caller, callee: callee}
}

// packets are what the relay received from each phone: 201 (leg A of the
// incoming call) and 202 (leg B of the B2BUA's outgoing call).
func (c *bridgedCall) packets() (from201, from202, sendErrors uint64) {
	for _, s := range c.relay.Snapshot() {
		if len(s.Streams) == 0 {
			continue
		}
		st := s.Streams[0]
		if strings.HasPrefix(s.CallID, "b2b-") {
			from202, sendErrors = st.FromB.Packets, sendErrors+st.FromB.SendErrors
		} else {
			from201, sendErrors = st.FromA.Packets, sendErrors+st.FromA.SendErrors
		}
	}
	return
}

func (c *bridgedCall) wait(t *testing.T) {
	t.Helper()
	if code := c.caller.Wait(30 * time.Second); code != 0 {
		t.Fatalf("phone 201 exit %d\n%s\nphone 202: %s", code, c.caller.Output(), c.callee.Output())
	}
	if code := c.callee.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone 202 exit %d\n%s", code, c.callee.Output())
	}
}

// TestBridgedCallSurvivesBackendDeath: 201 calls 202 through a PBX that
// bridges the two legs; the PBX is killed mid-call. hapbx joins the
// phones' media in the relay: 201's audio (pcap) keeps reaching 202, whose
// echo keeps reaching 201, through the same relay ports; 201's hold,
// resume, session refresh and OPTIONS are answered by hapbx; 201's BYE
// ends both sides.
func TestBridgedCallSurvivesBackendDeath(t *testing.T) {
	pcap := testkit.RequirePCAP(t)
	c := startBridgedCall(t, bridgedSetup{ports: "34300-34363", uac: "uac_joined.xml", uas: "uas_joined.xml",
		calleeCodec: [2]string{"8", "PCMA"}, callerArgs: []string{"-key", "pcap", pcap}})
	if !testkit.Poll(10*time.Second, func() bool { a, b, _ := c.packets(); return a > 20 && b > 20 }) {
		t.Fatalf("no audio both ways through the PBX: relay %+v, %d dialogs\nphone 201: %s\nphone 202: %s", c.relay.Snapshot(), c.p.dialogs.len(), c.caller.Output(), c.callee.Output())
	}
	if c.p.dialogs.len() != 2 {
		t.Fatalf("%d dialogs confirmed, want 2", c.p.dialogs.len())
	}
	c.b2b.Kill()
	if n := c.p.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 0 {
		t.Fatalf("HangUpBackend hung up %d dialogs, want 0 (the bridged call kept up)", n)
	}
	if got := testutil.ToFloat64(c.p.takeovers.joined); got != 1 {
		t.Fatalf("hapbx_proxy_calls_joined_total = %v, want 1", got)
	}
	a0, b0, e0 := c.packets()
	testkit.Eventually(t, 10*time.Second, "audio both ways after the PBX died", func() bool {
		a, b, _ := c.packets()
		return a > a0+50 && b > b0+50
	})
	if _, _, e := c.packets(); e != e0 {
		t.Errorf("relay send errors after the join: %d, before %d", e, e0)
	}
	c.wait(t)
	if got := testutil.ToFloat64(c.p.takeovers.ended.WithLabelValues(joinEndBye)); got != 1 {
		t.Errorf("hapbx_proxy_joined_calls_ended_total{reason=bye} = %v, want 1", got)
	}
	if n := c.p.takeovers.len(); n != 0 {
		t.Errorf("%d joined calls left", n)
	}
	if s := c.relay.Snapshot(); len(s) != 0 {
		t.Errorf("relay sessions left: %+v", s)
	}
}

// TestBridgedTrunkCallSurvives: the PBX bridges a phone to a provider
// reached through hapbx's trunk; when it dies the phone and the provider
// keep talking through the relay, and the phone's BYE reaches the provider.
func TestBridgedTrunkCallSurvives(t *testing.T) {
	pcap := testkit.RequirePCAP(t)
	c := startBridgedCall(t, bridgedSetup{ports: "34556-34599", uac: "uac_joined.xml", uas: "uas_joined.xml",
		calleeCodec: [2]string{"8", "PCMA"}, callerArgs: []string{"-key", "pcap", pcap}, trunk: true})
	c.joinAfterAudio(t)
	a0, b0, _ := c.packets()
	testkit.Eventually(t, 10*time.Second, "audio both ways after the PBX died", func() bool {
		a, b, _ := c.packets()
		return a > a0+50 && b > b0+50
	})
	c.wait(t)
	if got := testutil.ToFloat64(c.p.takeovers.ended.WithLabelValues(joinEndBye)); got != 1 {
		t.Errorf("hapbx_proxy_joined_calls_ended_total{reason=bye} = %v, want 1", got)
	}
}

// TestBridgedCallCodecMismatchHungUp: a PBX that transcodes (201 talks
// PCMU, 202 PCMA) cannot be replaced by the relay: both phones get a BYE.
func TestBridgedCallCodecMismatchHungUp(t *testing.T) {
	c := startBridgedCall(t, bridgedSetup{ports: "34364-34427", uac: "uac_wait_bye.xml", uas: "uas_joined.xml",
		calleeCodec: [2]string{"8", "PCMA"}, transcode: [2]string{"8", "rtpmap:8 PCMA/8000"}})
	testkit.Eventually(t, 10*time.Second, "both dialogs confirmed", func() bool { return c.p.dialogs.len() == 2 })
	c.b2b.Kill()
	if n := c.p.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 2 {
		t.Fatalf("HangUpBackend hung up %d dialogs, want 2", n)
	}
	if got := testutil.ToFloat64(c.p.takeovers.refuse.WithLabelValues("codec")); got != 1 {
		t.Errorf("hapbx_proxy_calls_join_refused_total{reason=codec} = %v, want 1", got)
	}
	c.wait(t)
}

// joinAfterAudio waits for audio through the PBX, kills it and checks that
// hapbx kept the call up.
func (c *bridgedCall) joinAfterAudio(t *testing.T) {
	t.Helper()
	if !testkit.Poll(10*time.Second, func() bool { a, b, _ := c.packets(); return a > 20 && b > 20 }) {
		t.Fatalf("no audio both ways through the PBX\nphone 201: %s\nphone 202: %s", c.caller.Output(), c.callee.Output())
	}
	c.b2b.Kill()
	if n := c.p.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 0 {
		t.Fatalf("HangUpBackend hung up %d dialogs, want 0 (the bridged call kept up)", n)
	}
}

// TestBridgedCallEndsAfterTakeover: after the PBX died and the caller's
// session refresh was answered, the call ends on both sides when the
// called phone hangs up (its BYE answered and passed on), also after hapbx
// refreshed the callee's session in place of the PBX that was its
// refresher, or when the caller, having refreshed with a 1 s interval
// (RFC 4028), stops refreshing (hapbx sends both phones a BYE).
func TestBridgedCallEndsAfterTakeover(t *testing.T) {
	pcap := testkit.RequirePCAP(t)
	for _, tc := range []struct {
		name, ports, uas, se, reason string
		pbxHeaders                   []string
	}{
		{"callee hangs up", "34428-34491", "uas_joined_bye.xml", "90;refresher=uac", joinEndBye, nil},
		{"session expires", "34492-34555", "uas_joined.xml", "1;refresher=uac", joinEndExpired, nil},
		// The PBX was the callee's refresher: hapbx refreshes in its place.
		{"hapbx refreshes the callee", "34800-34863", "uas_joined_refresh.xml", "90;refresher=uac", joinEndBye,
			[]string{"Session-Expires", "12;refresher=uac", "Supported", "timer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startBridgedCall(t, bridgedSetup{ports: tc.ports, uac: "uac_joined_wait.xml", uas: tc.uas,
				calleeCodec: [2]string{"8", "PCMA"}, callerArgs: []string{"-key", "pcap", pcap, "-key", "se", tc.se}, pbxHeaders: tc.pbxHeaders})
			c.joinAfterAudio(t)
			c.wait(t)
			if got := testutil.ToFloat64(c.p.takeovers.ended.WithLabelValues(tc.reason)); got != 1 {
				t.Errorf("hapbx_proxy_joined_calls_ended_total{reason=%s} = %v, want 1", tc.reason, got)
			}
		})
	}
}

// TestBridgeHeaderTrust: X-Hapbx-Bridge links two calls only on a
// backend's initial INVITE, and is removed from every request, so a phone
// neither sees it nor forges a link.
func TestBridgeHeaderTrust(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	p := startProxy(t, []Backend{be}, nil)
	for _, tc := range []struct {
		name, src, toTag string
		linked           bool
	}{
		{"phone's INVITE", phoneIP + ":5060", "", false},
		{"backend's re-INVITE", be.Address, "x", false},
		{"backend's INVITE", be.Address, "", true},
	} {
		req := parseRequest(t, "INVITE", "a", tc.toTag)
		req.AppendHeader(sip.NewHeader(BridgeHeader, "incoming-leg@test"))
		req.AppendHeader(sip.NewHeader(BridgeHeader, "second"))
		req.SetSource(tc.src)
		p.takeBridgeHeader(req)
		if h := req.GetHeader(BridgeHeader); h != nil {
			t.Errorf("%s: %s left on the request: %q", tc.name, BridgeHeader, h.Value())
		}
		other, ok := p.links.partner(req.CallID().Value())
		if ok != tc.linked || (ok && other != "incoming-leg@test") {
			t.Errorf("%s: link %q %v, want linked %v", tc.name, other, ok, tc.linked)
		}
		if back, ok := p.links.partner("incoming-leg@test"); ok != tc.linked || (ok && back != req.CallID().Value()) {
			t.Errorf("%s: reverse link %q %v, want linked %v", tc.name, back, ok, tc.linked)
		}
	}
}
