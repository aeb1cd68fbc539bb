package proxy

import (
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// target is one next hop.
type target struct {
	backend   string // backend name, "" for a phone or other UA
	addr      string // host:port
	transport string // udp, tcp or tls
	ruri      string // new Request-URI (a phone's Contact), "" to keep it
	trunk     string // the trunk whose provider host this is, "" otherwise
}

type action int

const (
	actReply     action = iota // answer locally with code/reason
	actForward                 // stateful, to the one target
	actBackends                // stateful, to the router's backends, with retry
	actStateless               // ACK for a 2xx: forward statelessly to the target
	actDrop                    // absorb silently (non-2xx ACK, stray ACK)
	actFork                    // stateful, in parallel to every target (an AOR's contacts)
	actTrunk                   // stateful, to a trunk's hosts one after the other
)

type decision struct {
	act     action
	code    int
	reason  string
	target  target
	targets []target     // actFork
	hdrs    []sip.Header // actReply: extra headers (420's Unsupported)
	trunk   string       // actTrunk
}

const branchPrefix = sip.RFC3261BranchMagicCookie + "hpx"

// handle is the entry point for every request sipgo hands over. It runs on
// its own goroutine and must return only when the transaction is settled.
func (p *Proxy) handle(req *sip.Request, tx sip.ServerTransaction) {
	p.m.requests.WithLabelValues(methodLabel(req.Method)).Inc()
	if !p.streamDoor(req, tx) {
		return
	}
	p.take(req, tx)
	p.takeBridgeHeader(req)
	d := p.decide(req)
	if d.act == actForward || d.act == actBackends || d.act == actStateless {
		if p.answerJoined(tx, req) {
			return // its backend died: hapbx answers for it (takeover.go)
		}
	}
	if d.act == actForward || d.act == actBackends {
		if _, tagged := req.To().Params.Get("tag"); tagged {
			if req.Method == sip.BYE {
				p.dialogs.ending(req)
				p.links.drop(req.CallID().Value())
			} else {
				p.links.touch(req.CallID().Value())
			}
			defer p.dialogs.seen(req) // after routing: a BYE may need its dialog
		}
	}
	switch d.act {
	case actForward, actBackends, actFork, actStateless, actTrunk:
		if !p.anchorRequest(tx, req) {
			return
		}
		if req.Method == sip.BYE {
			defer p.releaseMedia(req, "bye")
		}
	}
	switch d.act {
	case actDrop:
	case actReply:
		p.reply(tx, req, d.code, d.reason, d.hdrs...)
	case actStateless:
		p.forwardAck(req, d.target)
	case actForward, actFork, actBackends, actTrunk:
		p.inflight.Add(1)
		p.m.inflight.Inc()
		p.door.pending.Add(1)
		defer p.inflight.Done()
		defer p.m.inflight.Dec()
		defer p.door.pending.Add(-1)
		switch d.act {
		case actForward:
			p.forward(req, tx, []target{d.target}, false)
		case actFork:
			p.forward(req, tx, d.targets, false)
		case actBackends:
			p.forward(req, tx, p.backendTargets(req), true)
		case actTrunk:
			p.toTrunk(req, tx, d.trunk)
		}
	}
}

// decide applies RFC 3261 §16.3 request validation and §16.4 route
// information preprocessing, then picks the next hop. It has no side effect
// other than on req, so it is the unit the fuzz target drives.
func (p *Proxy) decide(req *sip.Request) decision {
	if miss := missingHeader(req); miss != "" {
		p.m.malformed.WithLabelValues("missing_" + miss).Inc()
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: 400, reason: "Bad Request (missing " + miss + ")"}
	}
	if code, reason, why, hdrs := p.sanity(req); code != 0 {
		p.m.malformed.WithLabelValues(why).Inc()
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: code, reason: reason, hdrs: hdrs}
	}
	if cs := req.CSeq(); cs.MethodName != req.Method && !(req.IsAck() && cs.MethodName == sip.ACK) {
		p.m.malformed.WithLabelValues("cseq_method").Inc()
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: 400, reason: "Bad Request (CSeq method does not match)"}
	}
	markReceived(req)

	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		if req.Method == sip.OPTIONS {
			return decision{act: actReply, code: 200, reason: "OK"}
		}
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: 483, reason: "Too Many Hops"}
	}

	tok := p.takeOwnRoutes(req)
	if !p.unaliasRequestURI(req) {
		p.m.refused.WithLabelValues(refusedBadAlias).Inc()
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: 403, reason: "Forbidden (" + refusedText[refusedBadAlias] + ")"}
	}
	if p.looped(req) {
		if req.IsAck() {
			return decision{act: actDrop}
		}
		return decision{act: actReply, code: 482, reason: "Loop Detected"}
	}
	toTrunk, why := p.takeTrunkHeader(req)

	_, toTagged := req.To().Params.Get("tag")
	if req.IsAck() {
		if branch, _ := req.Via().Params.Get("branch"); p.non2xx.has(branch) {
			return decision{act: actDrop} // hop-by-hop ACK of a non-2xx we answered
		}
		if why := p.refusal(req, tok); why != "" {
			p.m.refused.WithLabelValues(why).Inc()
			return decision{act: actDrop}
		}
		if t, ok := p.nextHop(req); ok {
			if p.fromBackend(req) != "" {
				p.raiseAckCSeq(req)
			}
			return decision{act: actStateless, target: t}
		}
		return decision{act: actDrop}
	}
	if req.IsCancel() {
		// sipgo answers CANCELs that match a server transaction before we
		// are called; one that reaches here matches nothing.
		return decision{act: actReply, code: 481, reason: "Call/Transaction Does Not Exist"}
	}
	if why == "" {
		why = p.refusal(req, tok)
	}
	if why != "" {
		p.m.refused.WithLabelValues(why).Inc()
		return decision{act: actReply, code: 403, reason: "Forbidden (" + refusedText[why] + ")"}
	}
	if toTrunk != "" {
		if p.trunks == nil {
			return decision{act: actReply, code: 404, reason: "Not Found (no such trunk)"}
		}
		return decision{act: actTrunk, trunk: toTrunk}
	}
	if route(req) == nil && p.fromBackend(req) != "" {
		// From Asterisk towards a phone: its AOR on our host, or a Contact
		// the registrar knows (then sent to where the phone really is).
		if targets, code, reason, ok := p.locate(req); ok {
			if code != 0 {
				if toTagged {
					return decision{act: actReply, code: 481, reason: "Call/Transaction Does Not Exist"}
				}
				return decision{act: actReply, code: code, reason: reason}
			}
			if toTagged {
				return decision{act: actForward, target: targets[0]}
			}
			return decision{act: actFork, targets: targets}
		}
	}
	if route(req) != nil || toTagged {
		if t, ok := p.nextHop(req); ok {
			t.backend = p.backendAt(t.addr)
			return decision{act: actForward, target: t}
		}
		if toTagged {
			if p.fromBackend(req) != "" {
				return decision{act: actReply, code: 481, reason: "Call/Transaction Does Not Exist"}
			}
			// A UA that ignored Record-Route and Contact and sent an
			// in-dialog request to the proxy's own address: its dialog is
			// with a backend, the one the Call-ID maps to.
			return decision{act: actBackends}
		}
	}
	// An initial request with no Route left.
	if req.Method == sip.OPTIONS && req.Recipient.User == "" && p.isLocal(&req.Recipient) {
		return decision{act: actReply, code: 200, reason: "OK"}
	}
	if p.fromBackend(req) != "" {
		if !p.isLocal(&req.Recipient) {
			if t, ok := p.nextHop(req); ok {
				return decision{act: actForward, target: t}
			}
		}
		return decision{act: actReply, code: 404, reason: "Not Found"}
	}
	if p.draining.Load() {
		return decision{act: actReply, code: 503, reason: "Service Unavailable (shutting down)"}
	}
	return decision{act: actBackends}
}

