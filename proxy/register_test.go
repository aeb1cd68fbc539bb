package proxy

import (
	"errors"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/registrar"
)

var _ Registrar = (*registrar.Registrar)(nil)

// pjsipStandIn answers REGISTER as Asterisk's chan_pjsip does: no
// challenge (the tests are about what hapbx keeps, not digest), a 200
// listing every contact the AOR holds with the seconds it has left, a new
// one granted what it asked capped at grant, Expires: 0 or Contact: *
// removing; an Expires header when the REGISTER had one.
type pjsipStandIn struct {
	addr      string
	conn      net.PacketConn
	grant     int
	registers atomic.Int32
	// before runs ahead of each answer, on the stand-in's goroutine.
	before atomic.Pointer[func()]

	mu       sync.Mutex
	contacts map[string]map[string]time.Time // AOR user -> contact -> expiry
}

func startPJSIPStandIn(t *testing.T, grant int) *pjsipStandIn {
	t.Helper()
	addr := net.JoinHostPort(be1IP, strconv.Itoa(testkit.FreePort(t, be1IP)))
	conn, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &pjsipStandIn{addr: addr, conn: conn, grant: grant, contacts: map[string]map[string]time.Time{}}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			m, err := sip.ParseMessage(buf[:n])
			req, ok := m.(*sip.Request)
			if err != nil || !ok || req.Method != sip.REGISTER {
				continue
			}
			s.registers.Add(1)
			if before := s.before.Load(); before != nil {
				(*before)()
			}
			_, _ = conn.WriteTo([]byte(s.answer(req).String()), from)
		}
	}()
	return s
}

func (s *pjsipStandIn) answer(req *sip.Request) *sip.Response {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	res.To().Params.Add("tag", "pj1")
	now := time.Now()
	hdr, hasHdr := -1, false
	if h := req.GetHeader("Expires"); h != nil {
		hdr, _ = strconv.Atoi(h.Value())
		hasHdr = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	aor := req.To().Address.User
	held := s.contacts[aor]
	if held == nil {
		held = map[string]time.Time{}
		s.contacts[aor] = held
	}
	granted := -1
	for _, h := range req.GetHeaders("Contact") {
		c := h.(*sip.ContactHeader)
		if c.Address.Wildcard {
			clear(held)
			break
		}
		secs := hdr
		if v, ok := c.Params.Get("expires"); ok {
			secs, _ = strconv.Atoi(v)
		} else if !hasHdr {
			secs = 3600
		}
		uri := c.Address.String()
		if secs == 0 {
			delete(held, uri)
			continue
		}
		secs = min(secs, s.grant)
		granted = secs
		held[uri] = now.Add(time.Duration(secs) * time.Second)
	}
	for uri, exp := range held {
		c := &sip.ContactHeader{}
		if _, err := sip.ParseAddressValue("<"+uri+">", &c.Address, &c.Params); err == nil {
			c.Params.Add("expires", strconv.Itoa(int(time.Until(exp).Round(time.Second)/time.Second)))
			res.AppendHeader(c)
		}
	}
	if hasHdr && granted >= 0 {
		res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(granted)))
	}
	return res
}

type regProxy struct {
	*testProxy
	reg     *registrar.Registrar
	backend *pjsipStandIn
	metrics *prometheus.Registry
}

// startRegProxy runs a proxy keeping bindings in a real registrar (memory
// only, cfg changed by mod) in front of a chan_pjsip stand-in granting at
// most grant seconds.
func startRegProxy(t *testing.T, grant int, mod func(*registrar.Config)) *regProxy {
	t.Helper()
	testkit.RequireSIPp(t)
	rc := registrar.DefaultConfig()
	rc.DataDir = ""
	if mod != nil {
		mod(&rc)
	}
	mreg := prometheus.NewRegistry()
	reg, err := registrar.New(rc, "node-a", testLogger(t), mreg, registrar.WithLocalHosts(proxyIP))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	be := startPJSIPStandIn(t, grant)
	p := startProxyWith(t, []string{"udp"}, []Backend{{Name: "asterisk1", Address: be.addr, Transport: "udp"}},
		NewStaticRouter([]string{"asterisk1"}, false), nil, WithRegistrar(reg))
	return &regProxy{testProxy: p, reg: reg, backend: be, metrics: mreg}
}

