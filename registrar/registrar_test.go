package registrar

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

func TestSaveLookupExpiryPurge(t *testing.T) {
	r, clk, reg := newTest(t, "", nil)
	if _, err := r.Lookup("sip:201@pbx.example.com"); !errors.Is(err, ErrUnknownAOR) {
		t.Fatalf("empty table: err %v, want ErrUnknownAOR", err)
	}
	req, res := register(t, "201", "sip:201@192.168.1.23:5060", "c1", 1, 120)
	bs, err := r.Save(req, res, src("203.0.113.7:40000"), "ast1")
	if err != nil || len(bs) != 1 {
		t.Fatalf("Save: %v %+v", err, bs)
	}
	for _, spelling := range []string{"sip:201@pbx.example.com", "sip:201@10.0.0.1:5060;transport=udp", "201"} {
		got, err := r.Lookup(spelling)
		if err != nil || len(got) != 1 || got[0].Contact != "sip:201@192.168.1.23:5060" ||
			got[0].Source.Addr.String() != "203.0.113.7:40000" || got[0].Backend != "ast1" {
			t.Fatalf("Lookup(%q) = %+v, %v", spelling, got, err)
		}
	}
	if n, a := r.Count(); n != 1 || a != 1 {
		t.Fatalf("Count = %d, %d", n, a)
	}
	if v := metricValue(t, reg, "hapbx_registrar_changes_total", "op", "add"); v != 1 {
		t.Fatalf("changes{add} = %v", v)
	}

	// A refresh through the backend renews, counted as refresh.
	clk.advance(60 * time.Second)
	req, res = register(t, "201", "sip:201@192.168.1.23:5060", "c1", 2, 120)
	if _, err := r.Save(req, res, src("203.0.113.7:40000"), "ast1"); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, reg, "hapbx_registrar_changes_total", "op", "refresh"); v != 1 {
		t.Fatalf("changes{refresh} = %v", v)
	}

	// Lazily ignored once expired, before any purge: known AOR -> 480.
	clk.advance(121 * time.Second)
	if _, err := r.Lookup("sip:201@pbx.example.com"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("expired: err %v, want ErrNoBinding", err)
	}
	if n := r.Purge(); n != 1 {
		t.Fatalf("Purge = %d, want 1", n)
	}
	if _, err := r.Lookup("sip:201@pbx.example.com"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("purged: err %v, want ErrNoBinding (still known)", err)
	}
	if v := metricValue(t, reg, "hapbx_registrar_purged_total"); v != 1 {
		t.Fatalf("purged_total = %v", v)
	}
	if v := metricValue(t, reg, "hapbx_registrar_bindings"); v != 0 {
		t.Fatalf("bindings gauge = %v", v)
	}
	// Forgotten a day later: 404 again.
	clk.advance(forgetAfter)
	r.Purge()
	if _, err := r.Lookup("sip:201@pbx.example.com"); !errors.Is(err, ErrUnknownAOR) {
		t.Fatalf("forgotten: err %v, want ErrUnknownAOR", err)
	}
}

func TestSaveRemovals(t *testing.T) {
	r, _, reg := newTest(t, "", nil)
	// Two devices on one AOR through two backends.
	req, res := register(t, "201", "sip:201@192.168.1.23:5060", "dev1", 1, 600)
	if _, err := r.Save(req, res, src("203.0.113.7:40000"), "ast1"); err != nil {
		t.Fatal(err)
	}
	req, res = register(t, "201", "sip:201@192.168.1.24:5060", "dev2", 1, 600)
	if _, err := r.Save(req, res, src("203.0.113.8:40000"), "ast2"); err != nil {
		t.Fatal(err)
	}
	bs, _ := r.Lookup("201")
	if len(bs) != 2 {
		t.Fatalf("want 2 bindings, got %+v", bs)
	}
	// Expires: 0 on dev2 removes dev2 only.
	req, res = register(t, "201", "sip:201@192.168.1.24:5060", "dev2", 2, 0)
	res.RemoveHeader("Contact") // a 2xx to a removal lists what is left: nothing here
	bs, err := r.Save(req, res, src("203.0.113.8:40000"), "ast2")
	if err != nil || len(bs) != 1 || bs[0].Contact != "sip:201@192.168.1.23:5060" {
		t.Fatalf("after Expires: 0: %+v %v", bs, err)
	}
	// Contact: * removes all.
	if _, err := r.Save(reqOf(t, starReq), resOf(t, starRes), src("203.0.113.7:40000"), "ast1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup("201"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("after *: %v", err)
	}
	if v := metricValue(t, reg, "hapbx_registrar_changes_total", "op", "remove"); v != 2 {
		t.Fatalf("changes{remove} = %v, want 2", v)
	}
	if s := r.Snapshot(); s.Bindings != 0 || s.Tombstones != 2 || s.Node != "node-a" {
		t.Fatalf("snapshot %+v", s)
	}
}

