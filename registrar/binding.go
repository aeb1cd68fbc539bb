package registrar

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Source is where a REGISTER came from, as the proxy's transport saw it.
type Source struct {
	// Addr is the received address and port (rport), not what the Contact claims.
	Addr netip.AddrPort `json:"addr"`
	// Transport is "udp", "tcp" or "tls".
	Transport string `json:"transport"`
	// ConnID names the TCP/TLS connection requests to the phone must reuse; empty for UDP.
	ConnID string `json:"conn_id,omitempty"`
}

// Binding is one Contact registered for an address of record.
type Binding struct {
	// AOR is "sip:user@domain" from the To header, scheme and domain lower case.
	AOR string `json:"aor"`
	// Contact is the Contact URI as the backend's 2xx listed it; the request
	// URI to reach the phone.
	Contact string `json:"contact"`
	// Source is where the phone's REGISTER was received; send to it, not to
	// the Contact host, which is often a private address behind NAT.
	Source Source `json:"source"`
	// CallID and CSeq identify the registration dialog (RFC 3261 10.3).
	CallID string `json:"call_id"`
	CSeq   uint32 `json:"cseq"`
	// Expires is the absolute expiry.
	Expires time.Time `json:"expires"`
	// Updated is when the binding was last stored or refreshed.
	Updated time.Time `json:"updated"`
	// UserAgent is the phone's User-Agent header, for operators.
	UserAgent string `json:"user_agent,omitempty"`
	// Backend is the Asterisk that accepted the registration.
	Backend string `json:"backend,omitempty"`
	// Q is the Contact's q-value (0..1); 1 when the phone gave none.
	Q float32 `json:"q"`
}

// Remaining is the binding's lifetime left at now, never negative.
func (b Binding) Remaining(now time.Time) time.Duration {
	d := b.Expires.Sub(now)
	if d < 0 {
		return 0
	}
	return d
}

// update is what one REGISTER/2xx pair does to one AOR.
type update struct {
	aor       string // display form "sip:user@host"
	removeAll bool   // Contact: * with Expires: 0
	set       []Binding
	remove    []string // Contact URIs to remove
	// listed holds the contact keys of the 2xx's Contact list; stored bindings
	// of the same backend missing from it were dropped by that backend.
	listed  map[string]bool
	hasList bool
	isQuery bool // REGISTER without Contact: changes nothing
}

// extract turns a REGISTER and its 2xx into an update. It only reads the
// messages (and caps lifetimes at max_expires); the table decides the rest.
func extract(cfg *Config, req *sip.Request, res *sip.Response, src Source, backend string, now time.Time) (update, error) {
	var u update
	if req == nil || res == nil {
		return u, fmt.Errorf("%w: missing request or response", ErrInvalid)
	}
	if req.Method != sip.REGISTER {
		return u, fmt.Errorf("%w: method %q is not REGISTER", ErrInvalid, req.Method)
	}
	if !res.IsSuccess() {
		return u, fmt.Errorf("%w: response status %d is not 2xx", ErrInvalid, res.StatusCode)
	}
	to := req.To()
	if to == nil {
		return u, fmt.Errorf("%w: REGISTER without To", ErrInvalid)
	}
	aor, err := aorFromURI(&to.Address)
	if err != nil {
		return u, err
	}
	u.aor = aor
	src.Addr = netip.AddrPortFrom(src.Addr.Addr().Unmap(), src.Addr.Port())
	src.Transport = strings.ToLower(src.Transport)

	callID := ""
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	if callID == "" {
		return u, fmt.Errorf("%w: REGISTER for %s without Call-ID", ErrInvalid, aor)
	}
	if h := res.CallID(); h == nil || h.Value() != callID {
		return u, fmt.Errorf("%w: response Call-ID does not match REGISTER %q for %s", ErrInvalid, callID, aor)
	}
	var cseq uint32
	if h := req.CSeq(); h != nil {
		cseq = h.SeqNo
	}
	ua := ""
	if h := req.GetHeader("User-Agent"); h != nil {
		ua = h.Value()
	}
	reqExp, reqHasExp := headerExpires(req)
	resExp, resHasExp := headerExpires(res)

	reqContacts := contacts(req)
	resContacts := contacts(res)

	if len(reqContacts) == 0 {
		u.isQuery = true
		return u, nil
	}
	for _, c := range reqContacts {
		if c.Address.Wildcard {
			if len(reqContacts) != 1 || !reqHasExp || reqExp != 0 {
				return u, fmt.Errorf("%w: Contact: * for %s needs Expires: 0 and no other Contact", ErrInvalid, aor)
			}
			u.removeAll = true
			return u, nil
		}
	}

	u.hasList = len(resContacts) > 0
	if u.hasList {
		u.listed = make(map[string]bool, len(resContacts))
		for _, c := range resContacts {
			if !c.Address.Wildcard {
				u.listed[contactKey(&c.Address)] = true
			}
		}
	}

	for _, rc := range reqContacts {
		var secs uint32
		contact := rc.Address.String()
		switch {
		case u.hasList:
			// The 2xx is authoritative: a Contact it does not list (in any
			// equivalent spelling) was refused or removed by the backend.
			var got *sip.ContactHeader
			for _, c := range resContacts {
				if !c.Address.Wildcard && uriEqual(&c.Address, &rc.Address) {
					got = c
					break
				}
			}
			if got == nil {
				u.remove = append(u.remove, contact)
				continue
			}
			contact = got.Address.String()
			if s, ok := paramExpires(got.Params); ok {
				secs = s
			} else if resHasExp {
				secs = resExp
			} else {
				secs = requestExpires(cfg, rc, reqExp, reqHasExp)
			}
		default:
			// A 2xx without Contact list (non-compliant, but seen): the 2xx's
			// Expires if any, else what the phone asked for; a removal asked
			// for stays a removal.
			secs = requestExpires(cfg, rc, reqExp, reqHasExp)
			if secs != 0 && resHasExp {
				secs = resExp
			}
		}
		if secs == 0 {
			u.remove = append(u.remove, contact)
			continue
		}
		d := time.Duration(secs) * time.Second
		if d > cfg.MaxExpires {
			// Whole seconds: the 2xx to the phone states the lifetime in
			// seconds, and the binding must live exactly that long.
			d = cfg.MaxExpires.Truncate(time.Second)
		}
		u.set = append(u.set, Binding{
			AOR:       aor,
			Contact:   contact,
			Source:    src,
			CallID:    callID,
			CSeq:      cseq,
			Expires:   now.Add(d),
			Updated:   now,
			UserAgent: ua,
			Backend:   backend,
			Q:         paramQ(rc.Params),
		})
	}
	return u, nil
}

