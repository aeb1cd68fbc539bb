package proxy

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
)

// The door: what a request must pass before the proxy makes any state for
// it (Door, WithDoor).
//
//   - Flood guard: every request from a source that is neither a backend
//     nor exempt (the twin) is counted per source address; past the rate the
//     request is answered 503 once, then the source is ignored for a
//     cool-down (package limits' Guard decides).
//   - Shedding: while the in-flight state is near the memory budget, or
//     pending transactions reach max_transactions, a new INVITE, REGISTER,
//     SUBSCRIBE or MESSAGE gets 503 with Retry-After. In-dialog requests,
//     CANCEL, ACK, BYE, OPTIONS and responses pass: they end or keep what
//     exists. A request counts as pending from the moment its handler runs,
//     so a burst may overshoot max_transactions by the requests read
//     meanwhile (milliseconds' worth). A retransmission of a request the
//     door let in is never shed: its transaction goes on, and a 503 to
//     the retransmission would tell the phone the opposite of the answer
//     its transaction is about to get (a REGISTER refused whose binding
//     is then stored, an INVITE refused whose call is then set up).
//
// Over UDP both happen in the transport's read filter, on the datagram's
// bytes, before sipgo parses it or makes a server transaction: a datagram
// is parsed here only to be answered (the 503s, statelessly, from the
// listener's socket) or, while shedding, to tell an in-dialog request from
// a new one. Over TCP and TLS a read is a piece of a stream, not a
// message: there the same checks run first thing in handle, after sipgo
// made its server transaction but before the proxy makes any state (a
// blocked source's request is dropped by ending that transaction unanswered).
//
// Local overload never counts against a backend: when the limits report
// hapbx strained (short of memory, CPU or UDP receive buffer) at any moment
// between the send of a request and its failure, or when a send fails for
// a reason of this host (no buffer space, too many open files), the
// backend's failure is not reported to health (excused, counted).

// Load is hapbx's own load (package limits' Budget).
type Load interface {
	// Shedding reports the in-flight state near the memory budget.
	Shedding() bool
	// StrainedSince reports hapbx short of memory, CPU or socket buffers at
	// any moment since t (about: the signs last a few seconds).
	StrainedSince(t time.Time) bool
}

// FloodGuard rates requests per source address (package limits' Guard).
type FloodGuard interface {
	// Allow counts a request from src: ok to take it; otherwise answer it
	// (503, once per block, to the first answerable request: not an ACK)
	// or drop it.
	Allow(src netip.Addr, answerable bool) (ok, answer bool)
}

// Door is what WithDoor installs; a zero field checks nothing.
type Door struct {
	Load            Load
	Flood           FloodGuard
	MaxTransactions int
	// Exempt are sources the flood guard never counts besides the
	// backends and the trunks' ACL sources (WithTrunks): the twin proxy.
	Exempt []netip.Addr
}

// WithDoor installs the admission checks of the door.
func WithDoor(d Door) Option {
	return func(p *Proxy) {
		p.door.Door = d
		p.door.exempt = map[netip.Addr]bool{}
		for _, a := range d.Exempt {
			p.door.exempt[a.Unmap()] = true
		}
	}
}

type door struct {
	Door
	exempt   map[netip.Addr]bool
	pending  atomic.Int64 // requests being forwarded
	takenMu  sync.Mutex
	taken    map[string]struct{}        // server transaction keys of the new requests let in over UDP, until they end
	backends atomic.Pointer[backendIPs] // the backends' addresses, by backend set
	shed     *prometheus.CounterVec
	excused  *prometheus.CounterVec
	// unanswered counts the 503s not sent for a full queue (doorwriter.go).
	unanswered *prometheus.CounterVec
	replies    chan doorReply // the door's 503s waiting for the socket (doorwriter.go)
}

type backendIPs struct {
	set *backendSet
	ips map[netip.Addr]bool
}

// Reasons of hapbx_proxy_shed_total and hapbx_proxy_failures_excused_total:
// fixed sets.
const (
	shedMemory       = "memory"
	shedTransactions = "transactions"
	shedFlood        = "flood"

	excusedStrained   = "strained"
	excusedLocalError = "local_error"
)

func newDoorMetrics(d *door, reg prometheus.Registerer) {
	d.shed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapbx_proxy_shed_total",
		Help: "Requests answered 503 at the door, before any state was made: memory (in-flight state near limits.memory), transactions (limits.max_transactions pending), flood (a source past limits.flood.rate, answered once; what it sends next is dropped, hapbx_limits_flood_dropped_total).",
	}, []string{"reason"})
	d.excused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapbx_proxy_failures_excused_total",
		Help: "Backend failures not reported to health because hapbx itself was at fault: strained (short of memory, CPU or UDP receive buffer), local_error (a send failed for a reason of this host).",
	}, []string{"reason"})
	d.unanswered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hapbx_proxy_shed_unanswered_total",
		Help: "Requests shed at the door over UDP whose 503 was not sent because the door's writer was saturated (its queue full): the caller retransmits or gives up; by the reason they were shed (as hapbx_proxy_shed_total, which counts them too).",
	}, []string{"reason"})
	for _, r := range []string{shedMemory, shedTransactions, shedFlood} {
		d.shed.WithLabelValues(r)
		d.unanswered.WithLabelValues(r)
	}
	for _, r := range []string{excusedStrained, excusedLocalError} {
		d.excused.WithLabelValues(r)
	}
	reg.MustRegister(d.shed, d.excused, d.unanswered)
}

