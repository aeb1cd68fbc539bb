package trunk

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hapbx_trunk_* series, labelled by trunk name (from the
// configuration, never from the network). One set per registry, shared by
// every trunk's registration and keepalive.
type Metrics struct {
	registered    *prometheus.GaugeVec
	expiry        *prometheus.GaugeVec
	registrations *prometheus.CounterVec
	hostsUp       *prometheus.GaugeVec
	keepalives    *prometheus.CounterVec
}

// Results of hapbx_trunk_registrations_total and hapbx_trunk_keepalives_total.
const (
	resultOK       = "ok"
	resultRejected = "rejected" // a final error response
	resultTimeout  = "timeout"  // no final response in time, or a transport error
)

// NewMetrics registers the trunk metrics on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		registered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_trunk_registered",
			Help: "1 while the registration at the trunk's provider is in force.",
		}, []string{"trunk"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_trunk_registration_expiry_timestamp_seconds",
			Help: "When the registration at the trunk's provider runs out (Unix time).",
		}, []string{"trunk"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_trunk_registrations_total",
			Help: "REGISTER transactions to a trunk's provider by result (ok, rejected, timeout); a challenge answered counts once.",
		}, []string{"trunk", "result"}),
		hostsUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_trunk_hosts_up",
			Help: "The trunk's provider hosts answering the OPTIONS keepalive.",
		}, []string{"trunk"}),
		keepalives: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_trunk_keepalives_total",
			Help: "OPTIONS keepalives to a trunk's provider hosts by result (ok, timeout).",
		}, []string{"trunk", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.registered, m.expiry, m.registrations, m.hostsUp, m.keepalives} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