// phone runs one sipp phone for user from port on phoneIP through the
// proxy: calls REGISTERs (contacts user-1..user-calls) asking ask seconds
// with CSeq cseq and Call-IDs reg-<user>-<call>, so that a second run from
// the same port refreshes the first's bindings. It returns the ended sipp.
func (rp *regProxy) phone(t *testing.T, scenarioFile, user string, port, calls, ask, cseq int) *testkit.SIPp {
	t.Helper()
	ph := testkit.StartSIPp(t, phoneIP, port, "-sf", scenario(scenarioFile), "-s", user,
		"-m", strconv.Itoa(calls), "-r", "20", "-cid_str", "reg-"+user+"-%u", "-set", "ask", strconv.Itoa(ask),
		"-set", "cseq", strconv.Itoa(cseq), "-trace_msg", "-timeout", "20s", "-timeout_error", rp.addr)
	if code := ph.Wait(30 * time.Second); code != 0 {
		t.Fatalf("phone %s (%s) exit %d\n%s\n%s", user, scenarioFile, code, ph.Output(), ph.Trace())
	}
	return ph
}

func (rp *regProxy) refused(t *testing.T, reason string) float64 {
	t.Helper()
	mfs, err := rp.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "hapbx_registrar_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("hapbx_registrar_refused_total{reason=%q} not exported", reason)
	return 0
}

func (rp *regProxy) bindings(t *testing.T, user string) []registrar.Binding {
	t.Helper()
	bs, err := rp.reg.Lookup(user)
	if err != nil && !errors.Is(err, registrar.ErrUnknownAOR) && !errors.Is(err, registrar.ErrNoBinding) {
		t.Fatal(err)
	}
	return bs
}

// TestRegisterTableFull: with max_bindings reached, a phone with a new
// binding gets 503 with Retry-After before the backend sees its REGISTER,
// and holds no binding; a refresh and a removal of held bindings pass; the
// room a removal makes is taken.
func TestRegisterTableFull(t *testing.T) {
	rp := startRegProxy(t, 3600, func(c *registrar.Config) { c.MaxBindings = 2 })
	p301, p302, p303 := testkit.FreePort(t, phoneIP), testkit.FreePort(t, phoneIP), testkit.FreePort(t, phoneIP)
	rp.phone(t, "phone_register_once.xml", "301", p301, 1, 300, 1)
	rp.phone(t, "phone_register_once.xml", "302", p302, 1, 300, 1)
	if n, _ := rp.reg.Count(); n != 2 {
		t.Fatalf("%d bindings, want 2", n)
	}
	seen := rp.backend.registers.Load()
	rp.phone(t, "phone_register_refused.xml", "303", p303, 1, 300, 1)
	if got := rp.backend.registers.Load(); got != seen {
		t.Errorf("the backend got the refused REGISTER (%d REGISTERs, want %d)", got, seen)
	}
	if bs := rp.bindings(t, "303"); len(bs) != 0 {
		t.Fatalf("refused phone holds %+v", bs)
	}
	if v := rp.refused(t, "table_full"); v != 1 {
		t.Errorf("refused{table_full} = %v, want 1", v)
	}
	// A refresh of 301 (same Call-ID and Contact, higher CSeq) at the full table.
	rp.phone(t, "phone_register_once.xml", "301", p301, 1, 300, 2)
	// 302 removes its binding at the full table; 303 then fits.
	rp.phone(t, "phone_register_once.xml", "302", p302, 1, 0, 2)
	if bs := rp.bindings(t, "302"); len(bs) != 0 {
		t.Fatalf("302 still holds %+v after its removal", bs)
	}
	rp.phone(t, "phone_register_once.xml", "303", p303, 1, 300, 2)
	if bs := rp.bindings(t, "303"); len(bs) != 1 {
		t.Fatalf("303 holds %+v, want its binding", bs)
	}
	// Contact: * at the full table removes 301's binding.
	star := "REGISTER sip:" + rp.addr + " SIP/2.0\nVia: SIP/2.0/UDP PEER;branch=z9hG4bKstar1;rport\nMax-Forwards: 70\n" +
		"From: <sip:301@" + proxyIP + ">;tag=s1\nTo: <sip:301@" + proxyIP + ">\nCall-ID: reg-301-1\nCSeq: 3 REGISTER\n" +
		"Contact: *\nExpires: 0\nContent-Length: 0\n\n"
	if res := testkit.Exchange(t, phoneIP, rp.addr, star, 5*time.Second); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("Contact: * at a full table: %q, want 200", res)
	}
	if bs := rp.bindings(t, "301"); len(bs) != 0 {
		t.Fatalf("301 still holds %+v after Contact: *", bs)
	}
}

