package proxy

import (
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// MediaAnchor rewrites SDP so that both sides send RTP to hapbx's relay.
type MediaAnchor interface {
	// AnchorFrom takes the SDP body one side of callID sent (fromCaller:
	// the side that sent the initial INVITE) in a SIP message that arrived
	// from source (invalid if unknown) and returns it rewritten for the
	// other side. That side's media is accepted only from the SDP's address
	// or from source (a phone behind NAT sends from the address its SIP
	// comes from). Errors: NoPortsError, SessionKeptError.
	AnchorFrom(callID string, fromCaller bool, source netip.Addr, body []byte) ([]byte, error)
	// Release ends the call's relay session; an error means it had none.
	Release(callID, reason string) error
}

// callerTags is implemented by an anchor that keeps the caller's From tag
// with the session and replicates it, so the twin proxy can tell the legs of
// a call apart after a failover (its own callers map lacks the call).
type callerTags interface {
	SetCallerTag(callID, tag string)
	CallerTag(callID string) (string, bool)
}

// WithMediaAnchor anchors the media of every call on m.
func WithMediaAnchor(m MediaAnchor) Option {
	return func(p *Proxy) {
		p.media = m
		p.callers = newTTLSet(12*time.Hour, 200000)
	}
}

func hasSDP(m sip.Message) bool {
	if len(m.Body()) == 0 {
		return false
	}
	for _, name := range []string{"Content-Type", "c"} {
		if hs := m.GetHeaders(name); len(hs) > 0 {
			return strings.HasPrefix(strings.ToLower(hs[0].Value()), "application/sdp")
		}
	}
	return false
}

// sourceIP is the IP a message arrived from, as the transport saw it (not
// its Via, which a phone behind NAT fills with its private address);
// invalid for a message that did not come from the network.
func sourceIP(src string) netip.Addr {
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// fromCaller tells whether req comes from the side of its call that sent
// the initial INVITE, whose From tag the proxy remembers; ok is false for a
// call the proxy did not anchor.
func (p *Proxy) fromCaller(req *sip.Request) (caller, ok bool) {
	fromTag, _ := req.From().Params.Get("tag")
	if _, inDialog := req.To().Params.Get("tag"); !inDialog {
		if req.IsInvite() {
			p.callers.put(req.CallID().Value(), fromTag)
			if ct, ok := p.media.(callerTags); ok {
				ct.SetCallerTag(req.CallID().Value(), fromTag)
			}
		}
		return true, true
	}
	callerTag, ok := p.callers.get(req.CallID().Value())
	if !ok {
		// Anchored by the twin before a failover: the relay has it.
		if ct, isCT := p.media.(callerTags); isCT {
			if callerTag, ok = ct.CallerTag(req.CallID().Value()); ok {
				p.callers.put(req.CallID().Value(), callerTag)
			}
		}
	}
	if !ok {
		return false, false // a call hapbx did not anchor: leave it alone
	}
	return fromTag == callerTag, true
}

// anchorRequest rewrites req's SDP in place before it is forwarded. It
// returns false when the request was answered instead: 503 when no relay
// ports are left for a new call; 488 for a re-INVITE or UPDATE of an
// anchored call whose SDP the relay cannot take (bad SDP, no ports for an
// added stream), so the call keeps its relayed media instead of moving off
// the relay with the raw body.
func (p *Proxy) anchorRequest(tx sip.ServerTransaction, req *sip.Request) bool {
	if p.media == nil || !hasSDP(req) {
		return true
	}
	caller, ok := p.fromCaller(req)
	if !ok {
		return true
	}
	body, err := p.media.AnchorFrom(req.CallID().Value(), caller, sourceIP(req.MessageData.Source()), req.Body())
	_, inDialog := req.To().Params.Get("tag")
	switch {
	case err == nil:
		req.SetBody(body)
	case inDialog && tx != nil && is[SessionKeptError](err):
		// Counted in hapbx_media_updates_refused_total{reason}.
		p.log.Info("re-offer not anchorable: 488, the call keeps its relayed media",
			zap.String("call_id", callID(req)), zap.String("method", string(req.Method)), zap.Error(err))
		p.reply(tx, req, 488, "Not Acceptable Here")
		return false
	case is[NoPortsError](err):
		if !inDialog && tx != nil {
			p.log.Warn("no relay ports: new call refused", zap.String("call_id", callID(req)))
			p.replyUnavailable(tx, req)
			return false
		}
	default:
		// An SDP the relay cannot parse: the call goes through un-anchored
		// (counted in hapbx_media_sdp_errors_total) rather than failing.
		p.log.Debug("SDP not anchored", zap.String("call_id", callID(req)), zap.Error(err))
	}
	return true
}

// anchorResponse rewrites the SDP of a response to req before it is relayed.
func (p *Proxy) anchorResponse(req *sip.Request, res *sip.Response) {
	if p.media == nil || !hasSDP(res) {
		return
	}
	caller, ok := p.fromCaller(req)
	if !ok {
		return
	}
	body, err := p.media.AnchorFrom(res.CallID().Value(), !caller, sourceIP(res.Source()), res.Body())
	if err != nil {
		p.log.Debug("SDP in response not anchored", zap.String("call_id", callID(res)), zap.Error(err))
		return
	}
	res.SetBody(body)
}

// releaseMedia ends the relay session of a call that is over.
func (p *Proxy) releaseMedia(req *sip.Request, reason string) {
	if p.media == nil {
		return
	}
	cid := req.CallID().Value()
	_ = p.media.Release(cid, reason) // an error only says the call was not anchored
	p.callers.del(cid)
}
