package storage

import "github.com/prometheus/client_golang/prometheus"

// Group states as exported by hapbx_storage_group_state.
const (
	StateStopped  = "stopped"
	StateStarting = "starting"
	StateStarted  = "started"
	StateStopping = "stopping"
	StateFailed   = "failed"
)

var stateValue = map[string]float64{StateStopped: 0, StateStarting: 1, StateStarted: 2, StateStopping: 3, StateFailed: 4}

type metrics struct {
	stepDuration *prometheus.HistogramVec
	groupState   prometheus.Gauge
	failures     *prometheus.CounterVec
	splitBrain   prometheus.Gauge
	diskUpToDate prometheus.Gauge
	peerUpToDate prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hapbx_storage_step_duration_seconds",
			Help:    "Time one resource group step took, by step (drbd, filesystem, service) and op (start, stop, rollback).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
		}, []string{"step", "op"}),
		groupState: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_storage_group_state",
			Help: "Resource group state: 0 stopped, 1 starting, 2 started, 3 stopping, 4 failed.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_storage_failures_total",
			Help: "Failed resource group steps, by step (drbd, filesystem, service, precheck, fence, monitor).",
		}, []string{"step"}),
		splitBrain: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_storage_split_brain",
			Help: "1 while a DRBD split brain is detected and not cleared by an operator.",
		}),
		diskUpToDate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_storage_drbd_disk_uptodate",
			Help: "1 while the local DRBD disk is UpToDate (every volume), as last read from drbdadm status or drbdsetup events2.",
		}),
		peerUpToDate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_storage_drbd_peer_disk_uptodate",
			Help: "1 while every DRBD peer's disk is UpToDate as seen from this node (0 with no peer known, or a peer not connected).",
		}),
	}
	// Every step's series exists from the start at 0, so a dashboard or a
	// rate() over it reads "no failure" rather than "no data" until one.
	for _, step := range []string{StepDRBD, StepFilesystem, StepService, "precheck", "fence", "monitor"} {
		m.failures.WithLabelValues(step)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.stepDuration, m.groupState, m.failures, m.splitBrain, m.diskUpToDate, m.peerUpToDate} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// setDRBD exports the disk states of st: what an alert on a disk not
// UpToDate (a resync, an outdated peer, a lost replication link) reads.
func (m *metrics) setDRBD(st DRBDState) {
	m.diskUpToDate.Set(boolValue(st.Disk == DiskUpToDate))
	m.peerUpToDate.Set(boolValue(st.PeersUpToDate()))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
