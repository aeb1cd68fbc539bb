package trunk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Target is one provider server a request may go to.
type Target struct {
	Addr      netip.AddrPort
	Transport string // udp, tcp or tls
}

func (t Target) String() string { return t.Transport + ":" + t.Addr.String() }

// Resolver finds a provider's servers as RFC 3263 §4 says, for a
// transport chosen in the configuration: NAPTR records (the services of
// that transport, by order and preference) name SRV records; without them
// the SRV name of the transport is asked directly; SRV targets are ordered
// by priority and, within one priority, by RFC 2782's weighted random
// selection; each target's A and AAAA records give the addresses. Without
// SRV records the domain's own A/AAAA records are used on the default port.
// A host with a port is looked up in A/AAAA only; an IP address not at all.
//
// Answers are kept until their TTL runs out, so the servers are re-resolved
// on the TTL and not on every request. The cache holds the names of the
// configured trunks and what their records name, nothing a request names.
type Resolver struct {
	servers []string // DNS servers, ip:port, tried in order
	client  *dns.Client
	now     func() time.Time
	rand    func(n int) int // [0, n); weighted SRV selection

	mu    sync.Mutex
	cache map[question]answer
}

type question struct {
	name  string
	qtype uint16
}

type answer struct {
	rrs     []dns.RR
	expires time.Time
}

// minTTL bounds how often one name is asked again, whatever its TTL (a
// TTL of 0 would mean asking on every request).
const minTTL = time.Second

// ResolverOption changes a Resolver from its defaults.
type ResolverOption func(*Resolver)

// WithServers sets the DNS servers (ip:port) instead of /etc/resolv.conf's.
func WithServers(addrs ...string) ResolverOption {
	return func(r *Resolver) { r.servers = addrs }
}

// WithClock sets the clock the TTLs are measured with (tests).
func WithClock(now func() time.Time) ResolverOption {
	return func(r *Resolver) { r.now = now }
}

// NewResolver returns a Resolver asking the servers of /etc/resolv.conf
// (127.0.0.1:53 without any), unless WithServers names others.
func NewResolver(opts ...ResolverOption) (*Resolver, error) {
	r := &Resolver{
		client: &dns.Client{Timeout: 2 * time.Second},
		now:    time.Now,
		rand:   rand.IntN,
		cache:  map[question]answer{},
	}
	for _, o := range opts {
		o(r)
	}
	if len(r.servers) == 0 {
		// As the C library does: without /etc/resolv.conf or a nameserver
		// line in it, the local server. Trunks given by address never ask.
		r.servers = []string{"127.0.0.1:53"}
		if cc, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil && len(cc.Servers) > 0 {
			r.servers = r.servers[:0]
			for _, s := range cc.Servers {
				r.servers = append(r.servers, net.JoinHostPort(s, cc.Port))
			}
		}
	}
	return r, nil
}

// ErrNoTarget is the error of a host whose name leads to no address.
var ErrNoTarget = errors.New("no address")

