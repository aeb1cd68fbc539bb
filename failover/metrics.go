package failover

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	active   *prometheus.GaugeVec
	switches prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_failover_active",
			Help: "1 for the active backend, 0 for the others.",
		}, []string{"backend"}),
		switches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_failover_switches_total",
			Help: "Times the active role moved from one backend to another.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.active, m.switches} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register failover metrics: %w", err)
		}
	}
	return m, nil
}
