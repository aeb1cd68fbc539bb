package proxy

import (
	"net"

	"github.com/emiago/sipgo/sip"
)

// Who may make the proxy send what, by where a request comes from (its
// source address, never a header):
//
//   - a configured backend is trusted: its requests go where they name
//     (a phone located through the registrar, a Request-URI, a Route);
//   - anyone else (phones, and the twin proxy: hapbx never sends SIP to its
//     twin, so no path needs to trust it) may reach the backends only: an
//     initial request goes to the backends or is answered here, never to a
//     host it names, and an in-dialog request is forwarded only inside a
//     dialog this proxy (or its twin, holding the same secret) record-routed,
//     to the backend that dialog's token names;
//   - a trunk's provider (a source in a trunk's ACL, Trunks.Match) is
//     anyone else as above, but its initial requests carry TrunkHeader
//     naming the trunk and go to the trunk's backends only (trunks.go);
//     TrunkHeader from any other source is removed, and an initial request
//     naming a trunk in it from anyone but a backend is refused; its
//     in-dialog requests to hapbx's alias of a backend's Contact get that
//     Contact back only when the pair signed the alias for their Call-ID
//     (contact.go), and then pass the rules above like any other.
//
// A refusal is answered 403 (an ACK is dropped), counted in
// hapbx_proxy_refused_total{reason} and sent nowhere.

// Reasons of hapbx_proxy_refused_total: a fixed set.
const (
	refusedPreloadedRoute = "preloaded_route" // an initial request with a Route to another host
	refusedNoToken        = "no_dialog_token" // an in-dialog request without this proxy's Route token
	refusedForeignHop     = "foreign_hop"     // an in-dialog request towards a host that is no backend
	refusedBadToken       = "bad_dialog_token"
	refusedTrunk          = "trunk_not_backend" // an initial request naming a trunk, not from a backend
	refusedBadAlias       = "bad_contact_alias" // a Request-URI with a Contact alias the pair did not make (contact.go)
)

// fromBackend returns the backend a request came from, by source address.
func (p *Proxy) fromBackend(req *sip.Request) string {
	host, _, err := net.SplitHostPort(req.Source())
	if err != nil {
		return ""
	}
	return p.backends.Load().byHost[host]
}

// route is req.Route() without its cost when req has no Route: sipgo
// allocates a header to parse into at every call that finds none.
func route(req *sip.Request) *sip.RouteHeader {
	if req.GetHeader("route") == nil {
		return nil
	}
	return req.Route()
}

// takeOwnRoutes removes the Route entries naming this proxy from the top of
// req (RFC 3261 §16.4) and returns the dialog token they carried.
func (p *Proxy) takeOwnRoutes(req *sip.Request) string {
	tok := ""
	for r := route(req); r != nil && p.isLocal(&r.Address); r = route(req) {
		if v, ok := r.Address.UriParams.Get(tokenParam); ok && tok == "" {
			tok = v
		}
		req.RemoveHeader("Route")
	}
	return tok
}

// refusal applies the trust rules to a request, its own Route entries
// consumed (tok is the token they carried): the reason it must go nowhere,
// or "" to route it.
func (p *Proxy) refusal(req *sip.Request, tok string) string {
	if p.fromBackend(req) != "" {
		return ""
	}
	if _, inDialog := req.To().Params.Get("tag"); !inDialog {
		if route(req) != nil {
			return refusedPreloadedRoute
		}
		return "" // to the backends, or answered here
	}
	t, ok := p.nextHop(req)
	if !ok {
		return "" // names no hop: goes to the backend of its dialog
	}
	if tok == "" {
		return refusedNoToken
	}
	// By host, as fromBackend: the backend's Contact may name another port
	// or transport than its configured address.
	host, _, _ := net.SplitHostPort(t.addr)
	be := p.backends.Load().byHost[host]
	if be == "" {
		return refusedForeignHop
	}
	if !p.tokenAllows(tok, req, be) {
		return refusedBadToken
	}
	return ""
}

// recordRouteToken is the token written into the Record-Route of in, a
// dialog-creating request forwarded to t: it names the backend of the
// dialog, the one end its other side may reach.
func (p *Proxy) recordRouteToken(in *sip.Request, t target) string {
	be := t.backend
	if be == "" {
		be = p.fromBackend(in)
	}
	if be == "" {
		return ""
	}
	return p.dialogToken(in.CallID().Value(), tagOf(in.From().Params), be)
}

// refusedText is the reason phrase of each refusal's 403.
var refusedText = map[string]string{
	refusedPreloadedRoute: "preloaded Route",
	refusedNoToken:        "not in a dialog of this proxy",
	refusedForeignHop:     "in-dialog request to a foreign host",
	refusedBadToken:       "not in a dialog of this proxy",
	refusedTrunk:          "only a backend may call through a trunk",
	refusedBadAlias:       "not in a dialog of this proxy",
}