// Resolve returns the servers of h for transport, in the order to try
// them. The order within one SRV priority is drawn anew on each call.
func (r *Resolver) Resolve(ctx context.Context, h Host, transport string) ([]Target, error) {
	if h.Literal() {
		return []Target{{Addr: netip.AddrPortFrom(h.Addr, portOr(h.Port, transport)), Transport: transport}}, nil
	}
	if h.Port != 0 {
		return r.addresses(ctx, h.Name, h.Port, transport)
	}
	srvName, err := r.naptr(ctx, h.Name, transport)
	if err != nil {
		return nil, err
	}
	if srvName == "" {
		srvName = srvPrefix(transport) + h.Name
	}
	srvs, err := r.lookup(ctx, srvName, dns.TypeSRV)
	if err != nil {
		return nil, err
	}
	if len(srvs) == 0 {
		return r.addresses(ctx, h.Name, portOr(0, transport), transport)
	}
	var out []Target
	var lastErr error
	for _, s := range orderSRV(srvs, r.rand) {
		ts, err := r.addresses(ctx, s.Target, s.Port, transport)
		if err != nil {
			lastErr = err
			continue
		}
		out = append(out, ts...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("SRV %s: %w", srvName, cmp.Or(lastErr, ErrNoTarget))
	}
	return out, nil
}

// naptr returns the SRV name the NAPTR records of domain give for
// transport, or "" when they give none.
func (r *Resolver) naptr(ctx context.Context, domain, transport string) (string, error) {
	rrs, err := r.lookup(ctx, domain, dns.TypeNAPTR)
	if err != nil {
		return "", err
	}
	var best *dns.NAPTR
	for _, rr := range rrs {
		n, ok := rr.(*dns.NAPTR)
		if !ok || !strings.EqualFold(n.Flags, "s") || !strings.EqualFold(n.Service, naptrService(transport)) {
			continue
		}
		if best == nil || n.Order < best.Order || n.Order == best.Order && n.Preference < best.Preference {
			best = n
		}
	}
	if best == nil {
		return "", nil
	}
	return best.Replacement, nil
}

// addresses returns the A and AAAA addresses of name on port.
func (r *Resolver) addresses(ctx context.Context, name string, port uint16, transport string) ([]Target, error) {
	var out []Target
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.lookup(ctx, name, qt)
		if err != nil {
			return nil, err
		}
		for _, rr := range rrs {
			var ip net.IP
			switch a := rr.(type) {
			case *dns.A:
				ip = a.A
			case *dns.AAAA:
				ip = a.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				out = append(out, Target{Addr: netip.AddrPortFrom(a.Unmap(), port), Transport: transport})
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w", name, ErrNoTarget)
	}
	return out, nil
}

// lookup returns the records of type qtype answering for name, from the
// cache while their TTL runs. A name that does not exist has no records
// (kept for minTTL); a server that does not answer is an error.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	q := question{dns.Fqdn(strings.ToLower(name)), qtype}
	now := r.now()
	r.mu.Lock()
	a, ok := r.cache[q]
	r.mu.Unlock()
	if ok && now.Before(a.expires) {
		return a.rrs, nil
	}
	m := new(dns.Msg)
	m.SetQuestion(q.name, qtype)
	m.RecursionDesired = true
	var lastErr error
	for _, s := range r.servers {
		in, _, err := r.client.ExchangeContext(ctx, m, s)
		if err != nil {
			lastErr = err
			continue
		}
		if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
			lastErr = fmt.Errorf("server %s: %s", s, dns.RcodeToString[in.Rcode])
			continue
		}
		var rrs []dns.RR
		ttl := time.Duration(1<<31) * time.Second
		for _, rr := range in.Answer {
			if rr.Header().Rrtype == qtype {
				rrs = append(rrs, rr)
				ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
			}
		}
		if len(rrs) == 0 {
			ttl = minTTL
		}
		r.mu.Lock()
		r.cache[q] = answer{rrs: rrs, expires: now.Add(max(ttl, minTTL))}
		r.mu.Unlock()
		return rrs, nil
	}
	return nil, fmt.Errorf("DNS %s %s: %w", dns.TypeToString[qtype], q.name, lastErr)
}

// orderSRV orders SRV records by priority, and within a priority by RFC
// 2782's weighted selection: a record is drawn with a chance proportional
// to its weight (records of weight 0 first in the list, so they get a
// small chance), removed, and the draw repeated. A target "." (the service
// is not offered) is dropped.
func orderSRV(rrs []dns.RR, rnd func(int) int) []*dns.SRV {
	var srvs []*dns.SRV
	for _, rr := range rrs {
		if s, ok := rr.(*dns.SRV); ok && s.Target != "." {
			srvs = append(srvs, s)
		}
	}
	slices.SortStableFunc(srvs, func(a, b *dns.SRV) int {
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		return cmp.Compare(min(a.Weight, 1), min(b.Weight, 1)) // weight 0 first
	})
	out := make([]*dns.SRV, 0, len(srvs))
	for i := 0; i < len(srvs); {
		j := i
		for j < len(srvs) && srvs[j].Priority == srvs[i].Priority {
			j++
		}
		out = append(out, weighted(srvs[i:j], rnd)...)
		i = j
	}
	return out
}

// weighted draws the records of one priority in RFC 2782's order.
func weighted(group []*dns.SRV, rnd func(int) int) []*dns.SRV {
	left := slices.Clone(group)
	out := make([]*dns.SRV, 0, len(left))
	for len(left) > 0 {
		sum := 0
		for _, s := range left {
			sum += int(s.Weight)
		}
		pick := 0
		if sum > 0 {
			// RFC 2782: a random number in [0, sum]; the first record whose
			// running sum reaches it.
			n, run := rnd(sum+1), 0
			for k, s := range left {
				run += int(s.Weight)
				if run >= n {
					pick = k
					break
				}
			}
		}
		out = append(out, left[pick])
		left = slices.Delete(left, pick, pick+1)
	}
	return out
}

func naptrService(transport string) string {
	switch transport {
	case "tcp":
		return "SIP+D2T"
	case "tls":
		return "SIPS+D2T"
	}
	return "SIP+D2U"
}

func srvPrefix(transport string) string {
	switch transport {
	case "tcp":
		return "_sip._tcp."
	case "tls":
		return "_sips._tcp."
	}
	return "_sip._udp."
}

// portOr returns p, or the default SIP port of transport when p is 0.
func portOr(p uint16, transport string) uint16 {
	if p != 0 {
		return p
	}
	if transport == "tls" {
		return 5061
	}
	return 5060
}
