package cluster

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	vipHeld       prometheus.Gauge
	members       prometheus.Gauge
	leaderChanges prometheus.Counter
	quorum        prometheus.Gauge
	isLeader      prometheus.Gauge
	garpSent      prometheus.Counter
	syncRecords   prometheus.Counter
	// releaseFailures counts failed VIP removals (each retry counts).
	releaseFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		vipHeld: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hapbx_cluster_vip_held",
			Help: "1 while this node has the VIP on its interface."}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hapbx_cluster_members",
			Help: "Alive memberlist members, this node included."}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "hapbx_cluster_leader_changes_total",
			Help: "Raft leader changes observed by this node."}),
		quorum: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hapbx_cluster_quorum",
			Help: "1 while this node knows a raft leader it recently heard from (or is a leader with a fresh quorum lease)."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "hapbx_cluster_raft_leader",
			Help: "1 while this node is the raft leader."}),
		garpSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "hapbx_cluster_garp_sent_total",
			Help: "Gratuitous ARPs / unsolicited neighbour advertisements sent for the VIP."}),
		syncRecords: prometheus.NewCounter(prometheus.CounterOpts{Name: "hapbx_cluster_state_records_received_total",
			Help: "Shared-state records received from peers (broadcasts and full syncs)."}),
		releaseFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "hapbx_cluster_vip_release_failures_total",
			Help: "Failed attempts to remove the VIP from our interface (retried every lease tick until it is gone)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.vipHeld, m.members, m.leaderChanges, m.quorum, m.isLeader, m.garpSent, m.syncRecords, m.releaseFailures} {
			reg.MustRegister(c)
		}
	}
	return m
}