func requestExpires(cfg *Config, c *sip.ContactHeader, reqExp uint32, reqHasExp bool) uint32 {
	if s, ok := paramExpires(c.Params); ok {
		return s
	}
	if reqHasExp {
		return reqExp
	}
	return uint32(cfg.DefaultExpires / time.Second)
}

func contacts(m sip.Message) []*sip.ContactHeader {
	hs := m.GetHeaders("Contact")
	out := make([]*sip.ContactHeader, 0, len(hs))
	for _, h := range hs {
		if c, ok := h.(*sip.ContactHeader); ok {
			out = append(out, c)
		}
	}
	return out
}

// headerExpires reads the Expires header; a value that is not a number is
// treated as absent (RFC 3261 10.3 step 7 allows the default then).
func headerExpires(m sip.Message) (uint32, bool) {
	hs := m.GetHeaders("Expires")
	if len(hs) == 0 {
		return 0, false
	}
	return parseSeconds(hs[0].Value())
}

func paramExpires(p sip.HeaderParams) (uint32, bool) {
	v, ok := p.Get("expires")
	if !ok {
		return 0, false
	}
	return parseSeconds(v)
}

func parseSeconds(s string) (uint32, bool) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, false
	}
	if n > math.MaxUint32 {
		n = math.MaxUint32
	}
	return uint32(n), true
}

func paramQ(p sip.HeaderParams) float32 {
	v, ok := p.Get("q")
	if !ok {
		return 1
	}
	q, err := strconv.ParseFloat(strings.TrimSpace(v), 32)
	if err != nil || q < 0 || q > 1 || math.IsNaN(q) {
		return 1
	}
	return float32(q)
}

// aorFromURI gives the display AOR "scheme:user@host" of a To URI.
func aorFromURI(u *sip.Uri) (string, error) {
	if u.User == "" || u.Host == "" {
		return "", fmt.Errorf("%w: To URI %q has no user or host", ErrInvalid, u.String())
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "sips" {
		scheme = "sip"
	}
	return scheme + ":" + u.User + "@" + strings.ToLower(u.Host), nil
}

// splitAOR takes "sip:user@host[:port][;params]" (scheme optional) apart
// without allocating. A string without '@' and without scheme is a bare user.
func splitAOR(s string) (user, host string, ok bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	scheme := false
	if len(s) >= 4 && strings.EqualFold(s[:4], "sip:") {
		s, scheme = s[4:], true
	} else if len(s) >= 5 && strings.EqualFold(s[:5], "sips:") {
		s, scheme = s[5:], true
	}
	at := strings.IndexByte(s, '@')
	if at < 0 {
		if scheme {
			return "", "", false
		}
		if i := strings.IndexAny(s, ";>"); i >= 0 {
			s = s[:i]
		}
		return s, "", s != ""
	}
	user, host = s[:at], s[at+1:]
	if i := strings.IndexByte(user, ';'); i >= 0 {
		user = user[:i]
	}
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i >= 0 {
			host = host[:i+1]
		}
	} else if i := strings.IndexAny(host, ":;?>"); i >= 0 {
		host = host[:i]
	}
	return user, host, user != "" && host != ""
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
