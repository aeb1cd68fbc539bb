package health_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

// A backend whose OPTIONS go unanswered while it answers the calls hapbx
// forwards to it (a cold-started Asterisk taking the burst of held calls)
// is busy, not down; once it answers nothing, the same silence makes it
// down.
func TestProbeSilenceExcusedWhileBusy(t *testing.T) {
	t.Parallel()
	addr, answer := optionsAnswerer(t)
	reg := prometheus.NewRegistry()
	c, err := health.New(sipOnly(), []health.Target{{Name: "pbx1", Address: addr}}, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, c.Run)
	ch := watch(t, c)
	waitFor(t, ch, "pbx1", health.StateUp, 3*time.Second)

	// The proxy hears from pbx1 (its answers to calls) while its OPTIONS
	// go unanswered.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				c.Heard("pbx1")
			}
		}
	}()
	answer.Store(false)
	testkit.Eventually(t, 10*time.Second, "4 probes excused as busy", func() bool {
		return metricValue(t, reg, "hapbx_health_probes_busy_total", nil) >= 4
	})
	close(stop)
	<-done
	if st, _ := c.State("pbx1"); st != health.StateUp {
		t.Fatalf("pbx1 is %v after unanswered probes while it answered calls, want up", st)
	}
	waitFor(t, ch, "pbx1", health.StateDown, 3*time.Second)
}
