package testkit

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNSServer is a real DNS server (miekg/dns, UDP) answering from a zone
// the test changes while it runs: the providers' NAPTR/SRV/A records of
// the trunk tests.
type DNSServer struct {
	Addr string

	mu      sync.Mutex
	zone    map[dnsQuestion][]dns.RR
	queries map[dnsQuestion]int
}

type dnsQuestion struct {
	name  string
	qtype uint16
}

// StartDNS serves on addr ("ip:port") until the test ends.
func StartDNS(t testing.TB, addr string) *DNSServer {
	t.Helper()
	d := &DNSServer{Addr: addr, zone: map[dnsQuestion][]dns.RR{}, queries: map[dnsQuestion]int{}}
	pc, err := net.ListenPacket("udp", addr)
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
func (d *DNSServer) Set(t testing.TB, lines ...string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	cleared := map[dnsQuestion]bool{}
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		q := dnsQuestion{strings.ToLower(rr.Header().Name), rr.Header().Rrtype}
		if !cleared[q] {
			d.zone[q] = nil
			cleared[q] = true
		}
		d.zone[q] = append(d.zone[q], rr)
	}
}

// Queries returns how often name was asked for qtype.
func (d *DNSServer) Queries(name string, qtype uint16) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[dnsQuestion{dns.Fqdn(name), qtype}]
}

// ServeDNS answers from the zone (authoritative; no records: an empty answer).
func (d *DNSServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) == 1 {
		q := dnsQuestion{strings.ToLower(r.Question[0].Name), r.Question[0].Qtype}
		d.mu.Lock()
		d.queries[q]++
		m.Answer = append(m.Answer, d.zone[q]...)
		d.mu.Unlock()
	}
	_ = w.WriteMsg(m)
}
