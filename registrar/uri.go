package registrar

import (
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// uriEqual reports whether two SIP URIs are equivalent as RFC 3261 §19.1.4
// defines it, so that a backend's 2xx listing a phone's Contact in another
// spelling still accepts it: chan_pjsip with rewrite_contact=yes answers
// <sip:201@10.0.0.5:5070;transport=UDP> with <sip:201@10.0.0.5:5070>.
//
//   - scheme (sip and sips never match); userinfo case-sensitive; host
//     case-insensitive; port present in one only never matches;
//   - a uri-parameter in both must match (case-insensitively); user, ttl,
//     method and maddr in one only never match; others in one only are
//     ignored, transport with a condition (below);
//   - headers are never ignored: the same names with the same values;
//   - %HH escapes are decoded before comparing.
//
// transport in one URI only: the RFC ignores it by its rule and refuses it
// by its example (sip:bob@biloxi.com is not sip:bob@biloxi.com;transport=udp,
// "can resolve to different transports"). Both hold when the URI without
// transport names its target by port or numeric host (RFC 3263 §4.1: no
// NAPTR/SRV lookup picks a transport for it): the parameter is ignored
// then, and refuses the match otherwise. Asterisk drops the parameter of
// whatever transport it received the REGISTER on (UDP from hapbx), so a
// phone's ;transport=tcp or ;transport=tls comes back without it too.
func uriEqual(a, b *sip.Uri) bool {
	if a.Wildcard || b.Wildcard {
		return a.Wildcard == b.Wildcard
	}
	if !strings.EqualFold(uriScheme(a), uriScheme(b)) {
		return false
	}
	if a.Raw() != "" || b.Raw() != "" {
		return a.Raw() == b.Raw()
	}
	if unescape(a.User) != unescape(b.User) || unescape(a.Password) != unescape(b.Password) ||
		!strings.EqualFold(a.Host, b.Host) || a.Port != b.Port {
		return false
	}
	return paramsMatch(a, b) && paramsMatch(b, a) && headersEqual(a.Headers, b.Headers)
}

// paramsMatch checks a's uri-parameters against b's; uriEqual runs it both
// ways.
func paramsMatch(a, b *sip.Uri) bool {
	for _, kv := range a.UriParams {
		name := strings.ToLower(unescape(kv.K))
		v, ok := uriParam(b.UriParams, name)
		switch {
		case ok:
			if !strings.EqualFold(unescape(kv.V), v) {
				return false
			}
		case mustMatchParam(name):
			return false
		case name == "transport":
			if !addressed(b) {
				return false
			}
		}
	}
	return true
}

// mustMatchParam tells the uri-parameters that never match when only one
// URI has them (RFC 3261 §19.1.4).
func mustMatchParam(name string) bool {
	switch name {
	case "user", "ttl", "method", "maddr":
		return true
	}
	return false
}

// addressed tells whether u names its target by port or numeric host, so
// that no DNS lookup (RFC 3263 §4.1) chooses its transport.
func addressed(u *sip.Uri) bool {
	if u.Port != 0 {
		return true
	}
	_, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	return err == nil
}

// uriParam finds a uri-parameter by its lower-case, unescaped name.
func uriParam(ps sip.HeaderParams, name string) (string, bool) {
	for _, kv := range ps {
		if strings.EqualFold(unescape(kv.K), name) {
			return unescape(kv.V), true
		}
	}
	return "", false
}

// headersEqual compares URI header components: names case-insensitive,
// values exact after unescaping, order irrelevant.
func headersEqual(a, b sip.HeaderParams) bool {
	if len(a) != len(b) {
		return false
	}
	return slices.Equal(canonHeaders(a), canonHeaders(b))
}

func canonHeaders(hs sip.HeaderParams) []string {
	out := make([]string, 0, len(hs))
	for _, kv := range hs {
		out = append(out, strings.ToLower(unescape(kv.K))+"="+unescape(kv.V))
	}
	slices.Sort(out)
	return out
}

func uriScheme(u *sip.Uri) string {
	if u.Scheme == "" {
		return "sip" // sipgo's default when the scheme was left out
	}
	return u.Scheme
}

// unescape decodes %HH escapes; a malformed escape leaves s as it is, which
// then only matches the same malformed spelling.
func unescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	d, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return d
}

// contactKey is the identity of a Contact within an AOR. URIs that uriEqual
// finds equivalent always share a key: it holds what must match whenever
// present (scheme, userinfo, host, port, the user/ttl/method/maddr
// parameters, headers) and leaves out the parameters that may be missing
// from one spelling (transport, rinstance, ...). So a phone re-sending its
// Contact with ;transport=UDP finds the binding stored from the backend's
// 2xx without it. Two Contacts differing only in those parameters are one
// binding.
func contactKey(u *sip.Uri) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(uriScheme(u)))
	b.WriteByte(':')
	if raw := u.Raw(); raw != "" {
		b.WriteString(raw)
		return b.String()
	}
	b.WriteString(unescape(u.User))
	if u.Password != "" {
		b.WriteByte(':')
		b.WriteString(unescape(u.Password))
	}
	b.WriteByte('@')
	b.WriteString(strings.ToLower(u.Host))
	if u.Port != 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(u.Port))
	}
	ps := make([]string, 0, 4)
	for _, kv := range u.UriParams {
		if name := strings.ToLower(unescape(kv.K)); mustMatchParam(name) {
			ps = append(ps, name+"="+strings.ToLower(unescape(kv.V)))
		}
	}
	slices.Sort(ps)
	for _, p := range ps {
		b.WriteByte(';')
		b.WriteString(p)
	}
	if len(u.Headers) > 0 {
		b.WriteByte('?')
		b.WriteString(strings.Join(canonHeaders(u.Headers), "&"))
	}
	return b.String()
}

// contactKeyString is contactKey for a stored Contact string.
func contactKeyString(s string) string {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		return s
	}
	return contactKey(&u)
}
