package media

import "github.com/prometheus/client_golang/prometheus"

// metrics is a prometheus.Collector: the data path only bumps plain counters
// in its worker (under the lock it already holds), and Collect sums them at
// scrape time, so a relayed packet costs no atomic or metric call.
type metrics struct {
	r             *Relay
	sdpErrors     prometheus.Counter
	portExhausted prometheus.Counter
	idleEnded     prometheus.Counter
	updateRefused *prometheus.CounterVec

	sessions, packets, bytes, dropped, lost, jitter *prometheus.Desc
}

func newMetrics(r *Relay) *metrics {
	m := &metrics{
		r: r,
		sdpErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_sdp_errors_total", Help: "SDP bodies that could not be parsed or anchored."}),
		portExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_port_exhausted_total", Help: "Anchors refused for lack of ports or max_sessions."}),
		idleEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_idle_timeouts_total", Help: "Sessions ended by idle_timeout."}),
		updateRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_media_updates_refused_total",
			Help: "SDP of a call with a relay session (re-INVITE, UPDATE) that could not be anchored; the session was kept unchanged. By reason: bad_sdp, no_ports."},
			[]string{"reason"}),
		sessions: prometheus.NewDesc("hapbx_media_sessions", "Relay sessions in progress.", nil, nil),
		packets:  prometheus.NewDesc("hapbx_media_packets_total", "RTP and RTCP packets relayed, by direction.", []string{"dir"}, nil),
		bytes:    prometheus.NewDesc("hapbx_media_bytes_total", "RTP and RTCP bytes relayed.", nil, nil),
		dropped:  prometheus.NewDesc("hapbx_media_dropped_total", "Packets received but not relayed, by reason.", []string{"reason"}, nil),
		lost: prometheus.NewDesc("hapbx_media_lost_packets_total",
			"RTP packets lost before reaching the relay (RFC 3550 sequence gaps), by the leg that sent them.", []string{"leg"}, nil),
		jitter: prometheus.NewDesc("hapbx_media_jitter_seconds",
			"RFC 3550 interarrival jitter of each RTP stream direction, observed when its session ends, by the leg that sent it.", []string{"leg"}, nil),
	}
	for _, reason := range []string{"bad_sdp", "no_ports"} {
		m.updateRefused.WithLabelValues(reason)
	}
	return m
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.sdpErrors.Describe(ch)
	m.portExhausted.Describe(ch)
	m.idleEnded.Describe(ch)
	m.updateRefused.Describe(ch)
	ch <- m.sessions
	ch <- m.packets
	ch <- m.bytes
	ch <- m.dropped
	ch <- m.lost
	ch <- m.jitter
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.sdpErrors.Collect(ch)
	m.portExhausted.Collect(ch)
	m.idleEnded.Collect(ch)
	m.updateRefused.Collect(ch)
	m.r.mu.Lock()
	n := len(m.r.sessions)
	m.r.mu.Unlock()
	var pkts [2]uint64
	var bytes uint64
	var drops [nDrops]uint64
	var lost [2]uint64
	var jitCount [2][len(jitterBuckets) + 1]uint64
	var jitSum [2]float64
	for _, w := range m.r.workers {
		w.mu.Lock()
		pkts[0] += w.pkts[0]
		pkts[1] += w.pkts[1]
		bytes += w.bytes
		for i := range drops {
			drops[i] += w.drops[i]
		}
		for l := range 2 {
			lost[l] += w.lost[l]
			jitSum[l] += w.jitSum[l]
			for i := range jitCount[l] {
				jitCount[l][i] += w.jitCount[l][i]
			}
		}
		w.mu.Unlock()
	}
	for _, l := range []Leg{LegA, LegB} {
		ch <- prometheus.MustNewConstMetric(m.lost, prometheus.CounterValue, float64(lost[l]), l.String())
		var cum uint64
		buckets := make(map[float64]uint64, len(jitterBuckets))
		for i, ub := range jitterBuckets {
			cum += jitCount[l][i]
			buckets[ub] = cum
		}
		cum += jitCount[l][len(jitterBuckets)]
		ch <- prometheus.MustNewConstHistogram(m.jitter, cum, jitSum[l], buckets, l.String())
	}
	ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(pkts[LegA]), "a_to_b")
	ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(pkts[LegB]), "b_to_a")
	ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(bytes))
	for i, d := range drops {
		ch <- prometheus.MustNewConstMetric(m.dropped, prometheus.CounterValue, float64(d), dropNames[i])
	}
}
