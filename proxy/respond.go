package proxy

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// responseContext is the response context of RFC 3261 §16.7 for one server
// transaction: the branches sent for it (one backend at a time, or every
// contact of an AOR at once), Timer C, the caller's CANCEL, the drain's
// abort, the choice of the best final response and what a 2xx leaves behind
// (binding, dialog, the hook that relays its retransmissions).
type responseContext struct {
	p         *Proxy
	req       *sip.Request
	tx        sip.ServerTransaction
	st        *txState
	cancelled <-chan struct{} // closed by the caller's CANCEL; nil once seen
	start     time.Time
	more      bool // one branch, and another target to retry after it
	down      bool // its backend was given up as down: new again if it comes back
	forked    bool // several branches at once

	branches    []*branch
	live        int
	direct      *branch              // the branch run itself reads (watch); nil when none
	directRes   <-chan *sip.Response // direct's responses until its final one; nil without
	directDone  <-chan struct{}      // direct's end; nil without
	events      chan func() outcome  // the other branches' news (report), handled on the context's goroutine
	quit        chan struct{}        // closed when the context is over
	gotAny      bool                 // any response, 100 included
	provisional bool                 // a provisional beyond 100 went up: no retry
	took        bool                 // a 2xx went up
	best        *sip.Response        // the best final so far (RFC 3261 §16.7 step 6)
	lost        bool                 // a branch ended without a final response
	timedOut    bool                 // ... by a timeout
	ringing     <-chan time.Time     // Timer C (RFC 3261 §16.6 step 11, §16.8): from the send, reset by provisionals
	guard       <-chan time.Time     // after a CANCEL: the downstream's time to end the INVITE
	hop         <-chan time.Time     // a backend's time to show a sign of life
}

// branch is one client transaction of a response context.
type branch struct {
	t          target
	out        *sip.Request
	clTx       sip.ClientTransaction
	gotAny     bool // a CANCEL may now be sent
	cancelSent bool
	suspected  bool // reported silent past hop_timeout, still waited for
	authorized bool // sent again with a trunk's credentials (trunks.go)
	sent       time.Time
	done       bool
}

// outcome is how a response context ended for forward.
type outcome int

const (
	pending outcome = iota
	settled         // the caller has its answer (or cancelled)
	next            // try the next target
)

// run sends req to targets at once and waits until the transaction is
// settled or, with one target, until the next one should be tried.
func (rc *responseContext) run(targets []target) outcome {
	rc.events, rc.quit = make(chan func() outcome, 16), make(chan struct{})
	defer close(rc.quit)
	p, req := rc.p, rc.req
	for _, t := range targets {
		if o := rc.send(t); o != pending {
			return o
		}
	}
	// A call a backend places (to a phone, a provider) is watched like the
	// backend's own calls: should that PBX die while it rings, nobody
	// would ever end it, and the phone would ring on.
	var placer string
	var placerWatch <-chan time.Time
	if req.IsInvite() && !inDialog(req) {
		if placer = p.fromBackend(req); placer != "" {
			placerWatch = time.After(p.cfg.HopTimeout)
		}
	}
	for rc.live > 0 {
		o := pending
		select {
		case res := <-rc.directRes:
			b := rc.direct
			if !res.IsProvisional() {
				rc.unwatch()
			}
			o = rc.response(b, res)
		case <-rc.directDone:
			b := rc.direct
			rc.unwatch()
			o = rc.ended(b, b.clTx.Err())
		case news := <-rc.events:
			o = news()
		case <-placerWatch:
			placerWatch = nil
			if rc.over() {
				break
			}
			if p.routable(placer) {
				placerWatch = time.After(p.cfg.HopTimeout)
				break
			}
			p.m.placerDown.Inc()
			p.log.Info("the backend that placed a ringing call is down: cancelling it", zap.String("backend", placer),
				zap.String("call_id", callID(req)))
			rc.cancelAll(nil) // a branch without a response yet ends at the guard
		case <-rc.hop:
			o = rc.hopExpired(rc.branches[0]) // backends are tried one at a time
		case <-rc.st.timer:
			if !rc.over() {
				rc.st.trying(p, rc.tx, req) // RFC 3261 §17.2.1: 200 ms without a provisional
			}
		case <-rc.cancelled:
			rc.cancelled = nil // seen; stop selecting on it
			rc.cancelAll(nil)
		case <-rc.ringing:
			if !rc.gotAny {
				// Not even a 100 Trying: the client transactions' Timer B
				// still runs and ends them, so reset Timer C (RFC 3261 §16.8).
				rc.ringing = time.After(p.cfg.TimerC)
				break
			}
			// Rung too long: cancel; the callee's 487 ends the call.
			rc.ringing = nil
			p.m.timerC.Inc()
			p.log.Info("timer C fired: cancelling the INVITE", zap.String("call_id", callID(req)), zap.Int("branches", len(rc.branches)), zap.Duration("timer_c", p.cfg.TimerC))
			rc.cancelAll(nil)
		case <-rc.guard:
			// A CANCEL went unanswered by a final response: the callee is
			// gone. End the caller's transaction ourselves.
			rc.terminate("no final response after CANCEL")
			rc.lost, rc.timedOut = true, true
			return rc.settle()
		case <-p.abort:
			// The drain has timed out: settle the transaction now.
			answer := !rc.over()
			if answer {
				rc.cancelAll(nil)
			}
			rc.terminate("") // before the callee's 487 comes back to be ACKed
			if answer {
				p.reply(rc.tx, req, 503, "Service Unavailable (shutting down)")
			}
			return settled
		}
		if o != pending {
			return o
		}
	}
	return rc.settle()
}

