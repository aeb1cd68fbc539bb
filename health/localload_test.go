package health_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

type strain struct{ on atomic.Bool }

func (s *strain) StrainedSince(time.Time) bool { return s.on.Load() }

// Issue 13.1: while hapbx itself is strained, a backend whose answers stop
// coming is not declared suspect or down (its answers may be waiting in
// hapbx's own queues); once hapbx is at ease, the same silence makes it
// down.
func TestProbeSilenceExcusedWhileStrained(t *testing.T) {
	t.Parallel()
	addr, answer := optionsAnswerer(t)
	load := &strain{}
	reg := prometheus.NewRegistry()
	c, err := health.New(sipOnly(), []health.Target{{Name: "pbx1", Address: addr}}, zaptest.NewLogger(t), reg, health.WithLocalLoad(load))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, c.Run)
	ch := watch(t, c)
	waitFor(t, ch, "pbx1", health.StateUp, 3*time.Second)

	load.on.Store(true)
	answer.Store(false)
	// Twice fall's probes go unanswered, none counted.
	testkit.Eventually(t, 10*time.Second, "4 probes excused", func() bool {
		return metricValue(t, reg, "hapbx_health_probes_excused_total", nil) >= 4
	})
	if st, _ := c.State("pbx1"); st != health.StateUp {
		t.Fatalf("pbx1 is %v after unanswered probes while hapbx was strained, want up", st)
	}
	load.on.Store(false)
	waitFor(t, ch, "pbx1", health.StateDown, 3*time.Second)
}
