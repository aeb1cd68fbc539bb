package proxy

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	inflight  prometheus.Gauge
	latency   *prometheus.HistogramVec
	selected  *prometheus.CounterVec
	retries   *prometheus.CounterVec
	malformed *prometheus.CounterVec
	// storeRefresh counts REGISTER refreshes answered from the binding store.
	storeRefresh prometheus.Counter
	forks        prometheus.Counter
	held         prometheus.Counter
	timerC       prometheus.Counter
	placerDown   prometheus.Counter
	// refused counts requests the trust rules sent nowhere (trust.go).
	refused *prometheus.CounterVec
	// large counts requests over the UDP budget to a UDP next hop (size.go).
	large *prometheus.CounterVec
	// conns, connRefused and connClosed follow the TCP and TLS connections
	// accepted from phones and trunks (conns.go).
	conns       prometheus.Gauge
	connRefused *prometheus.CounterVec
	connClosed  *prometheus.CounterVec
	// strays counts responses that matched no client transaction (stray.go).
	strays *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_requests_total",
			Help: "SIP requests received, by method.",
		}, []string{"method"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_responses_total",
			Help: "SIP responses sent upstream (relayed or generated), by request method and status code.",
		}, []string{"method", "code"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_proxy_transactions_in_flight",
			Help: "Server transactions being forwarded now.",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hapbx_proxy_forward_latency_seconds",
			Help:    "Time from receiving a request to the first response from the next hop, by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
		selected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_backend_selected_total",
			Help: "Initial requests sent to each backend (retries included).",
		}, []string{"backend"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_retries_total",
			Help: "Initial requests moved to the next backend (or provider host of a trunk), by the backend that failed (trunk:NAME for a trunk's host) and why.",
		}, []string{"backend", "reason"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_malformed_total",
			Help: "SIP messages rejected (400) or dropped as malformed or oversize, by reason.",
		}, []string{"reason"}),
		storeRefresh: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_register_store_answers_total",
			Help: "REGISTER refreshes answered 200 from the binding store because no backend could take them.",
		}),
		forks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_forks_total",
			Help: "Requests forked in parallel to several contacts of one AOR.",
		}),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_held_requests_total",
			Help: "New requests that found no healthy backend, waited (sip.no_backend_wait) and were then routed.",
		}),
		timerC: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_timer_c_total",
			Help: "Proxied INVITEs cancelled because they rang longer than sip.timer_c (RFC 3261 Timer C).",
		}),
		placerDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_placer_down_cancels_total",
			Help: "Ringing calls a backend placed (to a phone or provider) cancelled by hapbx because that backend was declared down.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_refused_total",
			Help: "Requests refused (403, or an ACK dropped) because their sender may not make hapbx send them where they lead, by reason.",
		}, []string{"reason"}),
		large: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_large_requests_total",
			Help: "Requests larger than 1300 bytes for a UDP next hop, by how they went: tcp (the backend listens on TCP), udp (one datagram) or refused (513, too large for a datagram).",
		}, []string{"how"}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_proxy_connections",
			Help: "TCP and TLS connections accepted from phones and trunks and open now.",
		}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_connections_refused_total",
			Help: "TCP and TLS connections closed at accept, by the limit they hit: max_connections or max_per_source (sip.tcp).",
		}, []string{"reason"}),
		connClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_connections_closed_total",
			Help: "TCP and TLS connections hapbx closed, by reason: read_timeout (a message not complete in time), idle_timeout (silent, no dialog on it), tls_handshake (failed or too slow), unframed (a Content-Length missing, repeated or not a number: the message was refused), too_large (a message over max_message_size).",
		}, []string{"reason"}),
		strays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_stray_responses_total",
			Help: "Responses that matched no client transaction (the twin's, after a failover; late answers), by outcome: forwarded statelessly, held (a final's first copy: its retransmission goes up), dropped (not the pair's own Via, a provisional, a 487) or failed (not sent).",
		}, []string{"outcome"}),
	}
	for _, r := range []string{"max_connections", "max_per_source"} {
		m.connRefused.WithLabelValues(r)
	}
	for _, r := range []string{"read_timeout", "idle_timeout", "tls_handshake", "unframed", "too_large"} {
		m.connClosed.WithLabelValues(r)
	}
	reg.MustRegister(m.requests, m.responses, m.inflight, m.latency, m.selected, m.retries, m.malformed, m.storeRefresh, m.forks, m.held, m.timerC, m.placerDown, m.refused, m.large,
		m.conns, m.connRefused, m.connClosed, m.strays)
	return m
}