// send starts the branch to t.
func (rc *responseContext) send(t target) outcome {
	p, req := rc.p, rc.req
	attempt := rc.st.attempt(t)
	build := func(branch func(target) string) (*sip.Request, target, error) {
		return p.fit(t, func(t target) *sip.Request {
			out := req.Clone()
			p.prepare(out, req, t, branch(t))
			return out
		})
	}
	out, t, err := build(func(t target) string { return p.branchFor(req, t, attempt) })
	if err != nil {
		return rc.oversize(t, err)
	}
	// A backend gets hop_timeout to show any sign of life (Asterisk sends
	// 100 Trying at once); phones and other UAs get the transaction timers.
	dial := 5 * time.Second
	if t.backend != "" {
		p.m.selected.WithLabelValues(t.backend).Inc()
		dial = p.cfg.HopTimeout
	}
	if t.trunk != "" && rc.more {
		// A provider host that does not answer is skipped for the next one
		// as a backend is; the last one gets the transaction timers (it is
		// across the internet, not on the LAN).
		dial = p.cfg.HopTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), dial)
	clTx, err := p.wire.TransactionRequest(ctx, out, sipgo.ClientRequestOption(keepHeaders))
	if err != nil && strings.Contains(err.Error(), "already exists") {
		// This proxy still has a client transaction of the same branch: the
		// caller sent the request again as a new transaction after the
		// first one ended. A branch of its own, then, as before.
		if out, t, err = build(func(target) string { return loopHash(req) + "." + sip.GenerateTagN(8) }); err == nil {
			clTx, err = p.wire.TransactionRequest(ctx, out, sipgo.ClientRequestOption(keepHeaders))
		}
	}
	cancel()
	switch {
	case err != nil && sizeError(err):
		return rc.oversize(t, err)
	case err != nil && rc.forked:
		p.log.Debug("fork branch not sent", zap.String("to", t.addr), zap.Error(err))
		return pending
	case err != nil && rc.giveUp(t, time.Now(), "transport", transportFailure(err)):
		return next
	case err != nil:
		return rc.settle()
	}
	b := &branch{t: t, out: out, clTx: clTx, sent: time.Now()}
	rc.branches = append(rc.branches, b)
	rc.live++
	if t.backend != "" || t.trunk != "" && rc.more {
		rc.hop = time.After(p.cfg.HopTimeout)
	}
	if req.IsInvite() && rc.ringing == nil && rc.guard == nil {
		// RFC 3261 §16.6 step 11: Timer C runs from the send, not from the
		// first provisional beyond 100: the client transaction stops Timer B
		// on a 100 Trying, so a callee that dies right after its 100 would
		// otherwise leave the caller without a final response for good.
		rc.ringing = time.After(p.cfg.TimerC)
	}
	rc.watch(b)
	return pending
}

