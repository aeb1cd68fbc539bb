package proxy

import (
	"time"

	"github.com/emiago/sipgo/sip"
)

// The proxy's 100 Trying to an INVITE goes up once the INVITE is with a
// next hop, not when it arrives: when the next hop's first provisional
// comes (Asterisk sends 100 at once), or after tryingAfter (200 ms) without
// one, as RFC 3261 §17.2.1 allows and requires, or at once when the INVITE
// is held for want of a backend. Until then the caller retransmits its
// INVITE, so a proxy that dies before the INVITE reached a backend leaves
// the call to its twin, which gets the retransmission and forwards it (with
// the same branch, branch.go). A 100 sent at once would have stopped the
// retransmissions for good and lost the call.

// TakeOverTrying turns off sipgo's own 100 Trying to INVITEs: its server
// transaction sends one 200 ms after the request unless the proxy responded
// first, from a goroutine of its own that reads the request the proxy has
// meanwhile changed (received, rport, Route, SDP). The proxy sends it
// itself instead (txState.trying). sipgo v1.7.2 has it as a package
// variable, so this sets it for the whole process: call it once at
// start-up, before any SIP socket opens, as LiftTransportLimits.
func TakeOverTrying() {
	sip.Timer_1xx = 24 * time.Hour // stopped by the proxy's first response
}

// txState is what the response contexts of one server transaction share.
type txState struct {
	sends []targetSends // requests sent so far per target (branch.go's attempt)
	up    bool          // a provisional went up: the caller stops retransmitting
	timer <-chan time.Time
}

func (p *Proxy) newTxState(req *sip.Request) *txState {
	st := &txState{}
	if req.IsInvite() {
		st.timer = time.After(p.tryingAfter)
	}
	return st
}

// trying sends the caller a 100 Trying unless a provisional already went up.
func (st *txState) trying(p *Proxy, tx sip.ServerTransaction, req *sip.Request) {
	st.timer = nil
	if !st.up {
		st.up = true
		p.reply(tx, req, 100, "Trying")
	}
}

// attempt counts a send to t and returns how many went before it.
func (st *txState) attempt(t target) int {
	for i := range st.sends {
		if s := &st.sends[i]; s.addr == t.addr && s.ruri == t.ruri {
			s.n++
			return s.n - 1
		}
	}
	st.sends = append(st.sends, targetSends{addr: t.addr, ruri: t.ruri, n: 1})
	return 0
}

// targetSends counts the sends to one target (address and Request-URI) of
// a server transaction: a handful of targets at most (backends, a fork's
// contacts), so a slice, not a map per transaction.
type targetSends struct {
	addr, ruri string
	n          int
}
