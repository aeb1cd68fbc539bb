package media

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// sdpWith is an SDP naming ap with the given m= formats and attribute lines.
func sdpWith(ap netip.AddrPort, formats string, attrs ...string) []byte {
	s := fmt.Sprintf("v=0\r\no=- 7 7 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP %s\r\n", ap.Addr(), ap.Addr(), ap.Port(), formats)
	for _, a := range attrs {
		s += "a=" + a + "\r\n"
	}
	return []byte(s)
}

// recvPT waits for a packet from the relay and returns its payload type.
func recvPT(t *testing.T, src *phone, to netip.AddrPort, dst *phone) byte {
	t.Helper()
	for range 20 {
		src.sendRTP(to)
		if _, b, ok := dst.recv(100 * time.Millisecond); ok {
			return b[1] & 0x7f
		}
	}
	t.Fatalf("nothing relayed from %s via %s to %s", src.addr(), to, dst.addr())
	return 0
}

// TestJoinPhonesOfTwoCalls: two calls through a PBX (phone 1 calls in, the
// PBX calls phone 2 out) are joined: each phone keeps sending to its relay
// port, the other phone receives it, the PBX nothing; payload types follow
// each phone's own numbering; a re-offer is answered from the relay.
func TestJoinPhonesOfTwoCalls(t *testing.T) {
	r, _ := newTestRelay(t, "34200-34231", nil)
	p1, p2 := newPhone(t, "127.0.0.1"), newPhone(t, "127.0.0.1")
	pbx1, pbx2 := newPhone(t, "127.0.0.1"), newPhone(t, "127.0.0.1")
	// Call 1: phone 1 (caller, leg A) to the PBX, PCMA and events on 101.
	if _, err := r.Anchor("c1", true, sdpWith(p1.addr(), "8 101", "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000")); err != nil {
		t.Fatal(err)
	}
	toP1, err := r.Anchor("c1", false, sdpWith(pbx1.addr(), "8 101", "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000"))
	if err != nil {
		t.Fatal(err)
	}
	// Call 2: the PBX (caller, leg A) to phone 2, which numbers events 96.
	toP2, err := r.Anchor("c2", true, sdpWith(pbx2.addr(), "8 0 96", "rtpmap:8 PCMA/8000", "rtpmap:96 telephone-event/8000"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Anchor("c2", false, sdpWith(p2.addr(), "8 96", "rtpmap:8 PCMA/8000", "rtpmap:96 telephone-event/8000")); err != nil {
		t.Fatal(err)
	}
	relay1, relay2 := relayAP(sdpPort(t, toP1)), relayAP(sdpPort(t, toP2))
	mustRelay(t, p1, relay1, pbx1, relayAP(sdpPort(t, mustAnchorOut(t, r, "c1"))))

	if err := r.Join("c1", true, "c2", false); err != nil {
		t.Fatal(err)
	}
	if partner, ok := r.Joined("c2"); !ok || partner != "c1" {
		t.Fatalf("Joined(c2) = %q %v", partner, ok)
	}
	if pt := recvPT(t, p1, relay1, p2); pt != 8 {
		t.Fatalf("phone 2 got payload type %d, want 8", pt)
	}
	if pt := recvPT(t, p2, relay2, p1); pt != 8 {
		t.Fatalf("phone 1 got payload type %d, want 8", pt)
	}
	// An event from phone 1 (101) reaches phone 2 as its 96.
	ev := rtpPacket(500, 1, 1, 4)
	ev[1] = 101
	if _, err := p1.conn.WriteToUDPAddrPort(ev, relay1); err != nil {
		t.Fatal(err)
	}
	for {
		_, b, ok := p2.recv(2 * time.Second)
		if !ok {
			t.Fatal("event not relayed to phone 2")
		}
		if b[1]&0x7f != 8 {
			if b[1]&0x7f != 96 {
				t.Fatalf("event reached phone 2 with payload type %d, want 96", b[1]&0x7f)
			}
			break
		}
	}
	mustNotReceive(t, pbx1, 100*time.Millisecond)
	mustNotReceive(t, pbx2, 100*time.Millisecond)

	// Hold from phone 1: answered recvonly on the same relay port and codec.
	hold, err := r.AnswerJoined("c1", netip.Addr{}, sdpWith(p1.addr(), "8 101", "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000", "sendonly"))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(hold); !strings.Contains(s, "a=recvonly") || sdpPort(t, hold) != relay1.Port() || !strings.Contains(s, "c=IN IP4 127.0.0.1") || !strings.Contains(s, "o=- 7 8 ") {
		t.Fatalf("hold answer:\n%s", hold)
	}
	resume, err := r.AnswerJoined("c1", netip.Addr{}, sdpWith(p1.addr(), "8", "rtpmap:8 PCMA/8000"))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(resume); !strings.Contains(s, "a=sendrecv") || sdpPort(t, resume) != relay1.Port() || !strings.Contains(s, "o=- 7 9 ") {
		t.Fatalf("resume answer:\n%s", resume)
	}
	if _, err := r.AnswerJoined("c1", netip.Addr{}, sdpWith(p1.addr(), "0", "rtpmap:0 PCMU/8000")); !errors.Is(err, ErrCodecMismatch) {
		t.Fatalf("re-offer without the codec: %v, want ErrCodecMismatch", err)
	}
	if pt := recvPT(t, p1, relay1, p2); pt != 8 {
		t.Fatalf("after resume phone 2 got payload type %d, want 8", pt)
	}
	// Releasing one call undoes the join; the other is released by its own BYE.
	if err := r.Release("c1", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Joined("c2"); ok {
		t.Fatal("c2 still joined after c1's release")
	}
	if err := r.Release("c2", "bye"); err != nil {
		t.Fatal(err)
	}
}

// mustAnchorOut is the SDP the relay gives the PBX of call id: where the
// PBX leg's packets come from.
func mustAnchorOut(t *testing.T, r *Relay, id string) []byte {
	t.Helper()
	r.mu.Lock()
	body := r.sessions[id].sdp[LegA]
	r.mu.Unlock()
	out, err := r.Anchor(id, true, body)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJoinRefused: different codecs, a call answered by one leg only, or an
// unknown call are not joined, and the sessions go on as they were.
func TestJoinRefused(t *testing.T) {
	r, _ := newTestRelay(t, "34232-34263", nil)
	ap := netip.MustParseAddrPort("127.0.0.1:40000")
	pcma, pcmu := sdpWith(ap, "8", "rtpmap:8 PCMA/8000"), sdpWith(ap, "0")
	for id, bodies := range map[string][2][]byte{"a": {pcma, pcma}, "u": {pcmu, pcmu}} {
		for l, b := range bodies {
			if _, err := r.Anchor(id, l == 0, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := r.Anchor("half", true, pcma); err != nil {
		t.Fatal(err)
	}
	if err := r.Join("a", true, "u", false); !errors.Is(err, ErrCodecMismatch) {
		t.Fatalf("PCMA with PCMU: %v, want ErrCodecMismatch", err)
	}
	if err := r.Join("a", true, "half", false); !errors.Is(err, ErrNotJoinable) {
		t.Fatalf("with an unanswered call: %v, want ErrNotJoinable", err)
	}
	if err := r.Join("a", true, "nope", false); !errors.Is(err, ErrNotJoinable) {
		t.Fatalf("with an unknown call: %v, want ErrNotJoinable", err)
	}
	if _, ok := r.Joined("a"); ok {
		t.Fatal("a joined after refusals")
	}
}

// TestJoinAfterImport: the legs' SDP travel in the session records, so the
// twin that imported two calls can join them after a failover.
func TestJoinAfterImport(t *testing.T) {
	r1, _ := newTestRelay(t, "34264-34295", nil)
	ap := netip.MustParseAddrPort("127.0.0.1:40000")
	pcma := sdpWith(ap, "8 101", "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000")
	for _, id := range []string{"c1", "c2"} {
		for _, caller := range []bool{true, false} {
			if _, err := r1.Anchor(id, caller, pcma); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wire [][]byte
	for _, rec := range r1.Export() {
		b, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		wire = append(wire, b)
	}
	r1.Close()
	r2, _ := newTestRelay(t, "34264-34295", nil)
	r2.ApplyState(wire)
	if err := r2.Join("c1", true, "c2", false); err != nil {
		t.Fatalf("join of imported calls: %v", err)
	}
}

// TestCompactSDP: the SDP a session keeps for Join has its codecs,
// packetisation and direction, and none of a softphone's candidates, keys
// or other attributes.
func TestCompactSDP(t *testing.T) {
	body := sdpWith(netip.MustParseAddrPort("192.0.2.1:4000"), "8 101", "rtpmap:8 PCMA/8000", "rtpmap:101 telephone-event/8000",
		"fmtp:101 0-16", "ptime:20", "sendonly", "candidate:1 1 UDP 2130706431 192.0.2.1 4000 typ host",
		"crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj", "ssrc:1 cname:x")
	got := string(compactSDP(body))
	for _, want := range []string{"m=audio 4000 RTP/AVP 8 101", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendonly", "c=IN IP4 192.0.2.1"} {
		if !strings.Contains(got, want) {
			t.Errorf("compact SDP lacks %q:\n%s", want, got)
		}
	}
	for _, gone := range []string{"candidate", "crypto", "ssrc"} {
		if strings.Contains(got, gone) {
			t.Errorf("compact SDP keeps %s:\n%s", gone, got)
		}
	}
	if _, _, err := parseSDP([]byte(got)); err != nil {
		t.Fatalf("compact SDP does not parse: %v\n%s", err, got)
	}
}

// TestJoinWithDeclinedVideo: calls whose answers both declined a video
// stream (port 0) are joined on their audio.
func TestJoinWithDeclinedVideo(t *testing.T) {
	r, _ := newTestRelay(t, "34900-34963", nil)
	ap := netip.MustParseAddrPort("127.0.0.1:40000")
	offer := append(sdpWith(ap, "8", "rtpmap:8 PCMA/8000"), []byte("m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")...)
	answer := append(sdpWith(ap, "8", "rtpmap:8 PCMA/8000"), []byte("m=video 0 RTP/AVP 96\r\n")...)
	for _, id := range []string{"c1", "c2"} {
		if _, err := r.Anchor(id, true, offer); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Anchor(id, false, answer); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Join("c1", true, "c2", false); err != nil {
		t.Fatalf("join with declined video: %v", err)
	}
}