// oversize handles a request too large to send to t: not t's failure, so
// t is not suspected; the next target may take it over TCP, else 513.
func (rc *responseContext) oversize(t target, err error) outcome {
	switch {
	case rc.forked:
		rc.p.log.Debug("fork branch too large", zap.String("to", t.addr), zap.Error(err))
		return pending
	case rc.more && !rc.provisional && !isClosed(rc.cancelled):
		return next
	}
	rc.p.tooLarge(rc.tx, rc.req, t, err)
	return settled
}

// watch has b's responses and its end handled by the context until its
// final response: read by run itself while no other branch is (one
// goroutine per pending request: a request sent to one backend at a time
// is the common case, and under a storm thousands wait at once), by a
// goroutine of b's own (report) when another branch is (a fork's other
// contacts, a trunk's challenge answered while the first branch still
// runs).
func (rc *responseContext) watch(b *branch) {
	if rc.direct != nil {
		go rc.report(b)
		return
	}
	rc.direct, rc.directRes, rc.directDone = b, b.clTx.Responses(), b.clTx.Done()
}

// unwatch stops run reading its direct branch: after its final response
// or its end.
func (rc *responseContext) unwatch() {
	rc.direct, rc.directRes, rc.directDone = nil, nil, nil
}

// report hands b's responses and its end to the context until its final
// response or the context's end.
func (rc *responseContext) report(b *branch) {
	for final := false; !final; {
		var news func() outcome
		select {
		case res := <-b.clTx.Responses():
			final = !res.IsProvisional()
			news = func() outcome { return rc.response(b, res) }
		case <-b.clTx.Done():
			final = true
			news = func() outcome { return rc.ended(b, b.clTx.Err()) }
		}
		select {
		case rc.events <- news:
		case <-rc.quit:
			return
		}
	}
}

// over reports whether nothing more may go up statefully: a 2xx went up or
// the caller cancelled (sipgo has answered 487).
func (rc *responseContext) over() bool { return rc.took || isClosed(rc.cancelled) }

func (rc *responseContext) response(b *branch, res *sip.Response) outcome {
	p, req := rc.p, rc.req
	if b.done {
		return pending // terminated meanwhile
	}
	if !rc.gotAny {
		rc.gotAny = true
		rc.hop = nil
		p.m.latency.WithLabelValues(methodLabel(req.Method)).Observe(time.Since(rc.start).Seconds())
	}
	b.gotAny = true
	if b.t.backend != "" && res.StatusCode != 100 && res.StatusCode != 408 && res.StatusCode != 503 {
		if h, ok := p.reporter.(LifeReporter); ok {
			h.Heard(b.t.backend)
		}
	}
	if res.StatusCode == 100 && !rc.over() && req.IsInvite() {
		rc.st.trying(p, rc.tx, req) // the next hop has the INVITE
	}
	if res.StatusCode == 100 && b.t.backend != "" && !rc.forked && !rc.provisional {
		// The backend took the request; until it says more, keep watching
		// its health (hopExpired): one that dies now sends nothing more,
		// and the 100 has stopped the client transaction's Timer B.
		rc.hop = time.After(p.cfg.HopTimeout)
	}
	if res.IsProvisional() {
		if rc.over() {
			rc.cancel(b) // the call was taken elsewhere or cancelled
		}
		if res.StatusCode > 100 && !rc.over() {
			rc.provisional, rc.st.up = true, true
			rc.hop = nil
			if req.IsInvite() && b.t.backend != "" && !rc.forked {
				// A ringing call keeps watching its backend's health
				// (hopExpired): a PBX that dies now sends no final
				// response, and the caller would ring until Timer C.
				rc.hop = time.After(p.cfg.HopTimeout)
			}
			if req.IsInvite() && rc.guard == nil {
				rc.ringing = time.After(p.cfg.TimerC)
			}
			p.relay(rc.tx, req, res)
		}
		return pending
	}
	b.done = true
	rc.live--
	endLater(b)
	if res.IsSuccess() {
		rc.success(b, res)
		return pending
	}
	if (res.StatusCode == 503 || res.StatusCode == 408) && rc.giveUp(b.t, b.sent, itoa(res.StatusCode), "response "+itoa(res.StatusCode)) {
		return next
	}
	if b.t.backend != "" && (res.StatusCode == 401 || res.StatusCode == 407) {
		p.challenged.put(req.CallID().Value(), b.t.backend)
	}
	if b.t.trunk != "" && (res.StatusCode == 401 || res.StatusCode == 407) {
		if rc.authorizeTrunk(b, res) {
			rc.hop = nil // the provider answers: no failover now
			return pending
		}
		refuseChallenge(res)
	}
	if res.StatusCode >= 600 && !rc.over() {
		rc.cancelAll(b) // RFC 3261 §16.7 step 5: a 6xx ends the search
	}
	if better(res, rc.best) {
		rc.best = res
	}
	return pending
}

