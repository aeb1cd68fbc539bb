package lab

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Issue 8.2: media anchored on the proxies; the VIP holder is SIGKILLed in the
// middle of a call while the phone plays G.711 to a backend that echoes it.
// Audio resumes through the new holder (on the same VIP ports, from the
// replicated session) within 1 s, and the call still hangs up normally.
func TestMediaSurvivesVIPFailover(t *testing.T) {
	pcapG711a := testkit.RequirePCAP(t)
	// A short idle_timeout, and the holder killed after the call has run
	// longer than it: the twin's replica lives on the holder's refreshes,
	// not on packets it cannot see before it holds the VIP.
	const idle = 2 * time.Second
	l := newLab(t, Options{Media: true, SIPpBackends: true, MediaIdleTimeout: idle})
	for _, be := range Backends {
		if _, err := l.StartBackend(be, "-mi", Hosts[be], "-mp", "6000", "-rtp_echo"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Up(); err != nil {
		t.Fatal(err)
	}
	h, err := l.WaitHolder("", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(5*time.Second, "an active backend", func() bool {
		s, err := l.Status(h)
		return err == nil && s.Active != ""
	}); err != nil {
		t.Fatal(err)
	}
	tw := Twin(h)
	// A real NAT in front of the phone: its RTP leaves port 7000 (what its
	// SDP says) and reaches the VIP from 17000. The relay must latch onto
	// 17000; conntrack takes the echo back to 7000.
	for _, args := range [][]string{
		{"add", "table", "ip", "hlabnat"},
		{"add", "chain", "ip", "hlabnat", "post", "{ type nat hook postrouting priority 100; }"},
		{"add", "rule", "ip", "hlabnat", "post", "udp", "sport", "7000", "snat", "to", Hosts["phones"] + ":17000"},
	} {
		if err := run(append([]string{"ip", "netns", "exec", NS("phones"), "nft"}, args...)...); err != nil {
			t.Fatalf("nft %v: %v", args, err)
		}
	}
	phone, err := l.Sipp("phones", "mediaphone", 5090, "-sf", l.Scenario("uac_media_long.xml"), "-s", "202", "-m", "1",
		"-mi", Hosts["phones"], "-mp", "7000", "-key", "pcap", pcapG711a, "-timeout", "30s", "-timeout_error", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	key := func(dir string) string { return `hapbx_media_packets_total{dir="` + dir + `"}` }
	if err := WaitFor(5*time.Second, "RTP relayed both ways by "+h, func() bool {
		return l.Metric(h, key("a_to_b")) > 20 && l.Metric(h, key("b_to_a")) > 20
	}); err != nil {
		t.Fatalf("%v\n%s", err, phone.Log(3000))
	}
	var sess struct {
		Streams []struct {
			FromA struct{ SDP, Latched string } `json:"from_a"`
		} `json:"streams"`
	}
	if s, err := l.Status(h); err != nil || len(s.Media) != 1 || json.Unmarshal(s.Media[0], &sess) != nil || len(sess.Streams) == 0 {
		t.Fatalf("%s's media session: %v %+v", h, err, s.Media)
	}
	if a := sess.Streams[0].FromA; a.SDP != Hosts["phones"]+":7000" || a.Latched != Hosts["phones"]+":17000" {
		t.Fatalf("phone leg behind NAT: SDP %s latched %s, want SDP :7000 latched :17000 (the NATed source)", a.SDP, a.Latched)
	}
	if err := WaitFor(2*time.Second, "the media session replicated to "+tw, func() bool {
		s, err := l.Status(tw)
		return err == nil && len(s.Media) == 1
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(idle + 500*time.Millisecond) // the call is now older than idle_timeout
	if s, err := l.Status(tw); err != nil || len(s.Media) != 1 {
		t.Fatalf("%s dropped the replicated session of a call older than idle_timeout (%v): %+v", tw, err, s.Media)
	}
	base := l.Metric(tw, key("a_to_b")) + l.Metric(tw, key("b_to_a"))
	t0 := time.Now()
	l.KillProxy(h)
	var gap time.Duration
	for time.Since(t0) < 3*time.Second {
		if l.Metric(tw, key("a_to_b"))+l.Metric(tw, key("b_to_a")) > base {
			gap = time.Since(t0)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if gap == 0 {
		t.Fatalf("no RTP relayed by %s within 3 s of SIGKILL of %s", tw, h)
	}
	time.Sleep(500 * time.Millisecond)
	ab, ba := l.Metric(tw, key("a_to_b")), l.Metric(tw, key("b_to_a"))
	t.Logf("SIGKILL %s mid-call: %s relays RTP after %s (audio gap); then %v phone->backend, %v backend->phone packets in 0.5 s",
		h, tw, gap.Round(time.Millisecond), ab, ba)
	if gap > time.Second {
		t.Errorf("audio gap %s, want <= 1s", gap)
	}
	if ab < 10 || ba < 10 {
		t.Errorf("media not flowing both ways through %s: a_to_b=%v b_to_a=%v", tw, ab, ba)
	}
	if code := phone.Wait(30 * time.Second); code != 0 {
		t.Fatalf("the call did not hang up normally (sipp exit %d)\n%s", code, phone.Log(3000))
	}
	if n, _ := strconv.Atoi(strconv.FormatFloat(l.Metric(tw, "hapbx_media_sessions"), 'f', 0, 64)); n != 0 {
		t.Errorf("%d relay sessions left on %s after BYE", n, tw)
	}
}
