package proxy

import (
	"errors"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/registrar"
)

// Registrar keeps the phones' bindings: filled from the backends' 2xx to
// REGISTER, read to reach phones, and able to answer a refresh on its own
// when no backend can.
type Registrar interface {
	Save(req *sip.Request, res *sip.Response, src registrar.Source, backend string) ([]registrar.Binding, error)
	Lookup(aor string) ([]registrar.Binding, error)
	RefreshFromStore(req *sip.Request, src registrar.Source) ([]registrar.Binding, error)
}

var _ Registrar = (*registrar.Registrar)(nil)

// WithRegistrar stores registrations in r and routes requests from the
// backends to the phones through it.
func WithRegistrar(r Registrar) Option { return func(p *Proxy) { p.reg = r } }

// source is where req came from, as the registrar records it: the received
// address, and for TCP/TLS the connection (sipgo keys it by that address).
func source(req *sip.Request) (registrar.Source, error) {
	tr := strings.ToLower(req.Transport())
	conn := ""
	if sip.IsReliable(tr) {
		conn = req.Source()
	}
	return registrar.SourceOf(req.Source(), tr, conn)
}

// saveBinding records the registration a backend accepted.
func (p *Proxy) saveBinding(req *sip.Request, res *sip.Response, backend string) {
	if p.reg == nil {
		return
	}
	src, err := source(req)
	if err != nil {
		p.log.Warn("registration not stored: bad source", zap.Error(err))
		return
	}
	if _, err := p.reg.Save(req, res, src, backend); err != nil {
		p.log.Warn("registration not stored", zap.String("call_id", callID(req)), zap.String("backend", backend), zap.Error(err))
	}
}

// answerFromStore answers a REGISTER refresh 200 from the stored binding
// when no backend can take it; false when the registrar cannot.
func (p *Proxy) answerFromStore(tx sip.ServerTransaction, req *sip.Request) bool {
	if p.reg == nil || req.Method != sip.REGISTER {
		return false
	}
	src, err := source(req)
	if err != nil {
		return false
	}
	bs, err := p.reg.RefreshFromStore(req, src)
	if err != nil {
		return false
	}
	res := registrar.RefreshResponse(req, bs, time.Now())
	if err := tx.Respond(res); err != nil {
		p.log.Debug("store refresh reply failed", zap.Error(err))
		return true
	}
	p.m.responses.WithLabelValues(string(req.Method), "200").Inc()
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
	bs, err := p.reg.Lookup(ruri)
	local := p.isLocal(&req.Recipient)
	switch {
	case errors.Is(err, registrar.ErrUnknownAOR):
		if local {
			return nil, 404, "Not Found", true
		}
		return nil, 0, "", false
	case errors.Is(err, registrar.ErrNoBinding):
		if local {
			return nil, 480, "Temporarily Unavailable", true
		}
		return nil, 0, "", false
	case err != nil:
		p.log.Warn("location lookup failed", zap.String("ruri", ruri), zap.Error(err))
		return nil, 500, "Server Internal Error", true
	}
	for _, b := range bs {
		if !local && !sameContact(b.Contact, &req.Recipient) {
			continue
		}
		t := target{addr: b.Source.Addr.String(), transport: b.Source.Transport}
		if local {
			t.ruri = b.Contact
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, 0, "", false
	}
	return targets, 0, "", true
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
