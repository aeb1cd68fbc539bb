package limits

import "github.com/prometheus/client_golang/prometheus"

type floodMetrics struct {
	blocked    prometheus.Counter
	dropped    prometheus.Counter
	tableFull  prometheus.Counter
	sources    prometheus.Gauge
	blockedNow prometheus.Gauge
}

func newFloodMetrics(reg prometheus.Registerer) *floodMetrics {
	m := &floodMetrics{
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_limits_flood_blocked_total",
			Help: "Source addresses blocked for sending more than limits.flood.rate requests per window.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_limits_flood_dropped_total",
			Help: "Requests from blocked sources, ignored during their cool-down.",
		}),
		tableFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_limits_flood_table_full_total",
			Help: "Requests from a new source that passed unchecked because limits.flood.max_sources sources were tracked already.",
		}),
		sources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_flood_sources",
			Help: "Source addresses tracked by the flood guard.",
		}),
		blockedNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_flood_blocked_sources",
			Help: "Source addresses blocked now.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.blocked, m.dropped, m.tableFull, m.sources, m.blockedNow)
	}
	return m
}

type budgetMetrics struct {
	budget    prometheus.Gauge
	inUse     prometheus.Gauge
	peak      prometheus.Gauge
	shedding  prometheus.Gauge
	strained  *prometheus.CounterVec
	gcPercent prometheus.Gauge
}

func newBudgetMetrics(reg prometheus.Registerer) *budgetMetrics {
	m := &budgetMetrics{
		budget: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_memory_budget_bytes",
			Help: "The memory budget (limits.memory), also the Go soft memory limit.",
		}),
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_memory_in_use_bytes",
			Help: "In-flight state: live heap after the last collection plus goroutine stacks.",
		}),
		peak: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_memory_peak_bytes",
			Help: "Memory hapbx will reach before its next collection: the collector's heap goal plus goroutine stacks (at least the in-flight state); what the door sheds on.",
		}),
		shedding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_shedding",
			Help: "1 while the memory hapbx will reach before its next collection is near the memory budget and new requests get 503.",
		}),
		strained: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_limits_strained_total",
			Help: "Samples in which hapbx itself was short of CPU (sched: goroutine scheduling latency) or of UDP receive buffer (rcvbuf: datagrams dropped by the kernel).",
		}, []string{"cause"}),
		gcPercent: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_limits_gc_percent",
			Help: "GOGC as the budget set it from the live state (0 when GOGC comes from the environment).",
		}),
	}
	for _, c := range []string{"sched", "rcvbuf"} {
		m.strained.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(m.budget, m.inUse, m.peak, m.shedding, m.strained, m.gcPercent)
	}
	return m
}
