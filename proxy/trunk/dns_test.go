package trunk

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/hapbx/hapbx/internal/testkit"
)

// dnsServer is a real DNS server on loopback (miekg/dns) answering from a
// zone the test changes while it runs.
type dnsServer struct {
	Addr string

	mu      sync.Mutex
	zone    map[question][]dns.RR
	queries map[question]int
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	port := testkit.FreePort(t, "127.0.0.1")
	d := &dnsServer{
		Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		zone:    map[question][]dns.RR{},
		queries: map[question]int{},
	}
	pc, err := net.ListenPacket("udp", d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return d
}

// Set replaces the records of their names and types with rrs (zone file
// lines: "name TTL IN TYPE data").
func (d *dnsServer) Set(t *testing.T, lines ...string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	cleared := map[question]bool{}
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		q := question{strings.ToLower(rr.Header().Name), rr.Header().Rrtype}
		if !cleared[q] {
			d.zone[q] = nil
			cleared[q] = true
		}
		d.zone[q] = append(d.zone[q], rr)
	}
}

// Queries returns how often name was asked for qtype.
func (d *dnsServer) Queries(name string, qtype uint16) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[question{dns.Fqdn(name), qtype}]
}

func (d *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) == 1 {
		q := question{strings.ToLower(r.Question[0].Name), r.Question[0].Qtype}
		d.mu.Lock()
		d.queries[q]++
		m.Answer = append(m.Answer, d.zone[q]...)
		d.mu.Unlock()
	}
	_ = w.WriteMsg(m)
}