func missingHeader(req *sip.Request) string {
	switch {
	case req.Via() == nil:
		return "via"
	case req.From() == nil:
		return "from"
	case req.To() == nil:
		return "to"
	case req.CallID() == nil:
		return "call_id"
	case req.CSeq() == nil:
		return "cseq"
	}
	return ""
}

// markReceived adds received and rport to the top Via (RFC 3261 §18.2.1,
// RFC 3581) so responses find a phone behind NAT.
func markReceived(req *sip.Request) {
	src := req.Source()
	host, port, err := net.SplitHostPort(src)
	if err != nil {
		return
	}
	via := req.Via()
	rport, hasRport := via.Params.Get("rport")
	// RFC 3261 §18.2.1: received when the sent-by host differs; RFC 3581
	// §4: with rport, always both.
	if via.Host != host || hasRport {
		setParam(&via.Params, "received", host)
	}
	if hasRport && rport == "" {
		setParam(&via.Params, "rport", port)
	}
}

func setParam(hp *sip.HeaderParams, k, v string) {
	if *hp == nil {
		*hp = sip.NewParams()
	}
	hp.Add(k, v)
}

// backendAt names the backend listening at addr, if any: in-dialog
// requests to a backend get the same hop timer and passive health report
// as new ones.
func (p *Proxy) backendAt(addr string) string {
	for _, b := range p.backends.Load().list {
		if b.Address == addr {
			return b.Name
		}
	}
	return ""
}