// TestRegisterTableFilledMeanwhile: the table fills (the twin's bindings
// replicated) while the backend handles a phone's new REGISTER: its 200 is
// not relayed; the phone gets 503 with Retry-After and no binding.
func TestRegisterTableFilledMeanwhile(t *testing.T) {
	rp := startRegProxy(t, 3600, func(c *registrar.Config) { c.MaxBindings = 1 })
	now := time.Now()
	twin := registrar.Record{
		Binding: registrar.Binding{AOR: "sip:401@" + proxyIP, Contact: "sip:401@192.0.2.40:5060",
			Expires: now.Add(time.Hour), Updated: now, Q: 1},
		Version: registrar.Version{Time: now.UnixNano(), Node: "node-b"},
	}
	fill := func() {
		if _, err := rp.reg.Merge([]registrar.Record{twin}); err != nil {
			t.Error(err)
		}
	}
	rp.backend.before.Store(&fill)
	rp.phone(t, "phone_register_refused.xml", "301", testkit.FreePort(t, phoneIP), 1, 300, 1)
	if got := rp.backend.registers.Load(); got != 1 {
		t.Errorf("backend got %d REGISTERs, want 1", got)
	}
	if bs := rp.bindings(t, "301"); len(bs) != 0 {
		t.Fatalf("refused phone holds %+v", bs)
	}
	if v := rp.refused(t, "table_full"); v != 1 {
		t.Errorf("refused{table_full} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(rp.m.responses.WithLabelValues("REGISTER", "200")); v != 0 {
		t.Errorf("%v REGISTER 200s relayed, want 0", v)
	}
}

// TestRegisterAORLimit: an AOR holds at most max_bindings_per_aor (10 by
// default) contacts: the 11th gets 503 with Retry-After and the ten stay.
func TestRegisterAORLimit(t *testing.T) {
	rp := startRegProxy(t, 3600, nil)
	rp.phone(t, "phone_register_once.xml", "201", testkit.FreePort(t, phoneIP), 10, 300, 1)
	if bs := rp.bindings(t, "201"); len(bs) != 10 {
		t.Fatalf("201 holds %d bindings, want 10", len(bs))
	}
	seen := rp.backend.registers.Load()
	rp.phone(t, "phone_register_refused.xml", "201", testkit.FreePort(t, phoneIP), 1, 300, 1)
	if bs := rp.bindings(t, "201"); len(bs) != 10 {
		t.Fatalf("201 holds %d bindings after the refusal, want 10", len(bs))
	}
	if got := rp.backend.registers.Load(); got != seen {
		t.Errorf("the backend got the refused REGISTER (%d REGISTERs, want %d)", got, seen)
	}
	if v := rp.refused(t, "aor_limit"); v != 1 {
		t.Errorf("refused{aor_limit} = %v, want 1", v)
	}
}

var (
	reContactExpires = regexp.MustCompile(`(?m)^Contact: <([^>]*)>;expires=(\d+)`)
	reExpires        = regexp.MustCompile(`(?m)^Expires: (\d+)`)
)

// received200 is the last 200 a sipp phone's trace shows it received.
func received200(t *testing.T, trace string) string {
	t.Helper()
	i := strings.LastIndex(trace, "SIP/2.0 200 OK")
	if i < 0 {
		t.Fatalf("no 200 in the phone's trace:\n%s", trace)
	}
	return trace[i:]
}

// TestRegisterGrantedExpiry: the 200 a phone gets states, in its Contact
// and Expires header, the lifetime hapbx keeps the binding: the backend's
// grant capped at max_expires, exactly.
func TestRegisterGrantedExpiry(t *testing.T) {
	rp := startRegProxy(t, 1800, func(c *registrar.Config) { c.MaxExpires, c.DefaultExpires = 600*time.Second, 600*time.Second })
	for _, c := range []struct {
		user string
		ask  int
		want int
	}{
		{"301", 3600, 600}, // the backend grants 1800, hapbx keeps 600
		{"302", 120, 120},  // the backend grants what was asked
	} {
		ph := rp.phone(t, "phone_register_once.xml", c.user, testkit.FreePort(t, phoneIP), 1, c.ask, 1)
		res := received200(t, ph.Trace())
		m := reContactExpires.FindStringSubmatch(res)
		if m == nil {
			t.Fatalf("%s: no Contact with expires in the 200:\n%s", c.user, res)
		}
		if m[2] != strconv.Itoa(c.want) {
			t.Errorf("%s: 200 Contact expires=%s, want %d", c.user, m[2], c.want)
		}
		if e := reExpires.FindStringSubmatch(res); e == nil || e[1] != strconv.Itoa(c.want) {
			t.Errorf("%s: 200 Expires header %v, want %d", c.user, e, c.want)
		}
		bs := rp.bindings(t, c.user)
		if len(bs) != 1 {
			t.Fatalf("%s holds %+v", c.user, bs)
		}
		if got := bs[0].Expires.Sub(bs[0].Updated); got != time.Duration(c.want)*time.Second {
			t.Errorf("%s: binding kept %s, the phone was told %ss", c.user, got, m[2])
		}
	}
}

// TestRegisterStormGets200OnlyWhenStored: many phones register at once past
// max_bindings; REGISTERs race for the last places between hapbx's check
// at the door and the backend's 200. Exactly the phones whose binding was
// stored get 200; every other one gets 503.
func TestRegisterStormGets200OnlyWhenStored(t *testing.T) {
	const phones, room = 300, 100
	rp := startRegProxy(t, 3600, func(c *registrar.Config) { c.MaxBindings = room })
	ph := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("phone_register_storm.xml"),
		"-s", "5", "-m", strconv.Itoa(phones), "-r", "300", "-l", "100", "-timeout", "30s", "-timeout_error", rp.addr)
	if code := ph.Wait(40 * time.Second); code != 0 {
		t.Fatalf("phones exit %d\n%s", code, ph.Output())
	}
	stored, _ := rp.reg.Count()
	t.Logf("the backend got %d REGISTERs", rp.backend.registers.Load())
	ok := testutil.ToFloat64(rp.m.responses.WithLabelValues("REGISTER", "200"))
	refused := testutil.ToFloat64(rp.m.responses.WithLabelValues("REGISTER", "503"))
	if stored != room || int(ok) != stored || int(ok+refused) != phones {
		t.Fatalf("%d bindings stored, %v phones got 200 and %v got 503; want %d, %d and %d",
			stored, ok, refused, room, room, phones-room)
	}
}