// success relays a 2xx: the first statefully, each further one (and one
// that crossed the caller's CANCEL) statelessly, as the caller must see
// every 2xx; the first also cancels the other branches.
func (rc *responseContext) success(b *branch, res *sip.Response) {
	p, req := rc.p, rc.req
	first := !rc.took
	rc.took = true
	if req.Method == sip.REGISTER && b.t.backend != "" {
		kept, ok := p.keepBinding(req, res, b.t.backend)
		if !ok {
			p.replyUnavailable(rc.tx, req)
			return
		}
		res = kept
	}
	if _, tagged := req.To().Params.Get("tag"); first && req.IsInvite() && !tagged {
		if b.t.backend != "" {
			p.dialogs.confirm(req, res, b.t.backend, p.isLocal)
		} else if from := p.fromBackend(req); from != "" {
			p.dialogs.confirmInbound(req, res, from, b.t.addr, b.t.transport, p.isLocal)
		}
	}
	if req.IsInvite() {
		// RFC 6026: 2xx retransmissions come through the client
		// transaction (Accepted state) and go upstream statelessly.
		b.clTx.OnRetransmission(func(r *sip.Response) { p.relayStateless(req, r) })
	}
	if !first || isClosed(rc.cancelled) {
		p.relayStateless(req, res)
		return
	}
	p.relay(rc.tx, req, res)
	rc.cancelAll(b)
}

// ended handles b's transaction ending without a final response.
func (rc *responseContext) ended(b *branch, err error) outcome {
	if b.done {
		return pending
	}
	b.done = true
	rc.live--
	timeout := errors.Is(err, sip.ErrTransactionTimeout)
	reason := "transport"
	if timeout {
		reason = "timeout"
	}
	rc.lost, rc.timedOut = true, rc.timedOut || timeout
	if rc.giveUp(b.t, b.sent, reason, reason+": "+errString(err)) {
		return next
	}
	return pending
}

// giveUp reports the failure of t with a request sent at sent (a backend
// is suspected at once, also when none is left to try) and whether to
// retry the next target.
func (rc *responseContext) giveUp(t target, sent time.Time, label, reason string) bool {
	rc.p.failed(t, sent, reason)
	if !rc.more || rc.provisional || isClosed(rc.cancelled) {
		return false
	}
	if t.trunk != "" {
		rc.p.m.retries.WithLabelValues("trunk:"+t.trunk, label).Inc()
		return true
	}
	rc.p.m.retries.WithLabelValues(t.backend, label).Inc()
	return true
}

