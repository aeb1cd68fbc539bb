package health_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

// silencer makes a backend silent and brings it back.
type silencer struct {
	addr       string
	stop, back func()
}

// BenchmarkDetectDown measures, with the default probe settings, the time
// from a backend's failure to the "down" event, over 10 failures per
// iteration, each at a random point of the probe interval:
//
//	killed   SIGKILL of a SIPp backend: the ICMP port-unreachable is seen at once
//	frozen   SIGSTOP of a SIPp backend: its socket stays open, no answer, no ICMP
//	off      a host powered off: every packet to a SIPp backend in a network
//	         namespace of its own (hdt-...) is dropped there (nft); needs root
//
// Run it once: go test -run '^$' -bench DetectDown -benchtime 1x ./health/
func BenchmarkDetectDown(b *testing.B) {
	b.Run("killed", func(b *testing.B) {
		uas := testkit.StartOptionsUAS(b, testkit.RandomIP(), 0, 200, "udp")
		detect(b, silencer{uas.Addr(), uas.Kill, uas.Restart})
	})
	b.Run("frozen", func(b *testing.B) {
		uas := testkit.StartOptionsUAS(b, testkit.RandomIP(), 0, 200, "udp")
		detect(b, silencer{uas.Addr(), uas.Freeze, uas.Thaw})
	})
	b.Run("off", func(b *testing.B) {
		detect(b, offBackend(b))
	})
}

func detect(b *testing.B, s silencer) {
	const reps = 10
	cfg := sipOnly()
	c, _ := run(b, cfg, []health.Target{{Name: "pbx", Address: s.addr}})
	ch := watch(b, c)
	var all []time.Duration
	for b.Loop() {
		for range reps {
			waitFor(b, ch, "pbx", health.StateUp, 5*time.Second)
			// Fail at a random point of the probe interval, as a crash would.
			time.Sleep(rand.N(cfg.Interval))
			s.stop()
			failed := time.Now()
			waitFor(b, ch, "pbx", health.StateDown, 5*time.Second)
			all = append(all, time.Since(failed))
			s.back()
		}
	}
	slices.Sort(all)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	med, worst := ms(all[len(all)/2]), ms(all[len(all)-1])
	b.ReportMetric(med, "median-ms")
	b.ReportMetric(worst, "max-ms")
	b.ReportMetric(ms(all[0]), "min-ms")
	b.Logf("failure to down over %d failures (interval %s, timeout %s, fall %d): min %.0f ms, median %.0f ms, max %.0f ms",
		len(all), cfg.Interval, cfg.Timeout, cfg.Fall, ms(all[0]), med, worst)
}

// offBackend runs a SIPp backend in a network namespace of its own, joined
// to this one by a veth pair; stop drops every packet entering the
// namespace, back accepts them again. Everything is removed at the end.
func offBackend(b *testing.B) silencer {
	if os.Geteuid() != 0 {
		b.Skip("needs root: a network namespace")
	}
	testkit.RequireSIPp(b)
	n := os.Getpid() % 100000
	ns, host, peer := fmt.Sprintf("hdt-%d", n), fmt.Sprintf("hdt-h%d", n), fmt.Sprintf("hdt-n%d", n)
	net := fmt.Sprintf("10.%d.%d.", 200+n%50, n%250)
	sh := func(args ...string) {
		b.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	_ = exec.Command("ip", "netns", "del", ns).Run() // left over by a killed run
	sh("ip", "netns", "add", ns)
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
	sh("ip", "addr", "add", net+"1/30", "dev", host)
	sh("ip", "link", "set", host, "up")
	sh("ip", "-n", ns, "addr", "add", net+"2/30", "dev", peer)
	sh("ip", "-n", ns, "link", "set", peer, "up")
	sh("ip", "-n", ns, "link", "set", "lo", "up")

	scenario, err := os.ReadFile("../internal/testkit/testdata/options-uas.xml")
	if err != nil {
		b.Fatal(err)
	}
	file := b.TempDir() + "/options-uas.xml"
	if err := os.WriteFile(file, scenario, 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "sipp", "-sf", file, "-i", net+"2", "-p", "5060", "-t", "u1", "-nostdin")
	cmd.Dir = b.TempDir()
	p, err := testkit.StartGroup(cmd)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Kill) // before the namespace goes
	drop := []string{"ip", "netns", "exec", ns, "nft", "add table inet hdt; add chain inet hdt in { type filter hook input priority 0; policy drop; }"}
	accept := []string{"ip", "netns", "exec", ns, "nft", "delete table inet hdt"}
	return silencer{net + "2:5060", func() { sh(drop...) }, func() { sh(accept...) }}
}
