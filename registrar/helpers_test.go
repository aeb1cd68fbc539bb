package registrar

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// msg parses a SIP message written with \n line ends.
func msg(t testing.TB, text string) sip.Message {
	t.Helper()
	text = strings.TrimLeft(text, "\n")
	text = strings.ReplaceAll(text, "\n", "\r\n")
	m, err := sip.ParseMessage([]byte(text))
	if err != nil {
		t.Fatalf("parse %q: %v", text, err)
	}
	return m
}

func reqOf(t testing.TB, text string) *sip.Request {
	t.Helper()
	r, ok := msg(t, text).(*sip.Request)
	if !ok {
		t.Fatalf("not a request: %q", text)
	}
	return r
}

func resOf(t testing.TB, text string) *sip.Response {
	t.Helper()
	r, ok := msg(t, text).(*sip.Response)
	if !ok {
		t.Fatalf("not a response: %q", text)
	}
	return r
}

func src(s string) Source {
	return Source{Addr: netip.MustParseAddrPort(s), Transport: "udp"}
}

// fakeClock is a settable clock for the registrar.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

var t0 = time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)

// newTest builds a registrar with a fake clock; dir "" keeps it in memory.
func newTest(t testing.TB, dir string, mod func(*Config)) (*Registrar, *fakeClock, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = dir
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	clk := &fakeClock{t: t0}
	r, err := newWithClock(cfg, "node-a", zaptest.NewLogger(t), reg, clk.now)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, clk, reg
}

// register builds a REGISTER/200 pair the way Asterisk chan_sip answers.
func register(t testing.TB, user, contact, callID string, cseq, expires int) (*sip.Request, *sip.Response) {
	t.Helper()
	req := reqOf(t, `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-`+callID+`;rport
Max-Forwards: 70
From: <sip:`+user+`@pbx.example.com>;tag=f1
To: <sip:`+user+`@pbx.example.com>
Call-ID: `+callID+`
CSeq: `+itoa(cseq)+` REGISTER
Contact: <`+contact+`>
Expires: `+itoa(expires)+`
User-Agent: test-phone
Content-Length: 0

`)
	res := resOf(t, `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-`+callID+`;rport=5060;received=192.0.2.10
From: <sip:`+user+`@pbx.example.com>;tag=f1
To: <sip:`+user+`@pbx.example.com>;tag=as1
Call-ID: `+callID+`
CSeq: `+itoa(cseq)+` REGISTER
Expires: `+itoa(expires)+`
Contact: <`+contact+`>;expires=`+itoa(expires)+`
Content-Length: 0

`)
	return req, res
}

func itoa(i int) string { return strconv.Itoa(i) }

// newAt builds a registrar on node-a whose clock stands still at at.
func newAt(cfg Config, at time.Time, log *zap.Logger, reg prometheus.Registerer) (*Registrar, error) {
	return newWithClock(cfg, "node-a", log, reg, func() time.Time { return at })
}