// doorFilter is the transport read filter: the door for UDP, then the
// intake checks (sanity.go).
func (p *Proxy) doorFilter(info sip.TransportReadProps, data []byte) ([]byte, error) {
	if strings.EqualFold(info.Transport, "udp") && !p.udpDoor(info, data) {
		return nil, nil // nil, not an error: an error stops sipgo's listener
	}
	return p.sanityFilter(info, data)
}

// udpDoor reports whether a datagram may go in; it answers those that must
// be answered.
func (p *Proxy) udpDoor(info sip.TransportReadProps, data []byte) bool {
	method, ok := requestMethod(data)
	if !ok {
		return true // a response, a keepalive, or garbage for the parser to refuse
	}
	ua, _ := info.RemoteAddr.(*net.UDPAddr)
	if ua == nil {
		return true
	}
	src := ua.AddrPort().Addr().Unmap()
	if p.door.Flood != nil && !p.exemptSource(src) {
		if ok, answer := p.door.Flood.Allow(src, method != "ACK"); !ok {
			if answer {
				p.door.shed.WithLabelValues(shedFlood).Inc()
				p.unavailableAtDoor(info, data, nil, shedFlood)
			}
			return false
		}
	}
	if !sheddable(method) {
		return true
	}
	reason := p.shedReason()
	if reason == "" {
		return true
	}
	msg, err := sip.ParseMessage(data)
	req, _ := msg.(*sip.Request)
	if err != nil || req == nil || inDialog(req) || p.isTaken(req) {
		return true // the parser refuses it, it keeps what exists, or its transaction goes on
	}
	p.door.shed.WithLabelValues(reason).Inc()
	p.unavailableAtDoor(info, data, req, reason)
	return false
}

// streamDoor is the door in handle: for a request that came over TCP or
// TLS, all of it; over UDP (past udpDoor already) the shedding check
// again. Under a storm the requests udpDoor let in wait for a goroutine
// of their own for a while (hapbx short of CPU); handle is where one
// starts to count as pending. Those that come while shedding, or past
// max_transactions, are refused here: else they became pending after
// the door had closed (4 196 pending at max_transactions 3 000, memory
// growing while shedding). This is the first request of its server
// transaction (sipgo hands a retransmission to the transaction, not to
// handle), so its 503 contradicts no answer. A refused one is answered
// 503 or, from a blocked source, its transaction ended unanswered.
func (p *Proxy) streamDoor(req *sip.Request, tx sip.ServerTransaction) bool {
	if p.door.Flood != nil && !strings.EqualFold(req.Transport(), "udp") { // over UDP: udpDoor counted it
		if ap, err := netip.ParseAddrPort(req.Source()); err == nil && !p.exemptSource(ap.Addr().Unmap()) {
			if ok, answer := p.door.Flood.Allow(ap.Addr().Unmap(), !req.IsAck()); !ok {
				if req.IsAck() {
					return false
				}
				if !answer {
					tx.Terminate()
					return false
				}
				p.door.shed.WithLabelValues(shedFlood).Inc()
				p.replyUnavailable(tx, req)
				return false
			}
		}
	}
	if !sheddable(string(req.Method)) || inDialog(req) {
		return true
	}
	if reason := p.shedReason(); reason != "" {
		p.door.shed.WithLabelValues(reason).Inc()
		p.replyUnavailable(tx, req)
		return false
	}
	return true
}

// take remembers a new request let in over UDP until its transaction
// ends, so that the door does not shed its retransmissions (isTaken).
// Only with something to shed by.
func (p *Proxy) take(req *sip.Request, tx sip.ServerTransaction) {
	if p.door.Load == nil && p.door.MaxTransactions <= 0 || !strings.EqualFold(req.Transport(), "udp") ||
		!sheddable(string(req.Method)) || inDialog(req) {
		return
	}
	key, err := sip.ServerTxKeyMake(req)
	if err != nil {
		return
	}
	p.door.takenMu.Lock()
	if p.door.taken == nil {
		p.door.taken = map[string]struct{}{}
	}
	p.door.taken[key] = struct{}{}
	p.door.takenMu.Unlock()
	if !tx.OnTerminate(func(string, error) { p.untake(key) }) {
		p.untake(key) // already over
	}
}

func (p *Proxy) untake(key string) {
	p.door.takenMu.Lock()
	delete(p.door.taken, key)
	p.door.takenMu.Unlock()
}

