package media

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
)

const richOffer = "v=0\r\n" +
	"o=alice 2890844526 2890844527 IN IP4 192.168.1.20\r\n" +
	"s=call\r\n" +
	"c=IN IP4 192.168.1.20\r\n" +
	"t=0 0\r\n" +
	"m=audio 49170 RTP/AVP 0 8 101\r\n" +
	"a=rtpmap:0 PCMU/8000\r\n" +
	"a=rtpmap:8 PCMA/8000\r\n" +
	"a=rtpmap:101 telephone-event/8000\r\n" +
	"a=fmtp:101 0-16\r\n" +
	"a=rtcp:53020 IN IP4 192.168.1.21\r\n" +
	"a=candidate:1 1 UDP 2130706431 192.168.1.20 49170 typ host\r\n" +
	"a=sendrecv\r\n" +
	"m=video 51372 RTP/AVP 96\r\n" +
	"c=IN IP4 192.168.1.22\r\n" +
	"a=rtpmap:96 H264/90000\r\n" +
	"a=rtcp:51999\r\n" +
	"m=audio 0 RTP/AVP 0\r\n"

func TestParseSDP(t *testing.T) {
	_, infos, err := parseSDP([]byte(richOffer))
	if err != nil {
		t.Fatal(err)
	}
	want := []streamInfo{
		{rtp: netip.MustParseAddrPort("192.168.1.20:49170"), rtcp: netip.MustParseAddrPort("192.168.1.21:53020"), clock: 8000},
		{rtp: netip.MustParseAddrPort("192.168.1.22:51372"), rtcp: netip.MustParseAddrPort("192.168.1.22:51999"), clock: 90000},
		{disabled: true},
	}
	if len(infos) != len(want) {
		t.Fatalf("%d streams, want %d", len(infos), len(want))
	}
	for i := range want {
		if infos[i] != want[i] {
			t.Errorf("stream %d = %+v, want %+v", i, infos[i], want[i])
		}
	}
}

func TestRewriteSDP(t *testing.T) {
	sd, infos, err := parseSDP([]byte(richOffer))
	if err != nil {
		t.Fatal(err)
	}
	out, err := rewriteSDP(sd, infos, netip.MustParseAddr("203.0.113.5"), []int{20000, 20004, 20008})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, leak := range []string{"192.168.1."} {
		if strings.Contains(s, leak) {
			t.Errorf("rewritten SDP still holds %q:\n%s", leak, s)
		}
	}
	for _, want := range []string{
		"o=alice 2890844526 2890844527 IN IP4 203.0.113.5\r\n",
		"c=IN IP4 203.0.113.5\r\n",
		"m=audio 20000 RTP/AVP 0 8 101\r\n",
		"a=rtcp:20001 IN IP4 203.0.113.5\r\n",
		"a=fmtp:101 0-16\r\n",
		"a=sendrecv\r\n",
		"m=video 20004 RTP/AVP 96\r\n",
		"a=rtcp:20005\r\n",
		"a=rtpmap:96 H264/90000\r\n",
		"m=audio 0 RTP/AVP 0\r\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rewritten SDP lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "a=candidate") {
		t.Errorf("ICE candidate left in:\n%s", s)
	}
}

