package proxy

import (
	"context"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// forward runs one server transaction (RFC 3261 §16.6-16.7): several
// targets without retry are tried at once (an AOR's contacts), otherwise
// one after the other until one gives an answer worth relaying. Backends
// are retried only while retry is set, nothing beyond 100 Trying has been
// relayed and the caller has not cancelled; with none healthy (retry), a
// REGISTER refresh the store can answer is answered from it, anything
// else waits up to no_backend_wait for a backend.
func (p *Proxy) forward(req *sip.Request, tx sip.ServerTransaction, targets []target, retry bool) {
	if retry && p.refuseBinding(tx, req) {
		return
	}
	cancelled := watchCancel(tx, req)
	if len(targets) == 0 && p.answerFromStore(tx, req) {
		return
	}
	// No 100 Trying yet (trying.go): the caller retransmits the INVITE
	// until a backend has it, so that the twin of a proxy that dies before
	// gets the retransmission.
	done := p.respond(req, tx, targets, retry, cancelled)
	if isClosed(cancelled) {
		p.releaseMedia(req, "cancel")
		return // sipgo has answered 487 to the caller
	}
	if done {
		return
	}
	if p.answerFromStore(tx, req) {
		return // no backend took the REGISTER: a refresh the store can answer
	}
	if _, inDialog := req.To().Params.Get("tag"); inDialog {
		// The backend of this dialog is gone. A 408 ends the dialog for the
		// phone (RFC 3261 §12.2.1.2, §15.1.1) now rather than after 32 s.
		p.reply(tx, req, 408, "Request Timeout")
		return
	}
	if req.IsInvite() {
		p.releaseMedia(req, "no backend")
	}
	p.replyUnavailable(tx, req)
}

// respond runs the response contexts of req and reports whether one of
// them settled the transaction: one over every target when forking, else
// one per target in turn, then (retry) more as backends come up.
func (p *Proxy) respond(req *sip.Request, tx sip.ServerTransaction, targets []target, retry bool, cancelled <-chan struct{}) bool {
	start := time.Now()
	st := p.newTxState(req)
	if !retry && len(targets) > 1 {
		p.m.forks.Inc()
		rc := &responseContext{p: p, req: req, tx: tx, st: st, cancelled: cancelled, start: start, forked: true}
		return rc.run(targets) == settled
	}
	tried := map[string]bool{}
	for {
		for i, t := range targets {
			tried[t.backend] = true
			rc := &responseContext{p: p, req: req, tx: tx, st: st, cancelled: cancelled, start: start, more: retry && i < len(targets)-1}
			if rc.run([]target{t}) == settled || isClosed(cancelled) {
				return true
			}
			if rc.down {
				delete(tried, t.backend)
			}
		}
		// Every backend tried has failed (or none is healthy): wait for
		// another to come up. A trunk's hosts are all there is.
		if !retry || len(targets) > 0 && targets[0].trunk != "" {
			return false
		}
		if req.IsInvite() {
			// No backend has the INVITE while it is held: no use in the
			// caller's retransmissions meanwhile.
			st.trying(p, tx, req)
		}
		if targets = p.awaitBackend(tx, req, tried, cancelled); len(targets) == 0 {
			return false
		}
	}
}

// watchCancel returns a channel closed when the caller CANCELs the INVITE
// of tx (never closed for other methods).
func watchCancel(tx sip.ServerTransaction, req *sip.Request) <-chan struct{} {
	c := make(chan struct{})
	if !req.IsInvite() {
		return c
	}
	var once sync.Once
	if !tx.OnCancel(func(*sip.Request) { once.Do(func() { close(c) }) }) {
		once.Do(func() { close(c) }) // already cancelled (or ended)
	}
	return c
}

func isClosed(c <-chan struct{}) bool {
	if c == nil {
		return true // nil only after the close was seen
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func errString(err error) string {
	if err == nil {
		return "terminated"
	}
	return err.Error()
}

// routable reports whether the router still offers backend for new calls
// (up or suspect, not down).
func (p *Proxy) routable(backend string) bool {
	if p.router == nil {
		return true
	}
	if r, ok := p.router.(RoutableReporter); ok {
		return r.Routable(backend)
	}
	return slices.Contains(p.router.Candidates(""), backend)
}

// anyRoutable reports whether the router still offers one of backends.
func (p *Proxy) anyRoutable(backends map[string]bool) bool {
	for b := range backends {
		if p.routable(b) {
			return true
		}
	}
	return false
}

// onlyBackend reports whether backend is the one backend the router offers
// for new calls.
func (p *Proxy) onlyBackend(backend string) bool {
	if p.router == nil {
		return false
	}
	if r, ok := p.router.(RoutableReporter); ok {
		return r.OnlyRoutable(backend)
	}
	c := p.router.Candidates("")
	return len(c) == 1 && c[0] == backend
}

// keepHeaders is a no-op build option: prepare has already set every header
// and sipgo must not add its own Via.
func keepHeaders(*sipgo.Client, *sip.Request) error { return nil }

// failed reports t's failure of a request sent at sent to health, unless
// it is excused (door.go).
func (p *Proxy) failed(t target, sent time.Time, reason string) {
	if t.backend == "" {
		return
	}
	if p.excused(sent, reason) {
		p.log.Debug("backend failure excused: hapbx itself was overloaded", zap.String("backend", t.backend), zap.String("reason", reason))
		return
	}
	p.log.Warn("backend failed a request", zap.String("backend", t.backend), zap.String("reason", reason))
	if p.reporter != nil {
		p.reporter.Suspect(t.backend, reason)
	}
}

// prepare turns a copy of the received request into the one sent to t
// (RFC 3261 §16.6): Max-Forwards, Record-Route, Via, destination.
func (p *Proxy) prepare(out, in *sip.Request, t target, branch string) {
	if t.ruri != "" {
		var u sip.Uri
		if err := sip.ParseUri(strings.Trim(t.ruri, "<>"), &u); err == nil {
			out.Recipient = u
		}
	}
	if mf := out.MaxForwards(); mf != nil {
		mf.Dec()
	} else {
		m := sip.MaxForwardsHeader(69)
		out.AppendHeader(&m)
	}
	out.PrependHeader(p.via(t.transport, branch))
	// Record-Route after the Via: at the top, so before any earlier
	// Record-Route values (§16.6 step 4), and never between two Via rows
	// (UAs that copy the Via rows into a response would lose the rest).
	if _, tagged := in.To().Params.Get("tag"); !tagged && dialogCreating(in.Method) {
		inTr := strings.ToLower(in.Transport())
		tok := p.recordRouteToken(in, t)
		out.PrependHeader(p.recordRoute(inTr, tok))
		if inTr != t.transport {
			// RFC 5658 double Record-Route: each side sees the interface it reaches.
			out.PrependHeader(p.recordRoute(t.transport, tok))
		}
	}
	if p.toProvider(in, t) {
		p.aliasContacts(out, t.transport) // the provider sees the VIP (contact.go)
	}
	p.address(out, t)
}

// address sets where and how out is sent: from the SIP port for UDP, so
// backends and NATs see one stable source.
func (p *Proxy) address(out *sip.Request, t target) {
	out.SetDestination(t.addr)
	out.SetTransport(strings.ToUpper(t.transport))
	out.Laddr = sip.Addr{}
	if t.transport == "udp" {
		if host, _, err := net.SplitHostPort(t.addr); err == nil {
			if ip, err := netip.ParseAddr(host); err == nil {
				if la, ok := p.udpLaddr[familyKey(ip)]; ok {
					out.Laddr = la
				}
			}
		}
	}
}

func dialogCreating(m sip.RequestMethod) bool {
	switch m {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER, sip.NOTIFY:
		return true
	}
	return false
}

// recordRoute is the proxy's Record-Route over transport, with the dialog
// token tok (trust.go) when there is one.
func (p *Proxy) recordRoute(transport, tok string) *sip.RecordRouteHeader {
	up := params("transport", transport, "lr", "")
	if tok != "" {
		up = append(up, sip.HeaderKV{K: tokenParam, V: tok})
	}
	return &sip.RecordRouteHeader{Address: sip.Uri{
		Scheme:    "sip",
		Host:      p.cfg.Advertise,
		Port:      p.portFor[transport],
		UriParams: up,
	}}
}

// relay sends a downstream response up through the server transaction, its
// own Via removed (RFC 3261 §16.7 step 9).
func (p *Proxy) relay(tx sip.ServerTransaction, req *sip.Request, res *sip.Response) {
	p.upstream(req, res)
	p.anchorResponse(req, res)
	if req.IsInvite() && res.StatusCode >= 300 {
		if _, inDialog := req.To().Params.Get("tag"); !inDialog {
			p.releaseMedia(req, "final "+strconv.Itoa(res.StatusCode))
		}
	}
	if err := tx.Respond(res); err != nil {
		if res.IsSuccess() {
			// The caller cancelled while the 2xx was on its way: the 2xx
			// must still reach it, or the call is up on one side only.
			p.relayStateless(req, res)
			return
		}
		p.log.Debug("relay response failed", zap.Int("code", res.StatusCode), zap.Error(err))
		return
	}
	p.m.responses.WithLabelValues(methodLabel(req.Method), codeLabel(res.StatusCode)).Inc()
}

func (p *Proxy) relayStateless(req *sip.Request, res *sip.Response) {
	if v := res.Via(); v != nil && p.localHosts[strings.ToLower(v.Host)] {
		p.upstream(req, res)
		p.anchorResponse(req, res)
	}
	if err := p.wire.WriteResponse(res); err != nil {
		p.log.Debug("stateless relay failed", zap.Int("code", res.StatusCode), zap.Error(err))
		return
	}
	p.m.responses.WithLabelValues(methodLabel(req.Method), codeLabel(res.StatusCode)).Inc()
}

// upstream strips our Via and aims the response at the previous hop.
func (p *Proxy) upstream(req *sip.Request, res *sip.Response) {
	res.RemoveHeader("Via")
	if cs, rcs := res.CSeq(), req.CSeq(); cs != nil && rcs != nil {
		cs.SeqNo = rcs.SeqNo // a trunk's challenge answered with a raised CSeq (trunks.go)
	}
	if res.StatusCode > 100 && res.StatusCode < 300 && p.fromTrunk(req) != "" {
		p.aliasContacts(res, strings.ToLower(req.Transport())) // the provider sees the VIP (contact.go)
	}
	res.SetTransport(req.Transport())
	if sip.IsReliable(req.Transport()) {
		res.SetDestination(req.Source()) // the connection the request came on
	} else {
		res.SetDestination("") // from the Via we marked with received/rport
	}
}

// sendCancel cancels the downstream INVITE out (RFC 3261 §9.1, §16.10).
func (p *Proxy) sendCancel(out *sip.Request) {
	c := sip.NewRequest(sip.CANCEL, *out.Recipient.Clone())
	c.AppendHeader(out.Via().Clone())
	for _, h := range out.GetHeaders("Route") {
		c.AppendHeader(sip.HeaderClone(h))
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	c.AppendHeader(sip.HeaderClone(out.From()))
	c.AppendHeader(sip.HeaderClone(out.To()))
	c.AppendHeader(sip.HeaderClone(out.CallID()))
	c.AppendHeader(&sip.CSeqHeader{SeqNo: out.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	c.SetDestination(out.Destination())
	c.SetTransport(out.Transport())
	c.Laddr = out.Laddr
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	clTx, err := p.wire.TransactionRequest(ctx, c, sipgo.ClientRequestOption(keepHeaders))
	cancel()
	if err != nil {
		p.log.Debug("CANCEL not sent", zap.Error(err))
		return
	}
	go func() {
		defer clTx.Terminate()
		select {
		case <-clTx.Responses():
		case <-clTx.Done():
		case <-time.After(32 * time.Second):
		}
	}()
}

// forwardAck forwards an ACK for a 2xx: its own transaction, end to end,
// statelessly. The branch is derived from the incoming one so that a
// retransmitted ACK keeps its branch.
func (p *Proxy) forwardAck(req *sip.Request, t target) {
	b, _ := req.Via().Params.Get("branch")
	h := fnv.New64a()
	h.Write([]byte(b))
	branch := "a" + strconv.FormatUint(h.Sum64(), 36)
	out, t, err := p.fit(t, func(t target) *sip.Request {
		out := req.Clone()
		if mf := out.MaxForwards(); mf != nil {
			mf.Dec()
		}
		out.PrependHeader(p.via(t.transport, branch))
		p.address(out, t)
		return out
	})
	if err == nil {
		err = p.wire.WriteRequest(out, sipgo.ClientRequestOption(keepHeaders))
	}
	if err != nil {
		p.log.Debug("ACK not forwarded", zap.String("to", t.addr), zap.Error(err))
	}
}

// via is the proxy's own Via over transport, its branch marked as ours.
func (p *Proxy) via(transport, branch string) *sip.ViaHeader {
	return &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: strings.ToUpper(transport),
		Host: p.cfg.Advertise, Port: p.portFor[transport], Params: params("branch", branchPrefix+branch)}
}

// params builds header parameters from key, value pairs.
func params(kv ...string) sip.HeaderParams {
	hp := make(sip.HeaderParams, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		hp = append(hp, sip.HeaderKV{K: kv[i], V: kv[i+1]})
	}
	return hp
}