// isTaken reports a retransmission of a request let in (take) whose
// transaction has not ended.
func (p *Proxy) isTaken(req *sip.Request) bool {
	key, err := sip.ServerTxKeyMake(req)
	if err != nil {
		return false
	}
	p.door.takenMu.Lock()
	_, ok := p.door.taken[key]
	p.door.takenMu.Unlock()
	return ok
}

// shedReason says why new work must be refused now, "" when it need not.
func (p *Proxy) shedReason() string {
	switch {
	case p.door.Load != nil && p.door.Load.Shedding():
		return shedMemory
	case p.door.MaxTransactions > 0 && p.door.pending.Load() >= int64(p.door.MaxTransactions):
		return shedTransactions
	}
	return ""
}

// sheddable are the methods that start new work.
func sheddable(method string) bool {
	switch method {
	case "INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE":
		return true
	}
	return false
}

func inDialog(req *sip.Request) bool {
	if to := req.To(); to != nil {
		_, tagged := to.Params.Get("tag")
		return tagged
	}
	return false
}

// requestMethod reads the method of a request's start line without
// parsing the rest; ok is false for a response or anything too short to
// be a request.
func requestMethod(data []byte) (string, bool) {
	if len(data) < 16 || bytes.HasPrefix(data, []byte("SIP/")) {
		return "", false
	}
	sp := bytes.IndexByte(data[:min(len(data), 32)], ' ')
	if sp <= 0 {
		return "", false
	}
	m := data[:sp]
	// The methods the door cares about, without an allocation; any other
	// token is still a request (counted by the flood guard).
	for _, known := range []string{"INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE", "ACK"} {
		if string(m) == known {
			return known, true
		}
	}
	return "other", true
}

// unavailableAtDoor answers a datagram 503 with Retry-After statelessly,
// from the listener's socket by the door's writer (doorwriter.go); req is
// the datagram parsed, nil to parse it here; reason is why it was shed.
// The hop-by-hop ACK of an INVITE so answered is absorbed later.
func (p *Proxy) unavailableAtDoor(info sip.TransportReadProps, data []byte, req *sip.Request, reason string) {
	if req == nil {
		msg, err := sip.ParseMessage(data)
		if req, _ = msg.(*sip.Request); err != nil || req == nil || missingHeader(req) != "" {
			return
		}
	}
	req.SetTransport("UDP")
	req.SetSource(info.RemoteAddr.String())
	res := sip.NewResponseFromRequest(req, 503, "Service Unavailable", nil)
	res.AppendHeader(sip.NewHeader("Retry-After", strconv.Itoa(int(p.cfg.RetryAfter.Seconds()))))
	res.SetDestination(info.RemoteAddr.String())
	c := p.ua.TransportLayer().Pool("udp").Get(info.LocalAddr.String())
	if c == nil {
		return
	}
	r := doorReply{conn: c, res: res, method: req.Method}
	if req.IsInvite() {
		r.branch, _ = req.Via().Params.Get("branch")
	}
	if !p.queueDoorReply(r) {
		p.door.unanswered.WithLabelValues(reason).Inc()
	}
}

// exemptSource reports a source the flood guard must not count: a backend
// (by address, as trust.go tells them), a trunk's ACL source or one of
// Door.Exempt.
func (p *Proxy) exemptSource(a netip.Addr) bool {
	if p.door.exempt[a] || p.trunkSource(a) {
		return true
	}
	set := p.backends.Load()
	ips := p.door.backends.Load()
	if ips == nil || ips.set != set {
		ips = &backendIPs{set: set, ips: map[netip.Addr]bool{}}
		for host := range set.byHost {
			if ip, err := netip.ParseAddr(host); err == nil {
				ips.ips[ip.Unmap()] = true
			}
		}
		p.door.backends.Store(ips)
	}
	return ips.ips[a]
}

// excused reports (and counts) a backend failure that is hapbx's own
// doing, not to be held against the backend: hapbx strained at any moment
// since the failed request was sent (a transaction sent during a flood
// times out 32 s later, when the flood is over: the backend was as loaded
// as hapbx let it be), or a send that failed for a reason of this host.
func (p *Proxy) excused(sent time.Time, reason string) bool {
	switch {
	case strings.HasPrefix(reason, localFault):
		p.door.excused.WithLabelValues(excusedLocalError).Inc()
		return true
	case p.strainedSince(sent):
		p.door.excused.WithLabelValues(excusedStrained).Inc()
		return true
	}
	return false
}

// strainedSince reports hapbx strained at any moment since t.
func (p *Proxy) strainedSince(t time.Time) bool {
	return p.door.Load != nil && p.door.Load.StrainedSince(t)
}

// localFault marks the reason of a send that failed for a reason of this
// host (transportFailure).
const localFault = "local: "

// transportFailure is the failure reason of a request that could not be
// sent: marked localFault when this host ran out of something (socket
// buffers, file descriptors, memory), which says nothing of the backend.
func transportFailure(err error) string {
	for _, e := range []error{syscall.ENOBUFS, syscall.EAGAIN, syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return localFault + "transport: " + err.Error()
		}
	}
	return "transport: " + err.Error()
}