// nextHop is the top Route if any, else the Request-URI (loose routing).
func (p *Proxy) nextHop(req *sip.Request) (target, bool) {
	u := &req.Recipient
	if r := req.Route(); r != nil {
		u = &r.Address
	} else if p.isLocal(u) {
		return target{}, false
	}
	return uriTarget(u, req.Transport())
}

func uriTarget(u *sip.Uri, _ string) (target, bool) {
	if u.Host == "" {
		return target{}, false
	}
	tr := "udp"
	if v, ok := u.UriParams.Get("transport"); ok && v != "" {
		tr = strings.ToLower(v)
	}
	if u.IsEncrypted() {
		tr = "tls"
	}
	switch tr {
	case "udp", "tcp", "tls":
	default:
		return target{}, false
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if tr == "tls" {
			port = 5061
		}
	}
	return target{addr: net.JoinHostPort(strings.Trim(u.Host, "[]"), strconv.Itoa(port)), transport: tr}, true
}

// loopHash covers what changes when a request legitimately spirals
// (RFC 3261 §16.6 step 8): a request that comes back with the same hash has
// looped.
func loopHash(req *sip.Request) string {
	h := fnv.New64a()
	h.Write([]byte(req.Recipient.String()))
	if t, ok := req.From().Params.Get("tag"); ok {
		h.Write([]byte(t))
	}
	h.Write([]byte{0})
	if t, ok := req.To().Params.Get("tag"); ok {
		h.Write([]byte(t))
	}
	h.Write([]byte{0})
	h.Write([]byte(req.CallID().Value()))
	h.Write([]byte(strconv.FormatUint(uint64(req.CSeq().SeqNo), 10)))
	return strconv.FormatUint(h.Sum64(), 36)
}

func (p *Proxy) looped(req *sip.Request) bool {
	var lh string
	for _, h := range req.GetHeaders("Via") {
		v, ok := h.(*sip.ViaHeader)
		if !ok || !p.localHosts[strings.ToLower(v.Host)] {
			continue
		}
		b, _ := v.Params.Get("branch")
		rest, ok := strings.CutPrefix(b, branchPrefix)
		if !ok {
			continue
		}
		if lh == "" {
			lh = loopHash(req)
		}
		if got, _, _ := strings.Cut(rest, "."); got == lh {
			return true
		}
	}
	return false
}

func (p *Proxy) backendTargets(req *sip.Request) []target {
	set := p.backends.Load()
	cid := req.CallID().Value()
	var names []string
	if b := p.dialogs.backendOf(req); b != "" {
		names = append(names, b) // an in-dialog request that lost its route
	} else if b, ok := p.challenged.get(cid); ok && p.routable(b) {
		names = append(names, b) // the authenticated re-send goes where the nonce is
	}
	if p.router != nil {
		for _, n := range p.trunkBackends(req, p.router.Candidates(cid)) {
			if len(names) == 0 || n != names[0] {
				names = append(names, n)
			}
		}
	}
	out := make([]target, 0, len(names))
	for _, n := range names {
		if b, ok := set.byName[n]; ok {
			out = append(out, target{backend: b.Name, addr: b.Address, transport: b.Transport})
		}
	}
	return out
}

