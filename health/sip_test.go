package health_test

import (
	"encoding/json"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

// A SIPp backend: up after rise probes, down within 2 s of SIGKILL (the
// connected UDP socket sees ECONNREFUSED), up again only after rise good
// probes once restarted.
func TestSIPUpKillRestart(t *testing.T) {
	t.Parallel()
	uas := testkit.StartOptionsUAS(t, testkit.RandomIP(), 0, 200, "udp")
	cfg := sipOnly()
	c, reg := run(t, cfg, []health.Target{{Name: "pbx1", Address: uas.Addr()}})
	ch := watch(t, c)

	up := waitFor(t, ch, "pbx1", health.StateUp, 3*time.Second)
	if up.From != health.StateUnknown {
		t.Errorf("first transition from %v", up.From)
	}
	if v := metricValue(t, reg, "hapbx_backend_up", map[string]string{"backend": "pbx1"}); v != 1 {
		t.Errorf("hapbx_backend_up = %v, want 1", v)
	}

	uas.Kill()
	killed := time.Now()
	s := waitFor(t, ch, "pbx1", health.StateSuspect, 2*time.Second)
	if !strings.Contains(s.Reason, "refused") {
		t.Errorf("suspect reason %q: the ICMP port-unreachable should show as connection refused", s.Reason)
	}
	waitFor(t, ch, "pbx1", health.StateDown, 2*time.Second-time.Since(killed))
	t.Logf("down %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
	if v := metricValue(t, reg, "hapbx_backend_up", map[string]string{"backend": "pbx1"}); v != 0 {
		t.Errorf("hapbx_backend_up = %v after down, want 0", v)
	}
	if v := metricValue(t, reg, "hapbx_health_transitions_total", map[string]string{"backend": "pbx1", "from": "suspect", "to": "down"}); v != 1 {
		t.Errorf("transitions suspect->down = %v, want 1", v)
	}

	uas.Restart()
	restarted := time.Now()
	waitFor(t, ch, "pbx1", health.StateUp, 3*time.Second)
	// rise=2: the first good probe comes at the earliest right after the
	// restart, the second one interval later.
	if d := time.Since(restarted); d < cfg.Interval-20*time.Millisecond {
		t.Errorf("up %s after restart: fewer than rise=%d good probes", d, cfg.Rise)
	}

	b, err := json.Marshal(c.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"state":"up"`) || !strings.Contains(string(b), `"sip":"answered 200`) {
		t.Errorf("snapshot JSON %s", b)
	}
}

func TestSIPAliveCodes(t *testing.T) {
	t.Parallel()
	ip := testkit.RandomIP()
	notFound := testkit.StartOptionsUAS(t, ip, 0, 404, "udp") // Asterisk's answer to a user-less OPTIONS
	overload := testkit.StartOptionsUAS(t, ip, 0, 503, "udp") // refuses service
	cfg := sipOnly()
	c, _ := run(t, cfg, []health.Target{
		{Name: "404", Address: notFound.Addr()},
		{Name: "503", Address: overload.Addr()},
	})
	waitState(t, c, "404", health.StateUp, 3*time.Second)
	waitState(t, c, "503", health.StateDown, 3*time.Second)
	if r := c.Snapshot()[1].Reason; !strings.Contains(r, "answered 503") {
		t.Errorf("reason %q", r)
	}
}

func TestSIPOverTCP(t *testing.T) {
	t.Parallel()
	uas := testkit.StartOptionsUAS(t, testkit.RandomIP(), 0, 200, "tcp")
	c, _ := run(t, sipOnly(), []health.Target{{Name: "tcp", Address: uas.Addr(), Transport: "tcp"}})
	ch := watch(t, c)
	waitFor(t, ch, "tcp", health.StateUp, 3*time.Second)
	uas.Kill()
	waitFor(t, ch, "tcp", health.StateDown, 2*time.Second)
}

// Suspect() from the proxy makes an up backend suspect at once and probes
// it at once, far sooner than the interval would.
func TestPassiveSuspect(t *testing.T) {
	t.Parallel()
	uas := testkit.StartOptionsUAS(t, testkit.RandomIP(), 0, 200, "udp")
	cfg := sipOnly()
	cfg.Interval, cfg.Rise = 5*time.Second, 1
	c, _ := run(t, cfg, []health.Target{{Name: "pbx", Address: uas.Addr()}})
	ch := watch(t, c)
	waitFor(t, ch, "pbx", health.StateUp, 5*time.Second) // set-up: the first probe, on a loaded machine

	// A live backend: suspect, then up again after the immediate probe.
	c.Suspect("pbx", "INVITE timed out")
	s := waitFor(t, ch, "pbx", health.StateSuspect, 100*time.Millisecond)
	if s.Reason != "passive: INVITE timed out" {
		t.Errorf("reason %q", s.Reason)
	}
	waitFor(t, ch, "pbx", health.StateUp, time.Second)

	// A dead one: down long before the 5 s interval.
	uas.Kill()
	start := time.Now()
	c.Suspect("pbx", "503")
	waitFor(t, ch, "pbx", health.StateDown, time.Second)
	t.Logf("down %s after Suspect", time.Since(start).Round(time.Millisecond))
	c.Suspect("nobody", "ignored") // unknown names are ignored
}

// A backend that swallows OPTIONS (a hung process whose socket is still
// open): every probe times out on its own, none waits for another, and the
// backend is down after fall probes; once a real SIPp answers on that
// port, it is up again.
func TestSIPBlackHole(t *testing.T) {
	t.Parallel()
	ip := testkit.RandomIP()
	hole, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 65535)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	addr := hole.LocalAddr().String()
	cfg := sipOnly()
	c, _ := run(t, cfg, []health.Target{{Name: "hung", Address: addr}})
	start := time.Now()
	waitState(t, c, "hung", health.StateDown, cfg.Interval+time.Duration(cfg.Fall)*cfg.Timeout+time.Second)
	t.Logf("down %s after start", time.Since(start).Round(time.Millisecond))
	if r := c.Snapshot()[0].Reason; !strings.Contains(r, "timed out") {
		t.Errorf("reason %q", r)
	}
	hole.Close()
	port := hole.LocalAddr().(*net.UDPAddr).Port
	testkit.StartOptionsUAS(t, ip, port, 200, "udp")
	waitState(t, c, "hung", health.StateUp, 3*time.Second)
}

// Probes do not wait for each other: a backend that answers every OPTIONS
// later than the next probe starts (but within the timeout) stays up and is
// never suspect.
func TestSIPAnswersSlowerThanInterval(t *testing.T) {
	t.Parallel()
	scenario, err := os.ReadFile("../internal/testkit/testdata/options-uas.xml")
	if err != nil {
		t.Fatal(err)
	}
	slow := strings.Replace(string(scenario), `<recv request="OPTIONS" />`, `<recv request="OPTIONS" />
  <pause milliseconds="300" />`, 1)
	file := t.TempDir() + "/slow-uas.xml"
	if err := os.WriteFile(file, []byte(slow), 0o644); err != nil {
		t.Fatal(err)
	}
	ip := testkit.RandomIP()
	port := testkit.FreePort(t, ip)
	testkit.StartSIPp(t, ip, port, "-sf", file, "-t", "u1")
	cfg := sipOnly()
	cfg.Interval, cfg.Timeout = 100*time.Millisecond, 3*time.Second
	c, _ := run(t, cfg, []health.Target{{Name: "slow", Address: net.JoinHostPort(ip, strconv.Itoa(port))}})
	ch := watch(t, c)
	waitFor(t, ch, "slow", health.StateUp, 10*time.Second)
	end := time.After(2 * time.Second) // about 20 probes, 3 in flight at a time
	for {
		select {
		case ch := <-ch:
			t.Fatalf("backend answering in 300ms changed state: %+v", ch)
		case <-end:
			if st, _ := c.State("slow"); st != health.StateUp {
				t.Fatalf("state %v", st)
			}
			return
		}
	}
}
