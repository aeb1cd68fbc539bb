package trunk

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/hapbx/hapbx/internal/testkit"
)

// clock is a settable time for the TTLs.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newResolver(t *testing.T, c *clock, servers ...string) *Resolver {
	t.Helper()
	opts := []ResolverOption{WithServers(servers...)}
	if c != nil {
		opts = append(opts, WithClock(c.Now))
	}
	r, err := NewResolver(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func resolve(t *testing.T, r *Resolver, host, transport string) []string {
	t.Helper()
	h, err := ParseHost(host)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := r.Resolve(context.Background(), h, transport)
	if err != nil {
		t.Fatalf("resolve %s: %v", host, err)
	}
	out := make([]string, len(ts))
	for i, x := range ts {
		out[i] = x.String()
	}
	return out
}

// An IP address is used as it is: no DNS server is asked (there is none).
func TestResolveLiteral(t *testing.T) {
	r := newResolver(t, nil, "127.0.0.1:1")
	for host, want := range map[string]string{
		"192.0.2.1":          "udp:192.0.2.1:5060",
		"192.0.2.1:5070":     "udp:192.0.2.1:5070",
		"[2001:db8::1]:5080": "udp:[2001:db8::1]:5080",
		"2001:db8::1":        "udp:[2001:db8::1]:5060",
	} {
		if got := resolve(t, r, host, "udp"); !slices.Equal(got, []string{want}) {
			t.Errorf("%s: %v, want %s", host, got, want)
		}
	}
	if got := resolve(t, r, "192.0.2.1", "tls"); got[0] != "tls:192.0.2.1:5061" {
		t.Errorf("tls default port: %v", got)
	}
}

// NAPTR names the SRV of the configured transport; SRV priorities order
// the targets; their A and AAAA records give the addresses.
func TestResolveNAPTRSRV(t *testing.T) {
	d := startDNS(t)
	d.Set(t,
		`example.test. 60 IN NAPTR 20 10 "s" "SIP+D2U" "" _sip._udp.other.test.`,
		`example.test. 60 IN NAPTR 10 10 "s" "SIP+D2U" "" _sip._udp.example.test.`,
		`example.test. 60 IN NAPTR 5 10 "s" "SIP+D2T" "" _sip._tcp.example.test.`,
		`_sip._udp.example.test. 60 IN SRV 20 0 5080 b.example.test.`,
		`_sip._udp.example.test. 60 IN SRV 10 100 5070 a.example.test.`,
		`_sip._tcp.example.test. 60 IN SRV 10 100 5090 a.example.test.`,
		`a.example.test. 60 IN A 127.0.0.2`,
		`a.example.test. 60 IN AAAA ::2`,
		`b.example.test. 60 IN A 127.0.0.3`,
	)
	r := newResolver(t, nil, d.Addr)
	want := []string{"udp:127.0.0.2:5070", "udp:[::2]:5070", "udp:127.0.0.3:5080"}
	if got := resolve(t, r, "example.test", "udp"); !slices.Equal(got, want) {
		t.Errorf("udp: %v, want %v", got, want)
	}
	if got := resolve(t, r, "example.test", "tcp"); !slices.Equal(got, []string{"tcp:127.0.0.2:5090", "tcp:[::2]:5090"}) {
		t.Errorf("tcp: %v", got)
	}
	if d.Queries("_sip._udp.other.test", dns.TypeSRV) != 0 {
		t.Error("the NAPTR of a higher order was followed")
	}
}

// Without NAPTR the transport's SRV name is asked; without SRV the
// domain's addresses on the default port; with a port, only A/AAAA.
func TestResolveFallbacks(t *testing.T) {
	d := startDNS(t)
	d.Set(t,
		`_sip._udp.srv.test. 60 IN SRV 10 10 5070 a.srv.test.`,
		`a.srv.test. 60 IN A 127.0.0.4`,
		`plain.test. 60 IN A 127.0.0.5`,
	)
	r := newResolver(t, nil, d.Addr)
	if got := resolve(t, r, "srv.test", "udp"); !slices.Equal(got, []string{"udp:127.0.0.4:5070"}) {
		t.Errorf("SRV without NAPTR: %v", got)
	}
	if got := resolve(t, r, "plain.test", "udp"); !slices.Equal(got, []string{"udp:127.0.0.5:5060"}) {
		t.Errorf("A without SRV: %v", got)
	}
	if got := resolve(t, r, "plain.test:5099", "udp"); !slices.Equal(got, []string{"udp:127.0.0.5:5099"}) {
		t.Errorf("with a port: %v", got)
	}
	if n := d.Queries("plain.test", dns.TypeNAPTR); n != 1 {
		t.Errorf("NAPTR asked %d times, want once (not for the host with a port, cached for the other)", n)
	}
	h, _ := ParseHost("nothing.test")
	if _, err := r.Resolve(context.Background(), h, "udp"); !errors.Is(err, ErrNoTarget) {
		t.Errorf("a name without records: %v, want ErrNoTarget", err)
	}
}

// Answers are kept for their TTL, then asked again: a changed answer is
// seen once the old one's TTL ran out, not before.
func TestResolveTTL(t *testing.T) {
	d := startDNS(t)
	d.Set(t,
		`_sip._udp.ttl.test. 300 IN SRV 10 10 5070 a.ttl.test.`,
		`a.ttl.test. 30 IN A 127.0.0.6`,
	)
	c := &clock{t: time.Unix(1e9, 0)}
	r := newResolver(t, c, d.Addr)
	for range 3 {
		if got := resolve(t, r, "ttl.test", "udp"); !slices.Equal(got, []string{"udp:127.0.0.6:5070"}) {
			t.Fatalf("first answer: %v", got)
		}
	}
	if n := d.Queries("a.ttl.test", dns.TypeA); n != 1 {
		t.Fatalf("A asked %d times within its TTL, want 1", n)
	}
	d.Set(t, `a.ttl.test. 30 IN A 127.0.0.7`)
	c.Add(29 * time.Second)
	if got := resolve(t, r, "ttl.test", "udp"); got[0] != "udp:127.0.0.6:5070" {
		t.Errorf("within the TTL: %v, want the cached answer", got)
	}
	c.Add(2 * time.Second)
	if got := resolve(t, r, "ttl.test", "udp"); !slices.Equal(got, []string{"udp:127.0.0.7:5070"}) {
		t.Errorf("after the TTL: %v, want the new answer", got)
	}
	if n := d.Queries("_sip._udp.ttl.test", dns.TypeSRV); n != 1 {
		t.Errorf("SRV (TTL 300) asked %d times, want 1", n)
	}
}

// A DNS server that does not answer is skipped for the next one.
func TestResolveServerFailover(t *testing.T) {
	d := startDNS(t)
	d.Set(t, `x.test. 60 IN A 127.0.0.8`)
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(testkit.FreePort(t, "127.0.0.1")))
	r := newResolver(t, nil, dead, d.Addr)
	if got := resolve(t, r, "x.test:5060", "udp"); !slices.Equal(got, []string{"udp:127.0.0.8:5060"}) {
		t.Errorf("%v", got)
	}
}

