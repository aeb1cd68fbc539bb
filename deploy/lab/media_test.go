package lab

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Issue 8.2: media anchored on the proxies; the VIP holder is SIGKILLed in the
// middle of a call while the phone plays G.711 to a backend that echoes it.
// Audio resumes through the new holder (on the same VIP ports, from the
// replicated session) within 1 s, and the call still hangs up normally.
func TestMediaSurvivesVIPFailover(t *testing.T) { mediaSurvivesVIPFailover(t, "user") }

// Issue 16.3: the same with the kernel data path (media.datapath kernel,
// forwarding on in the proxies' namespaces): the twin installs the kernel
// state of the replicated session, and the audio gap stays within 1 s.
func TestMediaSurvivesVIPFailoverKernel(t *testing.T) { mediaSurvivesVIPFailover(t, "kernel") }

// phoneRTP counts, in the phones' namespace, the relay's RTP arriving at
// the phone's port (after the NAT's reverse mapping): the audio the phone
// hears, whichever proxy or data path relays it.
func phoneRTP(t *testing.T, port int) func() uint64 { return hostRTP(t, "phones", port) }

// hostRTP counts the RTP from the VIP arriving at port in host h's
// namespace.
func hostRTP(t *testing.T, h string, port int) func() uint64 {
	t.Helper()
	table := "hlabrtp" + strconv.Itoa(port)
	for _, args := range [][]string{
		{"add", "table", "ip", table},
		{"add", "chain", "ip", table, "in", "{ type filter hook input priority 0; }"},
		{"add", "rule", "ip", table, "in", "ip", "saddr", VIP, "udp", "dport", strconv.Itoa(port), "counter"},
	} {
		if err := run(append([]string{"ip", "netns", "exec", NS(h), "nft"}, args...)...); err != nil {
			t.Fatalf("nft %v: %v", args, err)
		}
	}
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() uint64 {
		out, err := exec.Command("ip", "netns", "exec", NS(h), "nft", "list", "chain", "ip", table, "in").Output()
		if err != nil {
			t.Fatalf("nft list: %v", err)
		}
		m := re.FindSubmatch(out)
		if m == nil {
			t.Fatalf("no counter in %s", out)
		}
		n, _ := strconv.ParseUint(string(m[1]), 10, 64)
		return n
	}
}

func mediaSurvivesVIPFailover(t *testing.T, datapath string) {
	pcapG711a := testkit.RequirePCAP(t)
	// A short idle_timeout, and the holder killed after the call has run
	// longer than it: the twin's replica lives on the holder's refreshes,
	// not on packets it cannot see before it holds the VIP.
	const idle = 2 * time.Second
	l := newLab(t, Options{Media: true, SIPpBackends: true, MediaIdleTimeout: idle, MediaDatapath: datapath})
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
	heard := phoneRTP(t, 7000)
	if err := WaitFor(3*time.Second, "the phone hearing the echo through "+h, func() bool { return heard() > 0 }); err != nil {
		t.Fatal(err)
	}
	// The phone hears the backend's echo of its own audio: RTP must cross
	// the relay both ways for the counter to move.
	t0 := time.Now()
	l.KillProxy(h)
	last, lastAt := heard(), time.Now()
	var gap time.Duration
	for time.Since(t0) < 3*time.Second {
		n, now := heard(), time.Now()
		if n != last {
			if d := now.Sub(lastAt); d > gap {
				gap = d
			}
			last, lastAt = n, now
			if now.Sub(t0) > gap+500*time.Millisecond {
				break // audio has been back for a while
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if since := time.Since(lastAt); since > gap {
		gap = since // still silent
	}
	if err := WaitFor(3*time.Second, "RTP relayed both ways by "+tw, func() bool {
		return l.Metric(tw, key("a_to_b")) >= 10 && l.Metric(tw, key("b_to_a")) >= 10
	}); err != nil {
		t.Errorf("media not flowing both ways through %s: a_to_b=%v b_to_a=%v", tw, l.Metric(tw, key("a_to_b")), l.Metric(tw, key("b_to_a")))
	}
	t.Logf("datapath %s: SIGKILL %s mid-call: the phone's longest silence %s (audio gap, echo through %s)",
		datapath, h, gap.Round(time.Millisecond), tw)
	if gap > time.Second {
		t.Errorf("audio gap %s, want <= 1s", gap)
	}
	if datapath == "kernel" {
		var st struct {
			Streams []struct {
				FromA struct{ Kernel bool } `json:"from_a"`
				FromB struct{ Kernel bool } `json:"from_b"`
			} `json:"streams"`
		}
		if err := WaitFor(3*time.Second, tw+" forwarding the call in the kernel", func() bool {
			s, err := l.Status(tw)
			return err == nil && len(s.Media) == 1 && json.Unmarshal(s.Media[0], &st) == nil && len(st.Streams) == 1 &&
				st.Streams[0].FromA.Kernel && st.Streams[0].FromB.Kernel
		}); err != nil {
			s, _ := l.Status(tw)
			t.Errorf("%v: %+v", err, s.Media)
		}
	}
	if code := phone.Wait(30 * time.Second); code != 0 {
		t.Fatalf("the call did not hang up normally (sipp exit %d)\n%s", code, phone.Log(3000))
	}
	if n, _ := strconv.Atoi(strconv.FormatFloat(l.Metric(tw, "hapbx_media_sessions"), 'f', 0, 64)); n != 0 {
		t.Errorf("%d relay sessions left on %s after BYE", n, tw)
	}
}
