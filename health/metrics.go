package health

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	up          *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
	// excused counts probe timeouts not held against a backend (localload.go).
	excused prometheus.Counter
	// busy counts probe timeouts of a backend that answered calls
	// meanwhile (busy.go).
	busy prometheus.Counter
	// bridgesFull counts bridges a backend's AMI session reported beyond
	// the tracker's bound (amibridges.go).
	bridgesFull *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_backend_up",
			Help: "1 while the backend is routable (up or suspect), 0 while unknown or down.",
		}, []string{"backend"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hapbx_health_probe_duration_seconds",
			Help:    "Duration of health probes (kind sip: OPTIONS round trip or failure; kind ami: Ping round trip or failure).",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 12),
		}, []string{"backend", "kind"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_health_transitions_total",
			Help: "Backend health state transitions.",
		}, []string{"backend", "from", "to"}),
	}
	m.excused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hapbx_health_probes_excused_total",
		Help: "SIP probes that got no answer while hapbx itself was strained, not counted against the backend (for at most excuseFor in a row).",
	})
	m.busy = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hapbx_health_probes_busy_total",
		Help: "SIP probes that got no answer while the backend answered the requests hapbx forwarded to it (busy, not dead): not counted against it.",
	})
	m.bridgesFull = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapbx_health_ami_bridges_untracked_total",
		Help: "Bridges an Asterisk's manager reported while as many as the bound (sip.max_dialogs) were followed: their calls are not linked from AMI.",
	}, []string{"backend"})
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.up, m.duration, m.transitions, m.excused, m.busy, m.bridgesFull} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register health metrics: %w", err)
		}
	}
	return m, nil
}

// forget drops the series of a backend removed from the configuration.
func (m *metrics) forget(name string) {
	m.up.DeleteLabelValues(name)
	m.duration.DeletePartialMatch(prometheus.Labels{"backend": name})
	m.transitions.DeletePartialMatch(prometheus.Labels{"backend": name})
	m.bridgesFull.DeleteLabelValues(name)
}
