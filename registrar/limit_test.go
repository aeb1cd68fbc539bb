package registrar

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// contactOf gives phone n of an AOR its own Contact.
func contactOf(user string, n int) string {
	return "sip:" + user + "@10.0.1." + strconv.Itoa(n) + ":5060"
}

func TestMaxBindingsPerAOR(t *testing.T) {
	r, _, reg := newTest(t, "", func(c *Config) { c.MaxBindingsPerAOR = 3 })
	// Phone n registers through backend n: a 2xx listing only its own
	// Contact then drops nobody else's.
	save := func(n, cseq, expires int) error {
		req, res := register(t, "201", contactOf("201", n), "d"+strconv.Itoa(n), cseq, expires)
		_, err := r.Save(req, res, src("192.0.2.1:5060"), "ast"+strconv.Itoa(n))
		return err
	}
	for n := 1; n <= 3; n++ {
		if err := save(n, 1, 600); err != nil {
			t.Fatalf("binding %d: %v", n, err)
		}
	}
	// The new one is refused, not an old one dropped.
	if err := save(4, 1, 600); !errors.Is(err, ErrAORFull) {
		t.Fatalf("4th contact: %v, want ErrAORFull", err)
	}
	if n, _ := r.Count(); n != 3 {
		t.Fatalf("%d bindings after the refusal, want 3", n)
	}
	if bs, _ := r.Lookup("201"); len(bs) != 3 || slicesContain(bs, contactOf("201", 4)) {
		t.Fatalf("bindings %+v", bs)
	}
	// Other AORs are not limited by 201's.
	req, res := register(t, "202", contactOf("202", 1), "e1", 1, 600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	// A refresh at the limit passes; so does a removal, which makes room.
	if err := save(1, 2, 600); err != nil {
		t.Fatalf("refresh at the limit: %v", err)
	}
	if err := save(2, 2, 0); err != nil {
		t.Fatalf("removal at the limit: %v", err)
	}
	if err := save(4, 2, 600); err != nil {
		t.Fatalf("4th contact after a removal: %v", err)
	}
	if v := metricValue(t, reg, "hapbx_registrar_refused_total", "reason", "aor_limit"); v != 1 {
		t.Fatalf("refused{aor_limit} = %v, want 1", v)
	}
	// A binding expired but not yet purged is no obstacle and, renewed,
	// is new to the AOR.
	r2, clk, _ := newTest(t, "", func(c *Config) { c.MaxBindingsPerAOR = 1 })
	req, res = register(t, "201", contactOf("201", 1), "x1", 1, 60)
	if _, err := r2.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	clk.advance(61 * time.Second)
	req, res = register(t, "201", contactOf("201", 2), "x2", 1, 60)
	if _, err := r2.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatalf("new contact beside an expired one: %v", err)
	}
}

func slicesContain(bs []Binding, contact string) bool {
	for _, b := range bs {
		if b.Contact == contact {
			return true
		}
	}
	return false
}

func TestMaxBindingsRefusal(t *testing.T) {
	r, _, reg := newTest(t, "", func(c *Config) { c.MaxBindings = 2 })
	for n := 1; n <= 2; n++ {
		req, res := register(t, "30"+strconv.Itoa(n), contactOf("30"+strconv.Itoa(n), 1), "c"+strconv.Itoa(n), 1, 600)
		if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
			t.Fatal(err)
		}
	}
	newReq, newRes := register(t, "303", contactOf("303", 1), "c3", 1, 600)
	if err := r.Fits(newReq); !errors.Is(err, ErrFull) {
		t.Fatalf("Fits(new) at a full table: %v, want ErrFull", err)
	}
	if _, err := r.Save(newReq, newRes, src("192.0.2.1:5060"), "ast1"); !errors.Is(err, ErrFull) {
		t.Fatalf("Save(new) at a full table: %v, want ErrFull", err)
	}
	if _, err := r.Lookup("303"); !errors.Is(err, ErrUnknownAOR) {
		t.Fatalf("refused AOR is known: %v", err)
	}
	// Refreshes and removals of held bindings pass, at the door and on the 2xx.
	refresh, refreshRes := register(t, "301", contactOf("301", 1), "c1", 2, 600)
	removal, removalRes := register(t, "302", contactOf("302", 1), "c2", 2, 0)
	for _, req := range []*sip.Request{refresh, removal, reqOf(t, starReq), reqOf(t, queryReq)} {
		if err := r.Fits(req); err != nil {
			t.Fatalf("Fits(%s) at a full table: %v", req.StartLine(), err)
		}
	}
	if _, err := r.Save(refresh, refreshRes, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatalf("refresh at a full table: %v", err)
	}
	// A REGISTER moving 302 to a new contact frees as much as it takes.
	move := reqOf(t, `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-mv;rport
From: <sip:302@pbx.example.com>;tag=f1
To: <sip:302@pbx.example.com>
Call-ID: c2
CSeq: 3 REGISTER
Contact: <`+contactOf("302", 1)+`>;expires=0
Contact: <`+contactOf("302", 2)+`>
Expires: 600
Content-Length: 0

`)
	if err := r.Fits(move); err != nil {
		t.Fatalf("Fits(move) at a full table: %v", err)
	}
	if _, err := r.Save(removal, removalRes, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatalf("removal at a full table: %v", err)
	}
	if err := r.Fits(newReq); err != nil {
		t.Fatalf("Fits(new) after a removal: %v", err)
	}
	if v := metricValue(t, reg, "hapbx_registrar_refused_total", "reason", "table_full"); v != 2 {
		t.Fatalf("refused{table_full} = %v, want 2", v)
	}
}

