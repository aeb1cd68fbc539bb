package proxy

import (
	"context"
	"errors"
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

// forward runs one server transaction: it sends req to each target in turn
// until one gives an answer worth relaying (RFC 3261 §16.6-16.7). Backends
// are retried only while retry is set, nothing beyond 100 Trying has been
// relayed and the caller has not cancelled.
//
// cancelled is closed when the caller cancels (watchCancel); nil: forward
// watches itself.
func (p *Proxy) forward(req *sip.Request, tx sip.ServerTransaction, targets []target, retry bool, cancelled <-chan struct{}) {
	start := time.Now()
	if cancelled == nil {
		cancelled = watchCancel(tx, req)
	}
	if req.IsInvite() {
		// Stop the caller's retransmissions while a backend is chosen.
		p.reply(tx, req, 100, "Trying")
	}
	tried := map[string]bool{}
	for len(targets) > 0 {
		for i, t := range targets {
			tried[t.backend] = true
			more := retry && i < len(targets)-1
			if p.try(req, tx, t, more, cancelled, start) {
				if isClosed(cancelled) {
					p.releaseMedia(req, "cancel")
				}
				return
			}
			select {
			case <-cancelled:
				p.releaseMedia(req, "cancel")
				return // sipgo has answered 487 to the caller
			default:
			}
		}
		if !retry {
			break
		}
		// Every backend tried has failed: wait for another to come up.
		targets = p.awaitBackend(tx, req, tried, cancelled)
		if isClosed(cancelled) {
			p.releaseMedia(req, "cancel")
			return // sipgo has answered 487 to the caller
		}
	}
	if p.answerFromStore(tx, req) {
		return // no backend took the REGISTER: a refresh the store can answer
	}
	if _, inDialog := req.To().Params.Get("tag"); !inDialog && req.IsInvite() {
		p.releaseMedia(req, "no backend")
	}
	if _, inDialog := req.To().Params.Get("tag"); inDialog {
		// The backend of this dialog is gone. A 408 ends the dialog for the
		// phone (RFC 3261 §12.2.1.2, §15.1.1) now rather than after 32 s.
		p.reply(tx, req, 408, "Request Timeout")
		return
	}
	p.replyUnavailable(tx, req)
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

type tryState struct {
	gotAny      bool // any response, 100 included: a CANCEL may now be sent
	provisional bool // a provisional beyond 100 was relayed: no more retry
	cancelSent  bool
}

// try sends req to one target. It returns true when the transaction is
// settled and false when the next target should be tried.
func (p *Proxy) try(req *sip.Request, tx sip.ServerTransaction, t target, more bool, cancelled <-chan struct{}, start time.Time) bool {
	out := req.Clone()
	p.prepare(out, req, t)
	if t.backend != "" {
		p.m.selected.WithLabelValues(t.backend).Inc()
	}
	// A backend gets hop_timeout to show any sign of life (Asterisk sends
	// 100 Trying at once); phones and other UAs get the transaction timers.
	dialTimeout := 5 * time.Second
	if t.backend != "" {
		dialTimeout = p.cfg.HopTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	clTx, err := p.cl.TransactionRequest(ctx, out, sipgo.ClientRequestOption(keepHeaders))
	cancel()
	if err != nil {
		p.failed(t, "transport: "+err.Error())
		if more {
			p.m.retries.WithLabelValues(t.backend, "transport").Inc()
			return false
		}
		p.replyUnavailable(tx, req)
		return true
	}

	var st tryState
	var hop <-chan time.Time
	if t.backend != "" {
		timer := time.NewTimer(p.cfg.HopTimeout)
		defer timer.Stop()
		hop = timer.C
	}
	// Timer C (RFC 3261 §16.6 step 11, §16.8) and, once a CANCEL is out,
	// the guard within which the downstream must end the INVITE.
	var timerC, guard <-chan time.Time
	var tc ringTimer
	defer tc.stop()
	cancelDownstream := func() {
		if !st.cancelSent {
			p.sendCancel(out)
			st.cancelSent = true
			guard = time.After(p.cancelGuard)
		}
	}
	for {
		select {
		case res := <-clTx.Responses():
			if !st.gotAny {
				st.gotAny = true
				hop = nil
				p.m.latency.WithLabelValues(string(req.Method)).Observe(time.Since(start).Seconds())
			}
			if isClosed(cancelled) && req.IsInvite() {
				cancelDownstream()
			}
			if res.StatusCode == 100 {
				continue
			}
			if res.IsProvisional() {
				st.provisional = true
				if req.IsInvite() && !st.cancelSent {
					timerC = tc.restart(p.cfg.TimerC)
				}
				p.relay(tx, req, res)
				continue
			}
			if res.IsSuccess() {
				if req.Method == sip.REGISTER && t.backend != "" {
					p.saveBinding(req, res, t.backend)
				}
				if _, tagged := req.To().Params.Get("tag"); req.IsInvite() && !tagged {
					if t.backend != "" {
						p.dialogs.confirm(req, res, t.backend, p.isLocal)
					} else if from := p.fromBackend(req); from != "" {
						p.dialogs.confirmInbound(req, res, from, t.addr, t.transport, p.isLocal)
					}
				}
				if req.IsInvite() {
					// RFC 6026: 2xx retransmissions come through the client
					// transaction (Accepted state) and go upstream statelessly.
					clTx.OnRetransmission(func(r *sip.Response) { p.relayStateless(req, r) })
				}
				p.relay(tx, req, res)
				return true
			}
			if res.StatusCode == 503 || res.StatusCode == 408 {
				// Suspect at once (an immediate probe), also when no other
				// backend is left to try.
				p.failed(t, "response "+strconv.Itoa(res.StatusCode))
				if more && !st.provisional && !isClosed(cancelled) {
					p.m.retries.WithLabelValues(t.backend, strconv.Itoa(res.StatusCode)).Inc()
					return false
				}
			}
			if t.backend != "" && (res.StatusCode == 401 || res.StatusCode == 407) {
				p.challenged.put(req.CallID().Value(), t.backend)
			}
			if req.IsInvite() {
				b, _ := req.Via().Params.Get("branch")
				p.non2xx.put(b, "")
			}
			p.relay(tx, req, res)
			return true

		case <-clTx.Done():
			err := clTx.Err()
			timeout := errors.Is(err, sip.ErrTransactionTimeout)
			reason := "transport"
			if timeout {
				reason = "timeout"
			}
			p.failed(t, reason+": "+errString(err))
			if isClosed(cancelled) {
				return true
			}
			if more && !st.provisional {
				p.m.retries.WithLabelValues(t.backend, reason).Inc()
				return false
			}
			if timeout {
				p.reply(tx, req, 408, "Request Timeout")
			} else {
				p.replyUnavailable(tx, req)
			}
			return true

		case <-hop:
			if _, inDialog := req.To().Params.Get("tag"); inDialog && p.routable(t.backend) {
				// An in-dialog request belongs to this backend: no other can
				// take it. Wait while it is merely slow; give up only once
				// health has declared it down.
				hop = time.After(p.cfg.HopTimeout)
				continue
			}
			// Not even 100 Trying: the backend is dead or hung. Give up on it
			// without a CANCEL (none may be sent before a provisional).
			clTx.Terminate()
			p.failed(t, "no response within hop_timeout")
			if isClosed(cancelled) {
				return true
			}
			if more {
				p.m.retries.WithLabelValues(t.backend, "hop_timeout").Inc()
			}
			return false // the next backend, or 503 when none is left

		case <-cancelled:
			cancelled = nil // seen; stop selecting on it
			if st.gotAny && req.IsInvite() {
				cancelDownstream()
			}

		case <-timerC:
			// Rung too long: cancel; the callee's 487 ends the call.
			timerC = nil
			p.m.timerC.Inc()
			p.log.Info("timer C fired: cancelling the INVITE", zap.String("call_id", callID(req)), zap.String("to", t.addr), zap.Duration("timer_c", p.cfg.TimerC))
			cancelDownstream()

		case <-guard:
			// The CANCEL went unanswered by a final response: the callee is
			// gone. End the caller's transaction ourselves.
			clTx.Terminate()
			p.failed(t, "no final response after CANCEL")
			if !isClosed(cancelled) {
				p.reply(tx, req, 408, "Request Timeout")
			}
			return true

		case <-p.abort:
			// The drain has timed out: settle the transaction now.
			if st.gotAny && req.IsInvite() && !st.cancelSent {
				p.sendCancel(out)
			}
			clTx.Terminate()
			if !isClosed(cancelled) {
				p.reply(tx, req, 503, "Service Unavailable (shutting down)")
			}
			return true
		}
	}
}

// ringTimer is RFC 3261's Timer C of one INVITE or fork: created by the first
// provisional, restarted by each later one.
type ringTimer struct{ t *time.Timer }

func (c *ringTimer) restart(d time.Duration) <-chan time.Time {
	if c.t == nil {
		c.t = time.NewTimer(d)
	} else {
		c.t.Reset(d)
	}
	return c.t.C
}

func (c *ringTimer) stop() {
	if c.t != nil {
		c.t.Stop()
	}
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
	return slices.Contains(p.router.Candidates(""), backend)
}

// keepHeaders is a no-op build option: prepare has already set every header
// and sipgo must not add its own Via.
func keepHeaders(*sipgo.Client, *sip.Request) error { return nil }

func (p *Proxy) failed(t target, reason string) {
	if t.backend == "" {
		return
	}
	p.log.Warn("backend failed a request", zap.String("backend", t.backend), zap.String("reason", reason))
	if p.reporter != nil {
		p.reporter.Suspect(t.backend, reason)
	}
}

// prepare turns a copy of the received request into the one sent to t
// (RFC 3261 §16.6): Max-Forwards, Record-Route, Via, destination.
func (p *Proxy) prepare(out, in *sip.Request, t target) {
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
	out.PrependHeader(&sip.ViaHeader{
		ProtocolName:    "SIP",
		ProtocolVersion: "2.0",
		Transport:       strings.ToUpper(t.transport),
		Host:            p.cfg.Advertise,
		Port:            p.portFor[t.transport],
		Params:          params("branch", branchPrefix+loopHash(in)+"."+sip.GenerateTagN(8)),
	})
	// Record-Route after the Via: at the top, so before any earlier
	// Record-Route values (§16.6 step 4), and never between two Via rows
	// (UAs that copy the Via rows into a response would lose the rest).
	if _, tagged := in.To().Params.Get("tag"); !tagged && dialogCreating(in.Method) {
		inTr := strings.ToLower(in.Transport())
		out.PrependHeader(p.recordRoute(inTr))
		if inTr != t.transport {
			// RFC 5658 double Record-Route: each side sees the interface it reaches.
			out.PrependHeader(p.recordRoute(t.transport))
		}
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

func (p *Proxy) recordRoute(transport string) *sip.RecordRouteHeader {
	return &sip.RecordRouteHeader{Address: sip.Uri{
		Scheme:    "sip",
		Host:      p.cfg.Advertise,
		Port:      p.portFor[transport],
		UriParams: params("transport", transport, "lr", ""),
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
	p.m.responses.WithLabelValues(string(req.Method), itoa(res.StatusCode)).Inc()
}

func (p *Proxy) relayStateless(req *sip.Request, res *sip.Response) {
	if v := res.Via(); v != nil && p.localHosts[strings.ToLower(v.Host)] {
		p.upstream(req, res)
		p.anchorResponse(req, res)
	}
	if err := p.srv.WriteResponse(res); err != nil {
		p.log.Debug("stateless relay failed", zap.Int("code", res.StatusCode), zap.Error(err))
		return
	}
	p.m.responses.WithLabelValues(string(req.Method), itoa(res.StatusCode)).Inc()
}

// upstream strips our Via and aims the response at the previous hop.
func (p *Proxy) upstream(req *sip.Request, res *sip.Response) {
	res.RemoveHeader("Via")
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
	clTx, err := p.cl.TransactionRequest(ctx, c, sipgo.ClientRequestOption(keepHeaders))
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
	out := req.Clone()
	if mf := out.MaxForwards(); mf != nil {
		mf.Dec()
	}
	b, _ := req.Via().Params.Get("branch")
	h := fnv.New64a()
	h.Write([]byte(b))
	out.PrependHeader(&sip.ViaHeader{
		ProtocolName:    "SIP",
		ProtocolVersion: "2.0",
		Transport:       strings.ToUpper(t.transport),
		Host:            p.cfg.Advertise,
		Port:            p.portFor[t.transport],
		Params:          params("branch", branchPrefix+"a"+strconv.FormatUint(h.Sum64(), 36)),
	})
	p.address(out, t)
	if err := p.cl.WriteRequest(out, sipgo.ClientRequestOption(keepHeaders)); err != nil {
		p.log.Debug("ACK not forwarded", zap.String("to", t.addr), zap.Error(err))
	}
}

// params builds header parameters from key, value pairs.
func params(kv ...string) sip.HeaderParams {
	hp := make(sip.HeaderParams, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		hp = append(hp, sip.HeaderKV{K: kv[i], V: kv[i+1]})
	}
	return hp
}
