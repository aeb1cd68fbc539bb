package registrar

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	bindings    prometheus.Gauge
	aors        prometheus.Gauge
	changes     *prometheus.CounterVec
	storeErrors prometheus.Counter
	purged      prometheus.Counter
}

// Change operations counted in hapbx_registrar_changes_total{op}.
const (
	opAdd     = "add"     // a new binding
	opRefresh = "refresh" // an existing binding renewed through a backend
	opRemove  = "remove"  // Expires: 0, Contact: *, or dropped from a backend's 2xx
	opStore   = "store"   // a refresh answered from the store (no backend up)
	opMerge   = "merge"   // a record from a peer taken
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		bindings: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_registrar_bindings",
			Help: "Bindings held (live, until purged).",
		}),
		aors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_registrar_aors",
			Help: "Addresses of record with at least one binding.",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_registrar_changes_total",
			Help: "Binding changes by operation (add, refresh, remove, store, merge).",
		}, []string{"op"}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_registrar_store_errors_total",
			Help: "Persistent store failures: damaged file, undecodable record, failed write.",
		}),
		purged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_registrar_purged_total",
			Help: "Bindings dropped because they expired.",
		}),
	}
	for _, op := range []string{opAdd, opRefresh, opRemove, opStore, opMerge} {
		m.changes.WithLabelValues(op)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.bindings, m.aors, m.changes, m.storeErrors, m.purged} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