// TestStoreGrants: the 2xx relayed to the phone states the lifetime the
// binding is kept, whatever the backend granted.
func TestStoreGrants(t *testing.T) {
	r, clk, _ := newTest(t, "", func(c *Config) { c.MaxExpires, c.DefaultExpires = 600*time.Second, 600*time.Second })
	store := func(req *sip.Request, res *sip.Response) *sip.Response {
		t.Helper()
		req.SetSource("192.0.2.1:5060")
		req.SetTransport("UDP")
		out, err := r.Store(req, res, "ast1")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	expiresOf := func(res *sip.Response, contact string) string {
		t.Helper()
		for _, h := range res.GetHeaders("Contact") {
			c := h.(*sip.ContactHeader)
			if contactKey(&c.Address) == contactKeyString(contact) {
				v, _ := c.Params.Get("expires")
				return v
			}
		}
		t.Fatalf("no Contact %s in %s", contact, res)
		return ""
	}
	held := func(contact string) time.Duration {
		t.Helper()
		bs, err := r.Lookup("201")
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			if b.Contact == contact {
				return b.Expires.Sub(clk.now())
			}
		}
		t.Fatalf("no binding %s in %+v", contact, bs)
		return 0
	}
	c1, c2 := contactOf("201", 1), contactOf("201", 2)

	// Asterisk grants 3600: hapbx keeps and says 600.
	req, res := register(t, "201", c1, "d1", 1, 3600)
	out := store(req, res)
	if got := expiresOf(out, c1); got != "600" || held(c1) != 600*time.Second {
		t.Fatalf("granted %s, held %s; want 600 both", got, held(c1))
	}
	if got := out.GetHeader("Expires").Value(); got != "600" {
		t.Fatalf("Expires header %q, want 600", got)
	}
	if v, _ := res.Contact().Params.Get("expires"); v != "3600" {
		t.Fatalf("the backend's 2xx was changed: expires=%s", v)
	}
	// Asterisk grants less than max_expires: that is what is kept.
	clk.advance(100 * time.Second)
	req, res = register(t, "201", c2, "d2", 1, 120)
	res.AppendHeader(contactHeader(c1, 3500)) // Asterisk lists every binding
	out = store(req, res)
	if got := expiresOf(out, c2); got != "120" || held(c2) != 120*time.Second {
		t.Fatalf("granted %s, held %s; want 120 both", got, held(c2))
	}
	if got := expiresOf(out, c1); got != "500" {
		t.Fatalf("the other binding is stated %s, want its 500 s left", got)
	}
	// A 2xx without Contact list: the kept binding is stated anyway.
	req, res = register(t, "201", c2, "d2", 2, 300)
	res.RemoveHeader("Contact")
	res.RemoveHeader("Expires")
	out = store(req, res)
	if got := expiresOf(out, c2); got != "300" || held(c2) != 300*time.Second {
		t.Fatalf("granted %s, held %s; want 300 both", got, held(c2))
	}
	if out.GetHeader("Expires") != nil {
		t.Fatalf("an Expires header was added: %s", out)
	}
}

// TestFullTableLoggedOnChange: a full table is logged once when it starts
// refusing, however many phones it refuses, and once when it has room.
func TestFullTableLoggedOnChange(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	cfg := DefaultConfig()
	cfg.DataDir, cfg.MaxBindings = "", 1
	clk := &fakeClock{t: t0}
	r, err := newWithClock(cfg, "node-a", zap.New(core), nil, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	req, res := register(t, "301", contactOf("301", 1), "c1", 1, 60)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	for n := 2; n <= 5; n++ {
		req, _ := register(t, "30"+strconv.Itoa(n), contactOf("30"+strconv.Itoa(n), 1), "c"+strconv.Itoa(n), 1, 60)
		if err := r.Fits(req); !errors.Is(err, ErrFull) {
			t.Fatalf("phone %d: %v, want ErrFull", n, err)
		}
	}
	if n := logs.FilterMessageSnippet("binding table full").Len(); n != 1 {
		t.Fatalf("%d 'table full' lines for 4 refusals, want 1", n)
	}
	clk.advance(61 * time.Second)
	r.Purge()
	if n := logs.FilterMessageSnippet("room again").Len(); n != 1 {
		t.Fatalf("%d 'room again' lines after the purge, want 1", n)
	}
	req, _ = register(t, "302", contactOf("302", 1), "c2", 1, 60)
	if err := r.Fits(req); err != nil {
		t.Fatalf("after the purge: %v", err)
	}
}