func TestRewriteHoldKeepsZeroAddress(t *testing.T) {
	body := "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"
	sd, infos, err := parseSDP([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if !infos[0].hold || infos[0].rtp.IsValid() {
		t.Fatalf("info = %+v, want hold without endpoint", infos[0])
	}
	out, err := rewriteSDP(sd, infos, netip.MustParseAddr("203.0.113.5"), []int{20000})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "c=IN IP4 0.0.0.0\r\n") || !strings.Contains(string(out), "a=sendonly") {
		t.Fatalf("hold lost:\n%s", out)
	}
}

func TestParseSDPErrors(t *testing.T) {
	base := "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n"
	for name, body := range map[string]string{
		"empty":         "",
		"no media":      base + "c=IN IP4 10.0.0.1\r\nt=0 0\r\n",
		"no c= line":    base + "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
		"ipv6":          base + "c=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
		"multicast":     base + "c=IN IP4 224.2.1.1/127\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
		"hostname":      base + "c=IN IP4 pbx.example.com\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
		"bad rtcp attr": base + "c=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n",
		"binary":        "\x00\x01\x02",
		"too many m=":   base + "c=IN IP4 10.0.0.1\r\nt=0 0\r\n" + strings.Repeat("m=audio 4000 RTP/AVP 0\r\n", 9),
	} {
		if _, _, err := parseSDP([]byte(body)); !errors.Is(err, ErrBadSDP) {
			t.Errorf("%s: err = %v, want ErrBadSDP", name, err)
		}
	}
}

// FuzzAnchorSDP feeds arbitrary bodies to the parser and rewriter: never a
// panic, and a body that is accepted comes out pointing only at the relay.
func FuzzAnchorSDP(f *testing.F) {
	f.Add([]byte(richOffer))
	f.Add([]byte("v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"))
	f.Add([]byte("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\na=rtcp:4001\r\n"))
	f.Add([]byte("garbage"))
	f.Add([]byte(heldAndDisabled))
	f.Add([]byte("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\na=ice-lite\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\na=rtcp:4000\r\nm=audio 0 RTP/AVP 0\r\na=rtcp:9 IN IP4 10.0.0.1\r\n"))
	relay := netip.MustParseAddr("203.0.113.5")
	f.Fuzz(func(t *testing.T, body []byte) {
		sd, infos, err := parseSDP(body)
		if err != nil {
			if !errors.Is(err, ErrBadSDP) {
				t.Fatalf("error %v is not ErrBadSDP", err)
			}
			return
		}
		ports := make([]int, len(infos))
		for i := range ports {
			ports[i] = 20000 + 2*i
		}
		out, err := rewriteSDP(sd, infos, relay, ports)
		if err != nil {
			return
		}
		var back sdp.SessionDescription
		if err := back.Unmarshal(out); err != nil {
			t.Fatalf("rewritten SDP does not parse: %v\n%q", err, out)
		}
		if back.Origin.UnicastAddress != relay.String() {
			t.Fatalf("origin %q is not the relay\n%q", back.Origin.UnicastAddress, out)
		}
		for i, md := range back.MediaDescriptions {
			for _, a := range append(md.Attributes, back.Attributes...) {
				if iceAttrs[a.Key] || a.Key == "rtcp-mux" {
					t.Fatalf("m= line %d keeps a=%s\n%q", i, a.Key, out)
				}
				if a.Key == "rtcp" && (infos[i].disabled || !strings.HasPrefix(a.Value+" ", strconv.Itoa(ports[i]+1)+" ")) {
					t.Fatalf("m= line %d a=rtcp:%s, want port %d (none if disabled)\n%q", i, a.Value, ports[i]+1, out)
				}
			}
			if infos[i].disabled {
				continue
			}
			if md.MediaName.Port.Value != ports[i] {
				t.Fatalf("m= line %d port %d, want %d", i, md.MediaName.Port.Value, ports[i])
			}
			if infos[i].hold {
				continue
			}
			ci := md.ConnectionInformation
			if ci == nil {
				ci = back.ConnectionInformation
			}
			if ci == nil || ci.Address == nil || ci.Address.Address != relay.String() {
				t.Fatalf("m= line %d connection %v is not the relay\n%q", i, ci, out)
			}
		}
	})
}

// FuzzValidRTP checks the cheap header check against pion/rtp: whatever the
// relay accepts as RTP must be a packet pion/rtp can parse.
func FuzzValidRTP(f *testing.F) {
	f.Add(rtpPacket(1, 160, 42, 160))
	f.Add([]byte{0x90, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 1, 2, 3, 4})
	f.Add([]byte{0xa0, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9, 9, 2})
	f.Add([]byte{0x80, 200, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if !validRTP(b) {
			return
		}
		// The relay forwards header extensions as opaque bytes (RFC 3550);
		// pion/rtp also checks RFC 8285 element framing inside them. Give it an
		// opaque profile so the comparison is about the RTP framing only.
		c := append([]byte(nil), b...)
		if c[0]&0x10 != 0 {
			x := 12 + 4*int(c[0]&0x0f)
			c[x], c[x+1] = 0x12, 0x34
		}
		var p rtp.Packet
		if err := p.Unmarshal(c); err != nil {
			t.Fatalf("validRTP accepted %x but pion/rtp says %v", b, err)
		}
		var d dirStats
		d.rtpSeen(b, 1e9)
		d.rtpSeen(b, 2e9)
	})
}

func TestRTPStatsLossAndJitter(t *testing.T) {
	var d dirStats
	d.clock = 8000
	// 100 packets, 20 ms apart, seq 1..100 with 5 lost and a wrap in the middle.
	seq := uint16(65500)
	for i := range 105 {
		seq++
		if i%21 == 10 {
			continue // lost
		}
		arrival := int64(i) * 20e6
		if i%2 == 1 {
			arrival += 2e6 // 2 ms alternating delay: jitter
		}
		d.rtpSeen(rtpPacket(seq, uint32(i*160), 7, 160), arrival)
	}
	if got := d.lost(); got != 5 {
		t.Errorf("lost = %d, want 5", got)
	}
	if j := d.jitterMs(); j < 1 || j > 3 {
		t.Errorf("jitter = %.2f ms, want about 2 ms", j)
	}
}

// heldAndDisabled has a held audio stream and a disabled video stream that
// both still name the phone in a=rtcp, ICE attributes and c=, and an IPv6
// origin: none of it may reach the other leg.
const heldAndDisabled = "v=0\r\n" +
	"o=bob 1 2 IN IP6 2001:db8::7\r\n" +
	"s=-\r\n" +
	"c=IN IP4 0.0.0.0\r\n" +
	"t=0 0\r\n" +
	"a=ice-ufrag:F7gI\r\n" +
	"a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n" +
	"a=ice-options:trickle\r\n" +
	"m=audio 49170 RTP/AVP 0\r\n" +
	"a=rtcp:49171 IN IP4 192.168.1.20\r\n" +
	"a=candidate:1 1 UDP 2130706431 192.168.1.20 49170 typ host\r\n" +
	"a=candidate:2 1 UDP 1694498815 198.51.100.9 61000 typ srflx raddr 192.168.1.20 rport 49170\r\n" +
	"a=remote-candidates:1 198.51.100.9 61000\r\n" +
	"a=ice-ufrag:m1\r\n" +
	"a=ice-pwd:m1pwdm1pwdm1pwdm1pwdm1\r\n" +
	"a=end-of-candidates\r\n" +
	"a=sendonly\r\n" +
	"m=video 0 RTP/AVP 96\r\n" +
	"c=IN IP4 192.168.1.20\r\n" +
	"a=rtcp:51373 IN IP4 192.168.1.20\r\n" +
	"a=candidate:1 1 UDP 2130706431 192.168.1.20 51372 typ host\r\n" +
	"a=rtpmap:96 H264/90000\r\n"

func TestRewriteHeldAndDisabledLeaveNoPhoneAddress(t *testing.T) {
	sd, infos, err := parseSDP([]byte(heldAndDisabled))
	if err != nil {
		t.Fatal(err)
	}
	if !infos[0].hold || !infos[1].disabled {
		t.Fatalf("infos = %+v, want held audio and disabled video", infos)
	}
	out, err := rewriteSDP(sd, infos, netip.MustParseAddr("203.0.113.5"), []int{20000, 20004})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, leak := range []string{"192.168.1.20", "198.51.100.9", "2001:db8", "49170", "49171", "51373", "a=candidate", "a=ice-", "a=remote-candidates", "a=end-of-candidates"} {
		if strings.Contains(s, leak) {
			t.Errorf("rewritten SDP still holds %q:\n%s", leak, s)
		}
	}
	for _, want := range []string{
		"o=bob 1 2 IN IP4 203.0.113.5\r\n",
		"c=IN IP4 0.0.0.0\r\n", // hold still means hold
		"m=audio 20000 RTP/AVP 0\r\n",
		"a=rtcp:20001 IN IP4 203.0.113.5\r\n",
		"a=sendonly\r\n",
		"m=video 0 RTP/AVP 96\r\n",
		"c=IN IP4 203.0.113.5\r\n",
		"a=rtpmap:96 H264/90000\r\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rewritten SDP lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "a=rtcp:") != 1 {
		t.Errorf("a=rtcp left on the disabled stream:\n%s", s)
	}
}

// TestRewriteStripsRTCPMux: the relay drops RTCP on its RTP ports, so a
// rewritten offer or answer must not let the peers agree on RFC 5761 mux.
func TestRewriteStripsRTCPMux(t *testing.T) {
	body := "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n" +
		"m=audio 4000 RTP/AVP 0\r\na=rtcp:4000\r\na=rtcp-mux\r\na=rtcp-mux-only\r\na=sendrecv\r\n"
	sd, infos, err := parseSDP([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	out, err := rewriteSDP(sd, infos, netip.MustParseAddr("203.0.113.5"), []int{20000})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if strings.Contains(s, "a=rtcp-mux") {
		t.Errorf("a=rtcp-mux passed on:\n%s", s)
	}
	for _, want := range []string{"m=audio 20000 RTP/AVP 0\r\n", "a=rtcp:20001\r\n", "a=sendrecv\r\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("rewritten SDP lacks %q:\n%s", want, s)
		}
	}
}