func TestSaveBackendListIsAuthoritative(t *testing.T) {
	r, clk, _ := newTest(t, "", nil)
	req, res := register(t, "205", "sip:205@10.1.1.1:5060", "old", 1, 600)
	if _, err := r.Save(req, res, src("198.51.100.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	// A minute later the phone rebooted with a new port; ast1 replaced the
	// old contact (max_contacts reached, remove_existing) and lists only
	// the new one.
	clk.advance(time.Minute)
	req, res = register(t, "205", "sip:205@10.1.1.1:5070", "new", 1, 600)
	bs, err := r.Save(req, res, src("198.51.100.1:5070"), "ast1")
	if err != nil || len(bs) != 1 || bs[0].Contact != "sip:205@10.1.1.1:5070" {
		t.Fatalf("got %+v %v, want only the new contact", bs, err)
	}
	// A binding held via another backend is not ast1's to drop.
	req, res = register(t, "205", "sip:205@10.1.1.2:5060", "other", 1, 600)
	if _, err := r.Save(req, res, src("198.51.100.2:5060"), "ast2"); err != nil {
		t.Fatal(err)
	}
	req, res = register(t, "205", "sip:205@10.1.1.1:5070", "new", 2, 600)
	if bs, _ = r.Save(req, res, src("198.51.100.1:5070"), "ast1"); len(bs) != 2 {
		t.Fatalf("ast2's binding dropped by ast1's list: %+v", bs)
	}
}

// Several devices of one extension on one backend (deploy/asterisk's
// max_contacts=5): Asterisk's 200 lists every contact of the AOR, so all
// stay bound for parallel ringing; a contact Asterisk evicted (the one
// expiring soonest once max_contacts is reached) is missing from the next 200 and goes here
// too: the backend is the authority.
func TestSaveSeveralDevicesOneBackend(t *testing.T) {
	r, clk, _ := newTest(t, "", nil)
	dev := func(i int) string { return "sip:206@10.2.0." + itoa(i) + ":5060" }
	save := func(i int, listed ...int) []Binding {
		t.Helper()
		req, _ := register(t, "206", dev(i), "dev"+itoa(i), 1, 600)
		var cs []string
		for _, l := range listed {
			cs = append(cs, "<"+dev(l)+">;expires=600")
		}
		res := resOf(t, `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-dev`+itoa(i)+`;rport=5060
From: <sip:206@pbx.example.com>;tag=f1
To: <sip:206@pbx.example.com>;tag=as1
Call-ID: dev`+itoa(i)+`
CSeq: 1 REGISTER
Contact: `+strings.Join(cs, ", ")+`
Content-Length: 0

`)
		bs, err := r.Save(req, res, src("203.0.113.9:"+itoa(40000+i)), "ast1")
		if err != nil {
			t.Fatal(err)
		}
		return bs
	}
	contactsOf := func(bs []Binding) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Contact)
		}
		slices.Sort(out)
		return out
	}
	save(1, 1)
	if got := contactsOf(save(2, 1, 2)); !slices.Equal(got, []string{dev(1), dev(2)}) {
		t.Fatalf("two devices: %q", got)
	}
	// A minute later, max_contacts reached (say 2): Asterisk removed dev1,
	// the one expiring soonest.
	clk.advance(time.Minute)
	if got := contactsOf(save(3, 2, 3)); !slices.Equal(got, []string{dev(2), dev(3)}) {
		t.Fatalf("after the backend evicted dev1: %q", got)
	}
	bs, err := r.Lookup("sip:206@pbx.example.com")
	if err != nil || !slices.Equal(contactsOf(bs), []string{dev(2), dev(3)}) {
		t.Fatalf("Lookup = %+v, %v", bs, err)
	}
}

