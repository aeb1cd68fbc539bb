package proxy

import (
	"strings"

	"github.com/emiago/sipgo/sip"
)

// writtenParses reports whether req, written out by sipgo, parses again
// (hapbx must never send what the next hop cannot read). sipgo writes the
// start line, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type and
// every header it does not know as they were read; it rebuilds the
// Request-URI, Via and the name-addr headers (From, To, Contact, Route,
// Record-Route, Refer-To, Referred-By) from their parts, and its parser
// accepts parts it then writes in a form it cannot read back: a Via with an
// empty host, a URI without scheme (written "sip:" and read as a SIP URI), a
// display name ending in a backslash, a Contact parameter whose quotes it
// doubles... Parts made only of plain characters are written back in a form
// that parses (plainURI and friends say why); the others, rare, are written
// and parsed again with sipgo's own parsers, which is what parsing the
// whole written message would do to them.
func writtenParses(req *sip.Request) bool {
	if !plainURI(&req.Recipient) && !uriReparses(&req.Recipient) {
		return false
	}
	for _, h := range req.Headers() {
		var plain bool
		switch h := h.(type) {
		case *sip.ViaHeader:
			plain = plainVia(h)
		case *sip.FromHeader:
			plain = plainName(h.DisplayName) && plainURI(&h.Address)
		case *sip.ToHeader:
			plain = plainName(h.DisplayName) && plainURI(&h.Address)
		case *sip.ReferredByHeader:
			plain = plainName(h.DisplayName) && plainURI(&h.Address)
		case *sip.ContactHeader:
			// A comma outside quotes splits a Contact.
			plain = plainName(h.DisplayName) && plainURI(&h.Address) && !paramsContain(h.Params, ",")
		case *sip.RouteHeader:
			plain = plainURI(&h.Address)
		case *sip.RecordRouteHeader:
			plain = plainURI(&h.Address)
		case *sip.ReferToHeader:
			plain = plainURI(&h.Address)
		default:
			continue // written as read
		}
		if !plain && !headerReparses(h) {
			return false
		}
	}
	return true
}

// unplain are the characters that change how sipgo reads a written URI
// part back: '@' and '[' move the user/host split, '>' ends a bracketed
// URI, '"' and blanks (written quoted) open quotes, ',' splits a
// multi-valued header.
const unplain = "@[]<>\"\\, \t"

// plainURI reports whether u is a SIP URI whose written form
// (sip:[//][user[:password]@]host[:port][;params][?headers]) parses, also
// between < and >. With no unplain character in any part, sipgo's URI parser
// finds the '@' it wrote (or none), the host ends at the port's ':', ';' or
// '?' it wrote, the port is digits, and parameters never fail; the host is
// neither empty nor "*" (read back as the wildcard).
func plainURI(u *sip.Uri) bool {
	if u.Raw() != "" || (u.Scheme != "sip" && u.Scheme != "sips") || u.Wildcard {
		return false
	}
	if strings.ContainsAny(u.User, unplain) || strings.ContainsAny(u.Password, unplain) || !plainHost(u.Host) {
		return false
	}
	return !paramsContain(u.UriParams, unplain) && !paramsContain(u.Headers, unplain)
}

// plainHost: a name or IPv4 address, or an IPv6 reference short enough
// for sipgo's parser to find its ']'.
func plainHost(h string) bool {
	if h == "" || h == "*" {
		return false
	}
	if h[0] == '[' {
		if len(h) > 41 || h[len(h)-1] != ']' {
			return false
		}
		for _, c := range h[1 : len(h)-1] {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return false
			}
		}
		return true
	}
	return !strings.ContainsAny(h, unplain+":;?")
}

// plainName: a display name sipgo writes between quotes as it stored it;
// without quote or backslash in it, it reads back.
func plainName(dn string) bool { return !strings.ContainsAny(dn, "\"\\") }

// plainVia reports whether v's written form (proto/version/transport host
// [:port][;params]) parses: the protocol parts are as read; a host that is
// not empty and has no ':' (sipgo writes IPv6 hosts itself, not always
// bracketed), ';', '[' or ']' ends where written; parameters without comma
// or quoting never fail.
func plainVia(v *sip.ViaHeader) bool {
	return v.Host != "" && !strings.ContainsAny(v.Host, ":;[]") && !paramsContain(v.Params, ",\" \t")
}

func paramsContain(ps sip.HeaderParams, chars string) bool {
	for _, kv := range ps {
		if strings.ContainsAny(kv.K, chars) || strings.ContainsAny(kv.V, chars) {
			return true
		}
	}
	return false
}

// uriReparses parses u's written form as sipgo parses a Request-URI.
func uriReparses(u *sip.Uri) bool {
	s := u.String()
	var again sip.Uri
	return !strings.Contains(s, " ") && sip.ParseUri(s, &again) == nil && !again.Wildcard
}

// headerReparses parses h's written line with sipgo's header parsers, as
// they parse it in a whole message.
func headerReparses(h sip.Header) bool {
	_, err := sip.HeadersParser(sip.DefaultHeadersParser()).ParseHeader(nil, []byte(h.String()))
	return err == nil
}
