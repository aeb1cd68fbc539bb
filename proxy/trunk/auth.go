package trunk

import (
	"fmt"
	"strings"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// authorize returns the header that answers the digest challenge of res
// (401: Authorization, 407: Proxy-Authorization) to req as user with
// password (RFC 3261 §22.2, RFC 2617; github.com/icholy/digest computes).
func authorize(user, password string, req *sip.Request, res *sip.Response) (sip.Header, error) {
	in, out := "WWW-Authenticate", "Authorization"
	if res.StatusCode == sip.StatusProxyAuthRequired {
		in, out = "Proxy-Authenticate", "Proxy-Authorization"
	}
	h := res.GetHeader(in)
	if h == nil {
		return nil, fmt.Errorf("%d without %s", res.StatusCode, in)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		return nil, fmt.Errorf("challenge %q: %w", h.Value(), err)
	}
	chal.Algorithm = strings.ToUpper(chal.Algorithm)
	cred, err := digest.Digest(chal, digest.Options{
		Method: req.Method.String(), URI: req.Recipient.Addr(),
		Username: user, Password: password, Count: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("digest for %q: %w", h.Value(), err)
	}
	return sip.NewHeader(out, cred.String()), nil
}

// Authorize answers the 401/407 challenge res of trunk name's provider to
// req with the trunk's credentials: the header to add to req sent again
// (its CSeq raised). The Asterisk nodes need no provider password.
func (s *Set) Authorize(name string, req *sip.Request, res *sip.Response) (sip.Header, error) {
	mb, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("trunk %q: %w", name, ErrUnknown)
	}
	if mb.password == "" {
		return nil, fmt.Errorf("trunk %q: %w", name, ErrNoCredentials)
	}
	return authorize(mb.trunk.cfg.User, mb.password, req, res)
}
