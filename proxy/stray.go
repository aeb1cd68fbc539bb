package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// strayResponse handles a response that matches no client transaction: a
// 2xx retransmitted after Timer M, a late answer, and above all the
// responses to requests the twin forwarded before it died, which reach this
// proxy with the VIP (the twin's Via names it). RFC 3261 §16.7 step 1: such
// a response is processed as a stateless proxy does (§16.11): its top Via
// removed, it goes where the next Via says (received and rport, §18.2.2,
// RFC 3581). Only a response whose top Via is the pair's own, its branch
// proving it (branch.go), is forwarded: nobody else can make hapbx send a
// response anywhere. A response with SDP of a call whose media session the
// relay holds (replicated at the offer) is anchored as a relayed one is;
// without a session (the twin died before replicating it) it goes on
// unchanged and the call's media may flow direct. A final response goes up
// from its first retransmission on, provisional ones and 487s never (see
// below). Over TCP or TLS the
// connection the request came on was the twin's: such a response is lost.
// Counted in hapbx_proxy_stray_responses_total{outcome}.
func (p *Proxy) strayResponse(res *sip.Response) {
	vias := viaHops(res)
	if len(vias) < 2 || !p.localHosts[strings.ToLower(vias[0].Host)] {
		p.dropStray(res, "not ours")
		return
	}
	b, _ := vias[0].Params.Get("branch")
	ours, authorized := p.ownBranch(b, vias[1])
	if !ours {
		p.dropStray(res, "branch not ours")
		return
	}
	if res.IsProvisional() {
		// sipgo hands each message to a goroutine of its own: a stray 180
		// can reach the caller after the 200 that followed it, which ends
		// a call for a strict caller (SIPp aborts it; RFC 3261 §17.1.1.2
		// has the others drop it). A provisional is never retransmitted
		// and the final one follows: its loss costs the ringback only.
		p.dropStray(res, "provisional")
		return
	}
	if res.IsSuccess() && res.CSeq() != nil && res.CSeq().MethodName == sip.REGISTER {
		// Its binding was not stored (the transaction that would have
		// stored it was given up, or the twin died before it could): a
		// phone told 200 would believe hapbx reaches it. The phone
		// retransmits its REGISTER until it has a final response, and that
		// is forwarded with the same branch: the backend's answer to it
		// matches a transaction and is stored.
		p.dropStray(res, "REGISTER binding not stored")
		return
	}
	if res.StatusCode == 487 {
		// The caller's CANCEL is answered 200 and its INVITE 487 by hapbx
		// itself (sipgo): a 487 from downstream answers a CANCEL hapbx sent
		// (Timer C, a fork's other branches, the drain) or is chan_sip's
		// answer, after its 200, to a BYE that overtook the ACK (the ACK
		// was lost with the proxy). No caller awaits it, and one that has
		// the 200 takes a 487 for an error (SIPp aborts the call).
		p.dropStray(res, "487")
		return
	}
	if !p.strays.has(b) {
		// The first one may cross the caller's retransmission of its
		// request (it had no provisional from the dead proxy): the twin
		// forwards that with the same branch, and the backend's next
		// retransmission of its final (until the ACK: every T1 doubling,
		// 500 ms first) goes up through the twin's transaction. Forwarded
		// at once, it would have the caller move on (ACK, a new request)
		// while the twin's transaction for the old one sends a 100 Trying
		// and whatever the backend answers to a request it sees again:
		// chan_sip's 500, which ends the call for a strict caller.
		p.strays.put(b, "")
		p.m.strays.WithLabelValues("held").Inc()
		p.log.Debug("stray final held until its retransmission", zap.Int("code", res.StatusCode), zap.String("call_id", callID(res)))
		return
	}
	res.RemoveHeader("Via")
	if authorized {
		p.lowerStrayCSeq(res)
	}
	if res.IsSuccess() && p.toProviderVia(vias[1]) {
		p.aliasContacts(res, strings.ToLower(vias[1].Transport)) // the provider sees the VIP (contact.go)
	}
	res.SetTransport(vias[1].Transport)
	res.SetDestination("") // from the Via: received, rport
	p.anchorStray(res)
	if err := p.writeStray(res); err != nil {
		p.m.strays.WithLabelValues("failed").Inc()
		p.log.Debug("stray response not forwarded", zap.Int("code", res.StatusCode), zap.String("call_id", callID(res)), zap.Error(err))
		return
	}
	p.m.strays.WithLabelValues("forwarded").Inc()
	p.log.Debug("stray response forwarded statelessly", zap.Int("code", res.StatusCode), zap.String("call_id", callID(res)))
}

