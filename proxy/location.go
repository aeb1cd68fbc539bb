package proxy

import (
	"net/netip"
	"strings"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// Locator finds the phones registered for a Request-URI.
type Locator interface {
	// Reach calls each with the Contact, received address and transport of
	// every live binding of uri (an AOR, or a registered Contact), best
	// first; registered is false when uri was never registered.
	Reach(uri string, each func(contact string, from netip.AddrPort, transport string)) (registered bool, err error)
}

// BindingRecorder keeps the phones' bindings: filled from the backends' 2xx
// to REGISTER, and able to answer a refresh on its own when no backend can.
type BindingRecorder interface {
	// Fits reports, before a REGISTER goes to a backend, whether the
	// bindings it asks for could be kept; an error when they cannot.
	Fits(req *sip.Request) error
	// Store saves the bindings of a REGISTER the backend accepted with res
	// and returns the 2xx to relay, stating the lifetimes it keeps; an
	// error when it could not keep them.
	Store(req *sip.Request, res *sip.Response, backend string) (*sip.Response, error)
	// AnswerRefresh builds the 200 to a REGISTER refresh of bindings it
	// holds; an error when it cannot answer req.
	AnswerRefresh(req *sip.Request) (*sip.Response, error)
}

// Registrar is both: what WithRegistrar takes.
type Registrar interface {
	Locator
	BindingRecorder
}

// WithRegistrar stores registrations in r and routes requests from the
// backends to the phones through it.
func WithRegistrar(r Registrar) Option { return func(p *Proxy) { p.reg = r } }

// refuseBinding answers 503 with Retry-After, before any backend sees it,
// a REGISTER whose new bindings the recorder could not keep (binding table
// or the AOR's contacts full); false when it may go on.
func (p *Proxy) refuseBinding(tx sip.ServerTransaction, req *sip.Request) bool {
	if p.reg == nil || req.Method != sip.REGISTER {
		return false
	}
	if err := p.reg.Fits(req); err != nil {
		p.log.Debug("registration refused before the backend", zap.String("call_id", callID(req)), zap.Error(err))
		p.replyUnavailable(tx, req)
		return true
	}
	return false
}

// keepBinding records the registration a backend accepted and returns the
// 2xx to relay, whose expiries are the ones the recorder keeps; false when
// it could not keep it: the phone must then get 503 with Retry-After, not
// a 200 that has it believe hapbx can reach it.
//
// The backend does hold that registration (refuseBinding keeps most such
// REGISTERs from it; two racing for the last place, or a 2xx listing other
// contacts than asked, still get here). hapbx lets it expire there rather
// than sending the backend a removal: that needs the phone's digest
// credentials, which hapbx does not have (replaying the phone's
// Authorization is a forgery Asterisk refuses once its nonce is stale).
// The orphan is bounded and mostly harmless: it lives no longer than the
// backend granted; the phone's retry after Retry-After refreshes the same
// binding there (same Call-ID and Contact) rather than adding one; a call
// Asterisk places to the AOR on hapbx gets 404 or 480, as for a phone not
// registered, and one to the stored Contact URI goes where that URI names, as
// any request from a backend does.
func (p *Proxy) keepBinding(req *sip.Request, res *sip.Response, backend string) (*sip.Response, bool) {
	if p.reg == nil {
		return res, true
	}
	kept, err := p.reg.Store(req, res, backend)
	if err != nil {
		p.log.Debug("registration not kept", zap.String("call_id", callID(req)), zap.String("backend", backend), zap.Error(err))
		return nil, false
	}
	return kept, true
}

// answerFromStore answers a REGISTER refresh 200 from the stored binding
// when no backend can take it; false when the registrar cannot.
func (p *Proxy) answerFromStore(tx sip.ServerTransaction, req *sip.Request) bool {
	if p.reg == nil || req.Method != sip.REGISTER {
		return false
	}
	res, err := p.reg.AnswerRefresh(req)
	if err != nil {
		return false
	}
	if err := tx.Respond(res); err != nil {
		p.log.Debug("store refresh reply failed", zap.Error(err))
		return true
	}
	p.m.responses.WithLabelValues(methodLabel(req.Method), "200").Inc()
	p.m.storeRefresh.Inc()
	return true
}

// locate finds the phones for a request from a backend. A Request-URI on
// the proxy's own host is an AOR (Asterisk dialling SIP/hapbx/201 or
// PJSIP/201@hapbx); any other may be a registered Contact (Asterisk dialling
// the contact it stored). Phones are reached at the address their REGISTER
// came from, over their own connection: the Contact host is often a
// private address behind NAT. ok is false when the registrar does not know
// the Request-URI at all.
func (p *Proxy) locate(req *sip.Request) (targets []target, code int, reason string, ok bool) {
	if p.reg == nil {
		return nil, 0, "", false
	}
	ruri := req.Recipient.String()
	local := p.isLocal(&req.Recipient)
	registered, err := p.reg.Reach(ruri, func(contact string, from netip.AddrPort, transport string) {
		if !local && !sameContact(contact, &req.Recipient) {
			return
		}
		t := target{addr: from.String(), transport: transport}
		if local {
			t.ruri = contact
		}
		targets = append(targets, t)
	})
	switch {
	case err != nil:
		p.log.Warn("location lookup failed", zap.String("ruri", ruri), zap.Error(err))
		return nil, 500, "Server Internal Error", true
	case len(targets) > 0:
		return targets, 0, "", true
	case !local:
		return nil, 0, "", false
	case !registered:
		return nil, 404, "Not Found", true
	}
	return nil, 480, "Temporarily Unavailable", true
}

// sameContact compares a stored Contact with a Request-URI by user, host
// and port, which is what identifies the phone.
func sameContact(contact string, u *sip.Uri) bool {
	var c sip.Uri
	if err := sip.ParseUri(strings.Trim(contact, "<>"), &c); err != nil {
		return false
	}
	if c.User != u.User || !strings.EqualFold(c.Host, u.Host) {
		return false
	}
	port := func(x *sip.Uri) int {
		if x.Port == 0 {
			return 5060
		}
		return x.Port
	}
	return port(&c) == port(u)
}
