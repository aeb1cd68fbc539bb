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

	sessions, packets, bytes, dropped *prometheus.Desc
}

func newMetrics(r *Relay) *metrics {
	return &metrics{
		r: r,
		sdpErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_sdp_errors_total", Help: "SDP bodies that could not be parsed or anchored."}),
		portExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_port_exhausted_total", Help: "Anchors refused for lack of ports or max_sessions."}),
		idleEnded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_media_idle_timeouts_total", Help: "Sessions ended by idle_timeout."}),
		sessions: prometheus.NewDesc("hapbx_media_sessions", "Relay sessions in progress.", nil, nil),
		packets:  prometheus.NewDesc("hapbx_media_packets_total", "RTP and RTCP packets relayed, by direction.", []string{"dir"}, nil),
		bytes:    prometheus.NewDesc("hapbx_media_bytes_total", "RTP and RTCP bytes relayed.", nil, nil),
		dropped:  prometheus.NewDesc("hapbx_media_dropped_total", "Packets received but not relayed, by reason.", []string{"reason"}, nil),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.sdpErrors.Describe(ch)
	m.portExhausted.Describe(ch)
	m.idleEnded.Describe(ch)
	ch <- m.sessions
	ch <- m.packets
	ch <- m.bytes
	ch <- m.dropped
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.sdpErrors.Collect(ch)
	m.portExhausted.Collect(ch)
	m.idleEnded.Collect(ch)
	m.r.mu.Lock()
	n := len(m.r.sessions)
	m.r.mu.Unlock()
	var pkts [2]uint64
	var bytes uint64
	var drops [nDrops]uint64
	for _, w := range m.r.workers {
		w.mu.Lock()
		pkts[0] += w.pkts[0]
		pkts[1] += w.pkts[1]
		bytes += w.bytes
		for i := range drops {
			drops[i] += w.drops[i]
		}
		w.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(m.sessions, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(pkts[LegA]), "a_to_b")
	ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(pkts[LegB]), "b_to_a")
	ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(bytes))
	for i, d := range drops {
		ch <- prometheus.MustNewConstMetric(m.dropped, prometheus.CounterValue, float64(d), dropNames[i])
	}
}
