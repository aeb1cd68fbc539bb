package health_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// run starts a Checker and stops it at test end.
func run(t testing.TB, cfg health.Config, targets []health.Target) (*health.Checker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := zap.NewNop() // benchmarks: keep their figures readable
	if _, isBench := t.(*testing.B); !isBench {
		log = zaptest.NewLogger(t)
	}
	c, err := health.New(cfg, targets, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c, reg
}

// watch subscribes for the test's lifetime.
func watch(t testing.TB, c *health.Checker) <-chan health.Change {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return c.Subscribe(ctx)
}

// waitFor returns the first change of name to state `to` within d.
func waitFor(t testing.TB, ch <-chan health.Change, name string, to health.State, d time.Duration) health.Change {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("subscription closed while waiting for %s %v", name, to)
			}
			if c.Name == name && c.To == to && c.From != c.To {
				return c
			}
		case <-deadline:
			t.Fatalf("%s did not become %v within %s", name, to, d)
		}
	}
}

// metricValue reads one gauge or counter sample from reg.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func sipOnly() health.Config {
	cfg := health.DefaultConfig()
	cfg.Require = []string{health.CheckSIP}
	return cfg
}

// waitState polls until name is in state `want`.
func waitState(t testing.TB, c *health.Checker, name string, want health.State, d time.Duration) {
	t.Helper()
	var st health.State
	if !testkit.Poll(d, func() bool { st, _ = c.State(name); return st == want }) {
		t.Fatalf("%s is %v, not %v, after %s", name, st, want, d)
	}
}

// optionsAnswerer is a SIP backend on UDP that answers every request 200
// while answer is set, and nothing otherwise (a silent backend).
func optionsAnswerer(t *testing.T) (string, *atomic.Bool) {
	t.Helper()
	conn, err := net.ListenPacket("udp", net.JoinHostPort(testkit.RandomIP(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	answer := &atomic.Bool{}
	answer.Store(true)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			msg, err := sip.ParseMessage(buf[:n])
			req, _ := msg.(*sip.Request)
			if err != nil || req == nil || !answer.Load() {
				continue
			}
			res := sip.NewResponseFromRequest(req, 200, "OK", nil)
			conn.WriteTo([]byte(res.String()), from)
		}
	}()
	return conn.LocalAddr().String(), answer
}