// awaitBackend holds a new request that found no healthy backend (none not
// in tried) for up to no_backend_wait, polling the router, so that a call
// placed while a cold standby starts is set up late rather than refused
// (respond has sent an INVITE's 100 Trying: no retransmissions meanwhile);
// the caller's CANCEL, a drain or an in-dialog request end the wait at once.
// While the door sheds new work (shedReason) nothing is held, and what is
// held is let go when shedding starts: a held request is new work too, and
// a storm's held requests filled the memory. Nor is a request held while
// hapbx is strained when a backend that failed it is still routable: its
// failure was excused (hapbx's own load), so no other backend comes up to
// take it (a third of those pending in the REGISTER storm waited here for
// a backend that was up all along). A request whose backends are down is
// held even while strained: that is a cold standby being started, and the
// strain is the failover's own burst (the lab's cold failover under -race
// answered 57 of 120 calls 503 while pbx2 was started).
func (p *Proxy) awaitBackend(tx sip.ServerTransaction, req *sip.Request, tried map[string]bool, cancelled <-chan struct{}) []target {
	if p.cfg.NoBackendWait <= 0 || p.draining.Load() || p.shedReason() != "" {
		return nil
	}
	if p.strainedSince(time.Now()) && p.anyRoutable(tried) {
		return nil
	}
	if _, inDialog := req.To().Params.Get("tag"); inDialog {
		return nil
	}
	deadline := time.NewTimer(p.cfg.NoBackendWait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	// With a router that announces its changes, the router is asked again
	// when it has changed, and every recheckTicks ticks for what it does
	// not announce (a trunk's backends reloaded); the ticks still watch
	// drain and shedding.
	notifier, _ := p.router.(ChangeNotifier)
	var changed <-chan struct{}
	if notifier != nil {
		changed = notifier.Changed()
	}
	const recheckTicks = 20
	for ticks := 1; ; ticks++ {
		check := false
		select {
		case <-changed:
			changed, check = notifier.Changed(), true
			ticks = 0
		case <-tick.C:
			check = notifier == nil || ticks%recheckTicks == 0
		case <-cancelled:
			return nil
		case <-tx.Done():
			return nil
		case <-p.abort:
			return nil
		case <-deadline.C:
			return nil
		}
		if check {
			var fresh []target
			for _, t := range p.backendTargets(req) {
				if !tried[t.backend] {
					fresh = append(fresh, t)
				}
			}
			if len(fresh) > 0 {
				p.m.held.Inc()
				return fresh
			}
		}
		if p.draining.Load() || p.shedReason() != "" {
			return nil // stopping or shedding: answer 503 now, not after the wait
		}
	}
}

func (p *Proxy) reply(tx sip.ServerTransaction, req *sip.Request, code int, reason string, hdrs ...sip.Header) {
	p.replyBody(tx, req, code, reason, nil, hdrs...)
}

// replyBody is reply with a body (nil: none).
func (p *Proxy) replyBody(tx sip.ServerTransaction, req *sip.Request, code int, reason string, body []byte, hdrs ...sip.Header) {
	if code >= 300 && req.IsInvite() && req.Via() != nil {
		// Its hop-by-hop ACK is absorbed (an RFC 2543 one too: rfc2543.go).
		b, _ := req.Via().Params.Get("branch")
		p.non2xx.put(b, "")
	}
	res := sip.NewResponseFromRequest(req, code, reason, body)
	if code > 100 && req.To() != nil {
		if _, ok := req.To().Params.Get("tag"); !ok {
			res.To().Params.Add("tag", sip.GenerateTagN(10))
		}
	}
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if err := tx.Respond(res); err != nil {
		p.log.Debug("reply failed", zap.Int("code", code), zap.Error(err))
		return
	}
	p.m.responses.WithLabelValues(methodLabel(req.Method), codeLabel(code)).Inc()
}

func (p *Proxy) replyUnavailable(tx sip.ServerTransaction, req *sip.Request) {
	ra := sip.NewHeader("Retry-After", strconv.Itoa(int(p.cfg.RetryAfter.Seconds())))
	p.reply(tx, req, 503, "Service Unavailable", ra)
}
