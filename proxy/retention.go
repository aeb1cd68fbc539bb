package proxy

import (
	"time"

	"github.com/emiago/sipgo/sip"
)

// Retention of finished transactions. sipgo keeps a transaction, with its
// request and last response, for 64*T1 (32 s) after it ended as RFC 3261
// and RFC 6026 have it: Timer J (a non-INVITE server transaction over
// UDP), Timer L and Timer M (an INVITE server and client transaction after
// a 2xx). Under load that is most of hapbx's memory: at 500 calls/s, 16 000
// INVITEs with their copies and answers for every 10 000 calls up; in a
// storm of 4 000 REGISTERs a second, 128 000. What they are kept for comes
// much sooner, so hapbx keeps them shorter:
//   - L (an INVITE's retransmission after the 2xx went up): a caller
//     retransmits its INVITE only until it has a first response, and hapbx
//     sends 100 Trying within 200 ms: one still on its way when the 2xx
//     goes up arrives within milliseconds, not seconds.
//   - M (a 2xx retransmitted by the callee, its ACK lost): after M such a
//     2xx is a stray and still goes up, statelessly, from its next
//     retransmission on (stray.go).
//   - J (a request retransmitted because its final response was lost): the
//     phone retransmits every T2 (4 s) at most, so J of 2*T4 (10 s) still
//     answers two such retransmissions from the transaction. A later one is
//     a new transaction, forwarded with the same branch (branch.go: hapbx's
//     client transaction, Timer K = T4, is gone by then), which the
//     backend's own transaction answers again.
//
// A non-INVITE client transaction (a REGISTER, BYE or OPTIONS hapbx
// forwarded) ends Timer K (T4, 5 s over UDP) after its final response
// (RFC 3261 §17.1.2.2), long enough for a final response retransmitted
// because a request retransmission crossed it. sipgo v1.7.2 keeps it for
// Timer D (32 s, the INVITE's) instead, with the request hapbx sent and the
// response: in a storm of REGISTERs that was most of the heap (72 000
// finished ones held for 7 000 pending). hapbx ends it itself (endLater).
const (
	acceptedRetention  = 5 * time.Second
	completedRetention = 10 * time.Second
)

// ShortenRetention sets sipgo's Timers J, L and M as above. They are
// package variables in sipgo v1.7.2, so this sets them for the whole
// process: call it once at start-up, before any SIP socket opens, as
// LiftTransportLimits.
func ShortenRetention() {
	sip.Timer_L = acceptedRetention
	sip.Timer_M = acceptedRetention
	sip.Timer_J = completedRetention
}

// endLater ends the client transaction of b, a branch that has its final
// response, Timer K after it when sipgo would keep it longer: a
// non-INVITE over UDP (sipgo ends one over TCP or TLS at once, and an
// INVITE's Timers D and M are right).
func endLater(b *branch) {
	if b.out.IsInvite() || sip.IsReliable(b.out.Transport()) {
		return
	}
	time.AfterFunc(sip.Timer_K, b.clTx.Terminate)
}