func TestMaxBindings(t *testing.T) {
	r, _, _ := newTest(t, "", func(c *Config) { c.MaxBindings = 2 })
	for i, u := range []string{"301", "302"} {
		req, res := register(t, u, "sip:"+u+"@10.0.0.1:5060", "c"+u, 1, 600)
		if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
			t.Fatalf("binding %d: %v", i, err)
		}
	}
	req, res := register(t, "303", "sip:303@10.0.0.1:5060", "c303", 1, 600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); !errors.Is(err, ErrFull) {
		t.Fatalf("third binding: err %v, want ErrFull", err)
	}
	// Refreshing a held binding is still allowed when full.
	req, res = register(t, "301", "sip:301@10.0.0.1:5060", "c301", 2, 600)
	if _, err := r.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatalf("refresh when full: %v", err)
	}
}

// TestSaveListsHandledOutOfOrder: two devices of one AOR register at once;
// the backend answers dev1 listing {dev1}, then dev2 listing {dev1, dev2},
// and hapbx handles dev2's 2xx first. dev1's older list must not drop
// dev2, which was just told it is registered.
func TestSaveListsHandledOutOfOrder(t *testing.T) {
	r, clk, _ := newTest(t, "", nil)
	dev1, dev2 := "sip:207@10.3.0.1:5060", "sip:207@10.3.0.2:5060"
	req2, res2 := register(t, "207", dev2, "dev2", 1, 600)
	res2.AppendHeader(contactHeader(dev1, 600))
	if _, err := r.Save(req2, res2, src("203.0.113.9:40002"), "ast1"); err != nil {
		t.Fatal(err)
	}
	req1, res1 := register(t, "207", dev1, "dev1", 1, 600)
	if bs, err := r.Save(req1, res1, src("203.0.113.9:40001"), "ast1"); err != nil || len(bs) != 2 {
		t.Fatalf("after dev1's older list: %+v %v, want both devices", bs, err)
	}
	// Past a transaction's life, a list without dev2 means ast1 dropped it.
	clk.advance(listLag)
	req1, res1 = register(t, "207", dev1, "dev1", 2, 600)
	if bs, err := r.Save(req1, res1, src("203.0.113.9:40001"), "ast1"); err != nil || len(bs) != 1 || bs[0].Contact != dev1 {
		t.Fatalf("after a later list without dev2: %+v %v, want dev1 only", bs, err)
	}
}

func TestLookupOrderAndDomains(t *testing.T) {
	r, clk, _ := newTest(t, "", func(c *Config) { c.Domains = []string{"pbx.example.com"} })
	req := reqOf(t, multiReq)
	res := resOf(t, multiRes)
	if _, err := r.Save(req, res, src("192.0.2.30:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Second)
	bs, err := r.Lookup("sip:204@PBX.EXAMPLE.COM")
	if err != nil || len(bs) != 2 || bs[0].Q != 1 || bs[1].Q != 0.5 {
		t.Fatalf("Lookup = %+v, %v; want q 1 then 0.5", bs, err)
	}
	// Another domain is another AOR.
	if _, err := r.Lookup("sip:204@elsewhere.org"); !errors.Is(err, ErrUnknownAOR) {
		t.Fatalf("foreign domain: %v", err)
	}
}

// An INVITE from Asterisk to sip:201@<proxy address> must reach the phone
// registered as sip:201@pbx.example.com when domains is set.
func TestLookupLocalHosts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = ""
	cfg.Domains = []string{"pbx.example.com"}
	for _, tc := range []struct {
		name string
		opts []Option
		want error
	}{
		{"without local hosts", nil, ErrUnknownAOR},
		{"with local hosts", []Option{WithLocalHosts("proxy1.example.net"), WithLocalHosts("192.0.2.10", "2001:db8::10")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := newWithClock(cfg, "node-a", nil, nil, func() time.Time { return t0 }, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close() })
			req, res := register(t, "201", "sip:201@203.0.113.7:5062", "c1", 1, 3600)
			if _, err := r.Save(req, res, src("203.0.113.7:5062"), "ast1"); err != nil {
				t.Fatal(err)
			}
			for _, uri := range []string{"sip:201@192.0.2.10", "sip:201@192.0.2.10:5060;transport=udp", "sip:201@[2001:db8::10]:5060", "sip:201@proxy1.example.net"} {
				bs, err := r.Lookup(uri)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Lookup(%q) = %v, %v; want error %v", uri, bs, err, tc.want)
				}
				if tc.want == nil && (len(bs) != 1 || bs[0].Contact != "sip:201@203.0.113.7:5062") {
					t.Fatalf("Lookup(%q) = %+v", uri, bs)
				}
			}
			// Still not every domain.
			if _, err := r.Lookup("sip:201@198.51.100.9"); !errors.Is(err, ErrUnknownAOR) {
				t.Fatalf("foreign address: %v", err)
			}
		})
	}
}

