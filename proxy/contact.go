package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// A provider sees hapbx's advertised address (the VIP), never a backend's,
// in the Contact of the calls between them, as Kamailio's add_contact_alias
// and handle_ruri_alias do it: the Contact a backend wrote is replaced by
// one at the advertised address carrying the original URI in contactParam,
// signed with the dialog secret that both proxies of a pair share
// (aliasContacts). A provider's in-dialog request, whose Request-URI is
// then that Contact, gets the original URI back before it is routed
// (unaliasRequestURI), so it reaches the backend's own target; the trust
// rules still apply to it (the dialog token of the Record-Route, a backend
// as next hop). An altered or forged alias, or one of another Call-ID, is
// refused. Phones keep seeing the backends' Contacts (Record-Route keeps
// hapbx in their dialogs).

// contactParam is the Contact URI parameter that carries the backend's
// original Contact: base64url(URI) "." base64url(MAC).
const contactParam = "hpxc"

// contactMACLen is the HMAC-SHA256 prefix kept, as for the dialog tokens.
const contactMACLen = tokenLen

// contactAlias is the value of contactParam for uri in the dialog callID.
func (p *Proxy) contactAlias(callID, uri string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(uri)) + "." + p.contactMAC(callID, uri)
}

func (p *Proxy) contactMAC(callID, uri string) string {
	m := hmac.New(sha256.New, p.secret)
	for _, s := range []string{"hapbx-contact-v1", callID, uri} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:contactMACLen])
}

// aliasContacts replaces every Contact URI of m (a backend's request to a
// provider, or its response to one) with hapbx's advertised address over
// transport, the original kept in contactParam; the user part, display
// name and header parameters stay.
func (p *Proxy) aliasContacts(m sip.Message, transport string) {
	cid := callID(m)
	if cid == "" {
		return
	}
	for _, h := range m.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.Wildcard || c.Address.Host == "" || p.isLocal(&c.Address) {
			continue
		}
		orig := c.Address.String()
		u := sip.Uri{Scheme: "sip", User: c.Address.User, Host: p.cfg.Advertise, Port: p.portFor[transport]}
		if transport != "udp" {
			u.UriParams = params("transport", transport)
		}
		u.UriParams = append(u.UriParams, sip.HeaderKV{K: contactParam, V: p.contactAlias(cid, orig)})
		c.Address = u
	}
}

// unaliasRequestURI gives a request addressed to one of hapbx's alias
// Contacts its original Request-URI back. It reports false for an alias
// this pair did not make for the request's Call-ID (altered, forged,
// copied from another dialog); a Request-URI without one is left alone.
func (p *Proxy) unaliasRequestURI(req *sip.Request) bool {
	v, ok := req.Recipient.UriParams.Get(contactParam)
	if !ok || !p.isLocal(&req.Recipient) {
		return true
	}
	enc, mac, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return false
	}
	orig := string(raw)
	if !hmac.Equal([]byte(mac), []byte(p.contactMAC(callID(req), orig))) {
		return false
	}
	var u sip.Uri
	if err := sip.ParseUri(orig, &u); err != nil {
		return false
	}
	req.Recipient = u
	return true
}

// toProvider reports whether out, a backend's request forwarded to t, goes
// to a provider: a trunk's host (an initial request naming the trunk), or
// an address in a trunk's ACL (an in-dialog request of a trunk call, a
// re-INVITE or UPDATE as much as a BYE), also when the provider's Contact
// or Record-Route names it by DNS.
func (p *Proxy) toProvider(in *sip.Request, t target) bool {
	if t.trunk != "" {
		return true
	}
	if p.trunks == nil || p.fromBackend(in) == "" {
		return false
	}
	host, _, err := net.SplitHostPort(t.addr)
	if err != nil {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return p.trunkSource(ip.Unmap())
	}
	return slices.ContainsFunc(p.lookupHop(host, t.transport), p.trunkSource)
}

// lookupHop returns the addresses a next hop named by DNS may be reached
// at, looked up as sipgo does to send to it (A/AAAA, else SRV), so that a
// request to a provider's name shows it the VIP as any other does.
func (p *Proxy) lookupHop(host, transport string) []netip.Addr {
	r := p.resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	if ips, err := r.LookupNetIP(ctx, "ip", host); err == nil && len(ips) > 0 {
		return unmapAll(ips)
	}
	_, srvs, err := r.LookupSRV(ctx, "sip", transport, host)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, s := range srvs {
		if ips, err := r.LookupNetIP(ctx, "ip", s.Target); err == nil {
			out = append(out, unmapAll(ips)...)
		}
	}
	return out
}

func unmapAll(ips []netip.Addr) []netip.Addr {
	for i, ip := range ips {
		ips[i] = ip.Unmap()
	}
	return ips
}

// toProviderVia reports whether a response goes, by its Via v (received,
// else sent-by), to an address in a trunk's ACL: a stray 2xx a backend
// sends to a provider through the twin (stray.go).
func (p *Proxy) toProviderVia(v *sip.ViaHeader) bool {
	host, _ := v.Params.Get("received")
	if host == "" {
		host = v.Host
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && p.trunkSource(ip.Unmap())
}
