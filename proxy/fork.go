package proxy

import (
	"context"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// branchEvent is what one fork branch reports to the response context.
type branchEvent struct {
	i   int
	res *sip.Response // nil with err
	err error
}

// fork sends req to every target at once and runs the response context of
// RFC 3261 §16.7: provisionals are relayed, the first 2xx is relayed and the
// other branches are cancelled (every further 2xx is relayed too, the caller
// must see each), and with no 2xx the best final answer is chosen when all
// branches have ended. A CANCEL from the caller cancels every branch.
func (p *Proxy) fork(req *sip.Request, tx sip.ServerTransaction, targets []target) {
	p.m.forks.Inc()
	start := time.Now()
	if req.IsInvite() {
		p.reply(tx, req, 100, "Trying")
	}
	cancelled := watchCancel(tx, req)

	type branch struct {
		out         *sip.Request
		clTx        sip.ClientTransaction
		provisional bool
		cancelSent  bool
		done        bool
	}
	events := make(chan branchEvent, 16)
	branches := make([]*branch, len(targets))
	live := 0
	for i, t := range targets {
		out := req.Clone()
		p.prepare(out, req, t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		clTx, err := p.cl.TransactionRequest(ctx, out, sipgo.ClientRequestOption(keepHeaders))
		cancel()
		b := &branch{out: out, clTx: clTx}
		branches[i] = b
		if err != nil {
			b.done = true
			p.log.Debug("fork branch not sent", zap.String("to", t.addr), zap.Error(err))
			continue
		}
		live++
		go func(i int, clTx sip.ClientTransaction) {
			for {
				select {
				case res := <-clTx.Responses():
					events <- branchEvent{i: i, res: res}
					if !res.IsProvisional() {
						return
					}
				case <-clTx.Done():
					events <- branchEvent{i: i, err: clTx.Err()}
					return
				}
			}
		}(i, clTx)
	}
	if live == 0 {
		p.reply(tx, req, 480, "Temporarily Unavailable")
		return
	}

	var (
		best     *sip.Response
		timedOut bool // a branch ended without a final response
		answered bool
		first    = true
	)
	// Timer C (RFC 3261 §16.6 step 11) for the whole response context,
	// reset by any provisional; after a CANCEL, the guard within which the
	// branches must end.
	var timerC, guard <-chan time.Time
	var tc ringTimer
	defer tc.stop()
	cancelOthers := func(except int) {
		for j, b := range branches {
			if j == except || b.done || b.cancelSent {
				continue
			}
			if b.provisional {
				p.sendCancel(b.out)
				b.cancelSent = true
			}
		}
		if guard == nil {
			guard = time.After(p.cancelGuard)
		}
	}
	terminate := func() {
		for _, b := range branches {
			if !b.done && b.clTx != nil {
				b.clTx.Terminate()
			}
		}
	}
	for live > 0 {
		select {
		case <-cancelled:
			cancelled = nil
			answered = true // sipgo has answered 487
			cancelOthers(-1)
		case <-timerC:
			timerC = nil
			p.m.timerC.Inc()
			p.log.Info("timer C fired: cancelling the forked INVITE", zap.String("call_id", callID(req)), zap.Duration("timer_c", p.cfg.TimerC))
			cancelOthers(-1)
		case <-guard:
			terminate()
			if !answered {
				p.reply(tx, req, 408, "Request Timeout")
			}
			return
		case <-p.abort:
			if !answered {
				cancelOthers(-1)
				p.reply(tx, req, 503, "Service Unavailable (shutting down)")
			}
			terminate()
			return
		case ev := <-events:
			b := branches[ev.i]
			if ev.res == nil {
				b.done = true
				live--
				timedOut = true
				continue
			}
			res := ev.res
			if first {
				first = false
				p.m.latency.WithLabelValues(string(req.Method)).Observe(time.Since(start).Seconds())
			}
			if res.IsProvisional() {
				b.provisional = true
				if req.IsInvite() && !answered && guard == nil {
					timerC = tc.restart(p.cfg.TimerC)
				}
				if answered && !b.cancelSent {
					p.sendCancel(b.out) // the call was taken elsewhere or cancelled
					b.cancelSent = true
				}
				if res.StatusCode > 100 && !answered {
					p.relay(tx, req, res)
				}
				continue
			}
			b.done = true
			live--
			if res.IsSuccess() {
				if req.IsInvite() {
					clTx := b.clTx
					clTx.OnRetransmission(func(r *sip.Response) { p.relayStateless(req, r) })
				}
				if answered {
					p.relayStateless(req, res)
				} else {
					p.relay(tx, req, res)
				}
				if !answered {
					answered = true
					cancelOthers(ev.i)
					if from := p.fromBackend(req); from != "" && req.IsInvite() {
						p.dialogs.confirmInbound(req, res, from, targets[ev.i].addr, targets[ev.i].transport, p.isLocal)
					}
				}
				continue
			}
			if better(res, best) {
				best = res
			}
		}
	}
	if answered {
		return
	}
	if req.IsInvite() {
		b, _ := req.Via().Params.Get("branch")
		p.non2xx.put(b, "")
	}
	if best == nil {
		if timedOut {
			p.reply(tx, req, 408, "Request Timeout")
		} else {
			p.reply(tx, req, 480, "Temporarily Unavailable")
		}
		return
	}
	if best.StatusCode == 503 {
		// RFC 3261 §16.7 step 6: a 503 from a phone must not make the caller
		// think the proxy is unavailable.
		p.reply(tx, req, 500, "Server Internal Error")
		return
	}
	p.relay(tx, req, best)
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