func TestTooBrief(t *testing.T) {
	r, _, _ := newTest(t, "", nil)
	req, _ := register(t, "201", "sip:201@10.0.0.1", "c", 1, 30)
	if min, short := r.TooBrief(req); !short || min != time.Minute {
		t.Fatalf("30s: %v %v", min, short)
	}
	req, _ = register(t, "201", "sip:201@10.0.0.1", "c", 1, 0)
	if _, short := r.TooBrief(req); short {
		t.Fatal("Expires: 0 is a removal, not too brief")
	}
	req, _ = register(t, "201", "sip:201@10.0.0.1", "c", 1, 3600)
	if _, short := r.TooBrief(req); short {
		t.Fatal("3600s is not too brief")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c := Config{MinExpires: 0, MaxExpires: time.Second, DefaultExpires: time.Hour, Domains: []string{"ok.org", "bad host"}}
	err := c.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"min_expires: ", "default_expires: ", "purge_interval: ", "max_bindings: ", "max_bindings_per_aor: ", "domains[1]: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "domains[0]") {
		t.Errorf("good domain reported: %v", err)
	}
}

func TestMetricsRegistered(t *testing.T) {
	_, _, reg := newTest(t, "", nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	// 2 gauges + 5 change ops + store errors + purged + 4 refusal reasons
	if n != 13 {
		t.Fatalf("%d series, want 13", n)
	}
}

func TestLookupByContactUser(t *testing.T) {
	r, clk, _ := newTest(t, "", func(c *Config) { c.Domains = []string{"pbx.example.com"} })
	bs, err := r.Save(reqOf(t, baresipReq), resOf(t, baresipResNoContact),
		Source{Addr: src("10.0.0.20:45123").Addr, Transport: "tcp", ConnID: "conn-7"}, "ast1")
	if err != nil || len(bs) != 1 {
		t.Fatal(bs, err)
	}
	// chan_sip dials the stored contact itself; pjsip with rewrite_contact
	// keeps the user and puts the proxy's address in.
	for _, uri := range []string{
		"sip:203-0x55d8c1e0@10.0.0.20:45123;transport=tcp",
		"sip:203-0x55d8c1e0@192.0.2.10:5060;transport=tcp",
	} {
		got, err := r.Lookup(uri)
		if err != nil || len(got) != 1 || got[0].AOR != "sip:203@pbx.example.com" || got[0].Source.ConnID != "conn-7" {
			t.Fatalf("Lookup(%q) = %+v, %v", uri, got, err)
		}
	}
	if _, err := r.Lookup("sip:999-0x1@192.0.2.10"); !errors.Is(err, ErrUnknownAOR) {
		t.Fatalf("unknown contact user: %v", err)
	}
	// Expired, then purged: the index entry goes with the binding.
	clk.advance(301 * time.Second)
	if _, err := r.Lookup("sip:203-0x55d8c1e0@192.0.2.10"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("expired contact user: %v", err)
	}
	r.Purge()
	if n := len(r.tab.byContactUser); n != 0 {
		t.Fatalf("contact-user index keeps %d entries after purge", n)
	}
}

func TestConfigYAML(t *testing.T) {
	text := `
data_dir: /srv/hapbx
min_expires: 30s
max_expires: 2h
default_expires: 15m
purge_interval: 500ms
max_bindings: 5000
max_bindings_per_aor: 4
domains: [pbx.example.com, 192.0.2.10]
`
	cfg := DefaultConfig()
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatal(err)
	}
	want := Config{DataDir: "/srv/hapbx", MinExpires: 30 * time.Second, MaxExpires: 2 * time.Hour,
		DefaultExpires: 15 * time.Minute, PurgeInterval: 500 * time.Millisecond, MaxBindings: 5000, MaxBindingsPerAOR: 4,
		Domains: []string{"pbx.example.com", "192.0.2.10"}}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("decoded %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// Keys left out keep their defaults.
	cfg = DefaultConfig()
	if err := yaml.Unmarshal([]byte("max_bindings: 7\n"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxExpires != time.Hour || cfg.MaxBindings != 7 || cfg.MaxBindingsPerAOR != 10 || cfg.DataDir != "/var/lib/hapbx" {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}