// RFC 2782: within a priority each record comes first with a chance
// proportional to its weight; weight 0 gets the smallest chance. Every
// draw of the random number in [0, sum] is enumerated.
func TestWeightedSelection(t *testing.T) {
	srv := func(prio, weight uint16, target string) dns.RR {
		return &dns.SRV{Hdr: dns.RR_Header{Rrtype: dns.TypeSRV}, Priority: prio, Weight: weight, Port: 5060, Target: target}
	}
	rrs := []dns.RR{srv(10, 90, "c."), srv(10, 0, "a."), srv(10, 10, "b."), srv(5, 1, "first."), srv(20, 5, "last."), srv(10, 5, ".")}
	firsts := map[string]int{}
	for n := range 101 {
		out := orderSRV(rrs, func(m int) int { return min(n, m-1) })
		if len(out) != 5 || out[0].Target != "first." || out[4].Target != "last." {
			t.Fatalf("priorities not kept or '.' not dropped: %v", out)
		}
		firsts[out[1].Target]++
		got := []string{out[1].Target, out[2].Target, out[3].Target}
		slices.Sort(got)
		if !slices.Equal(got, []string{"a.", "b.", "c."}) {
			t.Fatalf("draw %d: %v", n, got)
		}
	}
	if firsts["a."] != 1 || firsts["b."] != 10 || firsts["c."] != 90 {
		t.Errorf("first of priority 10 over all draws: %v, want a. 1, b. 10, c. 90", firsts)
	}
}