// writeStray sends res where its Via says. sipgo finds the UDP socket of a
// response by the address it goes to, known only once that address has
// sent this proxy something, and the phone talked to the twin: a UDP stray
// leaves by the listener of its address family.
func (p *Proxy) writeStray(res *sip.Response) error {
	if p.ua == nil || !strings.EqualFold(res.Transport(), "udp") {
		return p.wire.WriteResponse(res)
	}
	host, _, err := net.SplitHostPort(res.Destination())
	if err != nil {
		return fmt.Errorf("stray response's destination %q: %w", res.Destination(), err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("stray response's destination %q: %w", res.Destination(), err)
	}
	la, ok := p.udpLaddr[familyKey(ip)]
	if !ok {
		return fmt.Errorf("stray response to %s: no UDP listener of its family", ip)
	}
	c := p.ua.TransportLayer().Pool("udp").Get(la.String())
	if c == nil {
		return fmt.Errorf("stray response to %s: UDP listener %s not served", ip, la.String())
	}
	defer func() { _, _ = c.TryClose() }()
	return c.WriteMsg(res)
}

// lowerStrayCSeq gives a response to a request the twin sent again to a
// trunk with credentials (CSeq raised by one, trunks.go) the CSeq of the
// caller's request, as upstream does for a response that matches a
// transaction; the caller's ACK of a 2xx to an INVITE will then be raised
// on its way to the provider (raiseAckCSeq), as the twin would have.
func (p *Proxy) lowerStrayCSeq(res *sip.Response) {
	cs := res.CSeq()
	if cs == nil || cs.SeqNo == 0 {
		return
	}
	cs.SeqNo--
	if res.IsSuccess() && cs.MethodName == sip.INVITE {
		p.cseqRaised.put(res.CallID().Value(), strconv.FormatUint(uint64(cs.SeqNo), 10))
	}
}

func (p *Proxy) dropStray(res *sip.Response, why string) {
	p.m.strays.WithLabelValues("dropped").Inc()
	p.log.Debug("stray response dropped", zap.String("why", why), zap.Int("code", res.StatusCode), zap.String("call_id", callID(res)))
}

// anchorStray rewrites the SDP of a stray response through the relay when
// the relay has the call's session, replicated from the twin or its own,
// with the caller's From tag to tell the legs apart.
func (p *Proxy) anchorStray(res *sip.Response) {
	ct, ok := p.media.(callerTags)
	if !ok || !hasSDP(res) {
		return
	}
	callerTag, ok := ct.CallerTag(res.CallID().Value())
	if !ok {
		p.log.Debug("stray response's SDP not anchored: no media session", zap.String("call_id", callID(res)))
		return
	}
	// The request came from the caller: its response from the callee.
	fromCaller := tagOf(res.From().Params) != callerTag
	body, err := p.media.AnchorFrom(res.CallID().Value(), fromCaller, sourceIP(res.Source()), res.Body())
	if err != nil {
		p.log.Debug("stray response's SDP not anchored", zap.String("call_id", callID(res)), zap.Error(err))
		return
	}
	res.SetBody(body)
}

// viaHops returns the Via values of m, top first.
func viaHops(m sip.Message) []*sip.ViaHeader {
	var out []*sip.ViaHeader
	for _, h := range m.GetHeaders("Via") {
		if v, ok := h.(*sip.ViaHeader); ok {
			out = append(out, v)
		}
	}
	return out
}
