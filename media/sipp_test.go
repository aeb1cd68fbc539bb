package media

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestSIPpMediaThroughRelay runs two real SIPp peers: a UAC that plays a
// G.711 pcap (the caller, leg A) and a UAS that echoes RTP (the callee, leg
// B). The relay is driven with the SDP bodies the scenarios exchange: the
// UAS answers with the SDP the relay rewrote for A, so the UAC plays into
// the relay, the relay forwards to the UAS's echo port, and the echo comes
// back through the relay to wherever the UAC really sends from (latched:
// the offer deliberately names a wrong port, as a NAT would).
func TestSIPpMediaThroughRelay(t *testing.T) {
	testkit.RequireSIPp(t) // fails in CI, which installs it
	pcapG711a := testkit.RequirePCAP(t)
	r, _ := newTestRelay(t, "30000-30099", nil)
	const ip = "127.0.0.1"
	sipUAS := testkit.FreePorts(t, ip, 1)
	sipUAC := testkit.FreePorts(t, ip, 1)
	uasMedia := testkit.FreePorts(t, ip, 4) // -rtp_echo binds mp and mp+2
	uacMedia := testkit.FreePorts(t, ip, 4)

	// Leg A's offer as the UAC scenario sends it, but with the port a NAT
	// would have rewritten away: the relay must latch the real source.
	offerA := fmt.Sprintf("v=0\r\no=user1 53655765 2353687637 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n", ip, ip, 9)
	if _, err := r.Anchor("sipp-call", true, []byte(offerA)); err != nil {
		t.Fatal(err)
	}
	answerB := fmt.Sprintf("v=0\r\no=user1 53655765 2353687637 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n", ip, ip, uasMedia)
	toA, err := r.Anchor("sipp-call", false, []byte(answerB))
	if err != nil {
		t.Fatal(err)
	}
	relayPortForA := sdpPort(t, toA)

	scenario := func(name string) string { p, _ := filepath.Abs(filepath.Join("testdata", name)); return p }
	uas := testkit.StartSIPp(t, ip, sipUAS, "-sf", scenario("uas_relay.xml"),
		"-mi", ip, "-mp", strconv.Itoa(uasMedia), "-rtp_echo",
		"-key", "relay_ip", ip, "-key", "relay_port", strconv.Itoa(int(relayPortForA)),
		"-m", "1", "-timeout", "30", "-timeout_error")
	testkit.WaitListening(t, "udp", uas.Addr, 5*time.Second) // the UAS bound before the INVITE
	uac := testkit.StartSIPp(t, ip, sipUAC, "-sf", scenario("uac_media.xml"), uas.Addr, "-s", "echo",
		"-mi", ip, "-mp", strconv.Itoa(uacMedia), "-key", "pcap", pcapG711a,
		"-m", "1", "-timeout", "30", "-timeout_error")
	if code := uac.Wait(40 * time.Second); code != 0 {
		t.Fatalf("sipp UAC failed (exit %d)\n%s\nUAS: %s", code, uac.Output(), uas.Output())
	}
	if code := uas.Wait(10 * time.Second); code != 0 {
		t.Fatalf("sipp UAS failed (exit %d)\n%s", code, uas.Output())
	}

	snap := r.Snapshot()
	if len(snap) != 1 {
		t.Fatalf("sessions: %+v", snap)
	}
	st := snap[0].Streams[0]
	t.Logf("from A (UAC pcap): %+v", st.FromA)
	t.Logf("from B (UAS echo): %+v", st.FromB)
	if st.FromA.Packets < 50 || st.FromB.Packets < 50 {
		t.Fatalf("media did not flow both ways: A->B %d, B->A %d packets", st.FromA.Packets, st.FromB.Packets)
	}
	if st.FromA.Latched.Port() == 9 || !st.FromA.Latched.IsValid() {
		t.Fatalf("leg A not latched to its real source: %s", st.FromA.Latched)
	}
	if st.FromB.Latched != netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(uasMedia)) {
		t.Fatalf("leg B latched %s, want the UAS echo port %d", st.FromB.Latched, uasMedia)
	}
	if st.FromA.NoDest+st.FromB.NoDest+st.FromA.SendErrors+st.FromB.SendErrors != 0 {
		t.Fatalf("packets dropped in the relay: %+v %+v", st.FromA, st.FromB)
	}
	// The echo of every relayed packet came back: loss is only what the pcap
	// itself skips, the counts of both directions match closely.
	if d := int64(st.FromA.Packets) - int64(st.FromB.Packets); d > 5 || d < -5 {
		t.Fatalf("echo count differs: A->B %d, B->A %d", st.FromA.Packets, st.FromB.Packets)
	}
	if err := r.Release("sipp-call", "bye"); err != nil {
		t.Fatal(err)
	}
}