// hopExpired handles a backend that sent not even 100 Trying within
// hop_timeout.
func (rc *responseContext) hopExpired(b *branch) outcome {
	p := rc.p
	if b.done {
		return pending
	}
	_, inDialog := rc.req.To().Params.Get("tag")
	// While hapbx itself is strained its own queues may hold the backend's
	// 100 Trying: trying the next backend would double the load and may
	// set up the call twice, so the backend gets the same patience as an
	// only one.
	wait := !rc.more && p.onlyBackend(b.t.backend) || p.strainedSince(b.sent)
	patient := b.gotAny || inDialog || wait && time.Since(b.sent) < p.cfg.HopTimeout+p.cfg.NoBackendWait
	if patient && p.routable(b.t.backend) {
		// No other backend can take the request: an in-dialog one belongs
		// to this backend, and a new one has nowhere else to go (a cold
		// standby's one PBX, slow to answer the burst of requests held
		// while it started) or must not go yet (hapbx strained). Wait
		// while it is merely slow (a new request for as long as it could
		// be held for a backend); give up once
		// health has declared it down. Ending the branch now would leave
		// the request to the hold, which does not try the same backend
		// twice, so the caller would get 503 from a live PBX.
		if !inDialog && !b.gotAny && !b.suspected {
			b.suspected = true
			p.failed(b.t, b.sent, "no response within hop_timeout") // probe it at once
		}
		rc.hop = time.After(p.cfg.HopTimeout)
		return pending
	}
	// The backend is dead or hung. Give up on it without a CANCEL (none may
	// be sent before a provisional): the next backend, or 503 when none is left.
	rc.down = !p.routable(b.t.backend)
	rc.terminate("")
	label, reason := "hop_timeout", "no response within hop_timeout"
	switch {
	case rc.provisional:
		// The caller has heard it ring, but a dead PBX's ringing is no
		// answer: the call goes on to the next backend, whose answer comes
		// with another To-tag, as from a forking proxy (RFC 3261 §16.7).
		label, reason = "down_ringing", "declared down while the call rang"
		rc.provisional = false
	case b.gotAny:
		label, reason = "down", "declared down after its 100 Trying"
	}
	if rc.giveUp(b.t, b.sent, label, reason) || !isClosed(rc.cancelled) {
		return next
	}
	return settled
}

// settle answers the caller once every branch has ended without a 2xx:
// the best final response (RFC 3261 §16.7 step 6), else what the branches'
// failures call for.
func (rc *responseContext) settle() outcome {
	p, req := rc.p, rc.req
	if rc.took {
		return settled
	}
	if req.IsInvite() {
		// Its hop-by-hop ACK is absorbed, also once the transaction is gone.
		b, _ := req.Via().Params.Get("branch")
		p.non2xx.put(b, "")
	}
	switch {
	case rc.best != nil && rc.forked && rc.best.StatusCode == 503:
		// A 503 from a phone must not make the caller think the proxy is
		// unavailable.
		p.reply(rc.tx, req, 500, "Server Internal Error")
	case rc.best != nil:
		p.relay(rc.tx, req, rc.best)
	case isClosed(rc.cancelled): // sipgo has answered 487
	case rc.timedOut || rc.forked && rc.lost:
		p.reply(rc.tx, req, 408, "Request Timeout")
	case rc.forked:
		p.reply(rc.tx, req, 480, "Temporarily Unavailable")
	default:
		p.replyUnavailable(rc.tx, req)
	}
	return settled
}

// cancelAll cancels every branch but except (RFC 3261 §16.10) and gives
// them the guard's time to end.
func (rc *responseContext) cancelAll(except *branch) {
	for _, b := range rc.branches {
		if b != except {
			rc.cancel(b)
		}
	}
	if rc.guard == nil && rc.live > 0 {
		rc.guard = time.After(rc.p.cancelGuard)
	}
}

// cancel sends b's CANCEL once it may: an INVITE that has had a response.
func (rc *responseContext) cancel(b *branch) {
	if b.done || b.cancelSent || !b.gotAny || !rc.req.IsInvite() {
		return
	}
	rc.p.sendCancel(b.out)
	b.cancelSent = true
}

// terminate ends the branches still open, each a failure for reason ("":
// none).
func (rc *responseContext) terminate(reason string) {
	for _, b := range rc.branches {
		if b.done {
			continue
		}
		b.clTx.Terminate()
		b.done = true
		rc.live--
		if reason != "" {
			rc.p.failed(b.t, b.sent, reason)
		}
	}
}

// better reports whether final response a beats b in RFC 3261 §16.7 step 6:
// a 6xx wins; otherwise the lowest class, the first one received on ties.
func better(a, b *sip.Response) bool {
	if b == nil {
		return true
	}
	ac, bc := a.StatusCode/100, b.StatusCode/100
	if bc == 6 {
		return false
	}
	if ac == 6 {
		return true
	}
	return ac < bc
}
