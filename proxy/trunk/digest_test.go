package trunk

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/zap/zaptest"
)

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// A 407 (a proxy in front of the registrar) is answered in
// Proxy-Authorization, with qop=auth computed as RFC 2617 says (checked
// here by hand, not by the library that computed it).
func TestAnswerProxyChallenge(t *testing.T) {
	cfg := trunkConfig("192.0.2.1")
	r, err := NewRegistration(cfg, "s3cret", RegistrationConfig{
		Contact: sip.Uri{Scheme: "sip", Host: "192.0.2.100", Port: 5060}, Timeout: 1, BackoffMin: 1, BackoffMax: 1,
	}, nil, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	req := r.request(Target{Transport: "udp"}, nil)
	res := sip.NewResponseFromRequest(req, sip.StatusProxyAuthRequired, "Proxy Authentication Required", nil)
	res.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="prov", nonce="abc", qop="auth", algorithm=md5`))
	h, err := r.answer(req, res)
	if err != nil {
		t.Fatal(err)
	}
	if h.Name() != "Proxy-Authorization" {
		t.Fatalf("header %s, want Proxy-Authorization", h.Name())
	}
	c, err := digest.ParseCredentials(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	ha1 := md5hex("4930123:prov:s3cret")
	ha2 := md5hex("REGISTER:sip:provider.test")
	want := md5hex(fmt.Sprintf("%s:abc:%08x:%s:auth:%s", ha1, c.Nc, c.Cnonce, ha2))
	if c.Username != "4930123" || c.URI != "sip:provider.test" || c.QOP != "auth" || c.Response != want {
		t.Errorf("credentials %+v, want response %s", c, want)
	}

	res = sip.NewResponseFromRequest(req, sip.StatusUnauthorized, "Unauthorized", nil)
	if _, err := r.answer(req, res); err == nil {
		t.Error("a 401 without WWW-Authenticate answered")
	}
}

// The proxy answers a provider's 407 to an outgoing INVITE through
// Set.Authorize: the digest is over INVITE and the request's URI.
func TestSetAuthorizeInvite(t *testing.T) {
	send, port := sipStack(t)
	cfgs := []Config{Config{Name: "a", Hosts: []string{"192.0.2.1"}, User: "4930123"}.WithDefaults(), Config{Name: "b", Hosts: []string{"192.0.2.2"}}.WithDefaults()}
	sc := SetConfig{Contact: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), Registration: DefaultRegistrationConfig()}
	s, err := NewSet(cfgs, map[string]string{"a": "s3cret"}, sc, nil, send, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "4940555", Host: "provider.test"})
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.INVITE})
	res := sip.NewResponseFromRequest(req, sip.StatusProxyAuthRequired, "Proxy Authentication Required", nil)
	res.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="prov", nonce="n1", algorithm=MD5`))
	h, err := s.Authorize("a", req, res)
	if err != nil {
		t.Fatal(err)
	}
	c, err := digest.ParseCredentials(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	ha1, ha2 := md5hex("4930123:prov:s3cret"), md5hex("INVITE:sip:4940555@provider.test")
	if h.Name() != "Proxy-Authorization" || c.Response != md5hex(ha1+":n1:"+ha2) {
		t.Errorf("%s: %s", h.Name(), h.Value())
	}
	if _, err := s.Authorize("b", req, res); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("trunk without credentials: %v", err)
	}
	if _, err := s.Authorize("zzz", req, res); !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown trunk: %v", err)
	}
}
