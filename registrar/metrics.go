package registrar

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	bindings    prometheus.Gauge
	aors        prometheus.Gauge
	changes     *prometheus.CounterVec
	storeErrors prometheus.Counter
	purged      prometheus.Counter
	refused     *prometheus.CounterVec
}

// Change operations counted in hapbx_registrar_changes_total{op}.
const (
	opAdd     = "add"     // a new binding
	opRefresh = "refresh" // an existing binding renewed through a backend
	opRemove  = "remove"  // Expires: 0, Contact: *, or dropped from a backend's 2xx
	opStore   = "store"   // a refresh answered from the store (no backend up)
	opMerge   = "merge"   // a record from a peer taken
)

// Reasons a REGISTER's bindings were not kept, counted in
// hapbx_registrar_refused_total{reason}: a fixed set, whatever the request.
const (
	refusedFull    = "table_full" // max_bindings reached
	refusedAOR     = "aor_limit"  // max_bindings_per_aor reached
	refusedInvalid = "invalid"    // the REGISTER/2xx pair describes no registration
	refusedClosed  = "closed"     // the registrar is shutting down
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
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_registrar_refused_total",
			Help: "REGISTERs whose bindings were not kept, by reason (table_full, aor_limit, invalid, closed); the phone got 503.",
		}, []string{"reason"}),
	}
	for _, op := range []string{opAdd, opRefresh, opRemove, opStore, opMerge} {
		m.changes.WithLabelValues(op)
	}
	for _, why := range []string{refusedFull, refusedAOR, refusedInvalid, refusedClosed} {
		m.refused.WithLabelValues(why)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.bindings, m.aors, m.changes, m.storeErrors, m.purged, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
