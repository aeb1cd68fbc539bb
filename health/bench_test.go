package health_test

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

// BenchmarkDetectDown measures, with the default probe settings, the time
// from SIGKILL of a SIPp backend to the "down" event, over 10 kill cycles
// per iteration, each kill at a random point of the probe interval.
// Run it once: go test -run - -bench DetectDown -benchtime 1x ./health/
func BenchmarkDetectDown(b *testing.B) {
	const reps = 10
	uas := testkit.StartOptionsUAS(b, testkit.RandomIP(), 0, 200, "udp")
	c, _ := run(b, sipOnly(), []health.Target{{Name: "pbx", Address: uas.Addr()}})
	ch := watch(b, c)
	var all []time.Duration
	for b.Loop() {
		for range reps {
			waitFor(b, ch, "pbx", health.StateUp, 5*time.Second)
			// Kill at a random point of the probe interval, as a crash would.
			time.Sleep(rand.N(health.DefaultConfig().Interval))
			uas.Kill()
			killed := time.Now()
			waitFor(b, ch, "pbx", health.StateDown, 5*time.Second)
			all = append(all, time.Since(killed))
			uas.Restart()
		}
	}
	slices.Sort(all)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	med, worst := ms(all[len(all)/2]), ms(all[len(all)-1])
	b.ReportMetric(med, "median-ms")
	b.ReportMetric(worst, "max-ms")
	b.ReportMetric(ms(all[0]), "min-ms")
	b.Logf("SIGKILL to down over %d kills: min %.0f ms, median %.0f ms, max %.0f ms", len(all), ms(all[0]), med, worst)
}
