package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/registrar"
)

// The join-sync lab: two `hapbx run` proxies ("pa" on joinAIP, "pb" on
// joinBIP) and one witness run in this test process on joinWIP: three raft
// voters. Addresses apart from the other tests of this package (127.0.3.1,
// .11, .12, .21, .22, .50, .51, .200).
const (
	joinAIP     = "127.0.3.61"
	joinBIP     = "127.0.3.62"
	joinWIP     = "127.0.3.63"
	joinBackIP  = "127.0.3.64" // the proxies' backend: nothing listens, it is down
	joinPhoneIP = "127.0.3.65" // where the stored phones "registered from"
	joinVIP     = "127.0.3.201/32"
	joinDomain  = "pbx.example.com"
	seedBatch   = 2000 // records per registrar store transaction when seeding
)

type joinLab struct {
	t       testing.TB
	dir     string
	key     string
	peers   []cluster.Peer // pa, pb, w
	backend string
}

func needJoinLab(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the VIP holder adds the cluster VIP to lo (ip addr add)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("needs ip (iproute2) on PATH: %v", err)
	}
}

// newJoinLab writes the gossip key, picks the voters' ports and starts the
// witness; the proxies are started by startProxy.
func newJoinLab(t testing.TB) *joinLab {
	t.Helper()
	needJoinLab(t)
	l := &joinLab{t: t, dir: t.TempDir()}
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(11*i + 3)
	}
	l.key = filepath.Join(l.dir, "cluster.key")
	if err := os.WriteFile(l.key, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ name, ip string }{{"pa", joinAIP}, {"pb", joinBIP}, {"w", joinWIP}} {
		l.peers = append(l.peers, cluster.Peer{Name: v.name,
			Gossip: net.JoinHostPort(v.ip, strconv.Itoa(testkit.FreePort(t, v.ip))),
			Raft:   net.JoinHostPort(v.ip, strconv.Itoa(testkit.FreePort(t, v.ip)))})
	}
	l.backend = net.JoinHostPort(joinBackIP, strconv.Itoa(testkit.FreePort(t, joinBackIP)))
	// A proxy killed by the test leaves the VIP on lo: remove it last.
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", joinVIP, "dev", "lo").Run() })
	w := l.peers[2]
	cfg := cluster.DefaultConfig()
	cfg.Name, cfg.Bind, cfg.Peers, cfg.SecretFile = w.Name, w.Gossip, l.peers, l.key
	cfg.DataDir = filepath.Join(l.dir, "raft-w")
	wit, err := cluster.New(cfg, cluster.RoleWitness, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, wit.Run)
	return l
}

// registrarConfig is the registrar section both proxies run with (and the
// one A's store is written with).
func (l *joinLab) registrarConfig(name string) registrar.Config {
	c := registrar.DefaultConfig()
	c.DataDir = filepath.Join(l.dir, "data-"+name)
	c.Domains = []string{joinDomain}
	return c
}

// seedBindings writes n bindings into proxy name's registrar store before
// it starts, as a proxy that has served n phones for the last hour holds
// them: one Contact per extension, registered through asterisk1 at times
// spread over the last 50 minutes for an hour each, from NATed phones
// (source address and port differ from the Contact's).
func (l *joinLab) seedBindings(name string, n int) {
	t := l.t
	t.Helper()
	cfg := l.registrarConfig(name)
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := registrar.New(cfg, name, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Round(0)
	phone := netip.MustParseAddr(joinPhoneIP)
	uas := []string{"Yealink SIP-T46U 108.86.0.20", "Grandstream GXP2170 1.0.11.23", "Linphone/5.2.5 (belle-sip/5.2.0)", "PolycomVVX-VVX_450-UA/6.4.3.5018"}
	recs := make([]registrar.Record, 0, n)
	for i := range n {
		ext := strconv.Itoa(100000 + i)
		updated := now.Add(-time.Duration(i%3000) * time.Second)
		port := uint16(1024 + i%60000)
		recs = append(recs, registrar.Record{
			Binding: registrar.Binding{
				AOR:       "sip:" + ext + "@" + joinDomain,
				Contact:   fmt.Sprintf("sip:%s@%s:%d;transport=udp;line=%x", ext, joinPhoneIP, 5060+i%1000, i*2654435761%(1<<32)),
				Source:    registrar.Source{Addr: netip.AddrPortFrom(phone, port), Transport: "udp"},
				CallID:    fmt.Sprintf("%08x-%04x-4e7a-9c1d-%012x@%s", i*7919, i%65536, i*104729, joinPhoneIP),
				CSeq:      uint32(1 + i%500),
				Expires:   updated.Add(time.Hour),
				Updated:   updated,
				UserAgent: uas[i%len(uas)],
				Backend:   "asterisk1",
				Q:         1,
			},
			Version: registrar.Version{Time: updated.UnixNano() + int64(i), Node: name},
		})
	}
	// Written as the daemon writes them, batch after batch, not in one
	// transaction: bbolt inserts a single 100k-key batch in map order into
	// one growing leaf (quadratic; 79 s under -race).
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	taken := 0
	for i := 0; i < n; i += seedBatch {
		k, err := r.Merge(recs[i:min(i+seedBatch, n)])
		if err != nil {
			t.Fatal(err)
		}
		taken += k
		testkit.Eventually(t, time.Minute, "the batch written", func() bool { return r.Snapshot().Store.Pending == 0 })
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if st := r.Snapshot(); taken != n || st.Bindings != n || st.Store.Errors != 0 {
		t.Fatalf("seeding %s's store: %d of %d records taken, %d bindings, store %+v", name, taken, n, st.Bindings, st.Store)
	}
}

// startProxy runs `hapbx run` as cluster member name (0: pa, 1: pb) and
// waits until its admin interface answers healthy.
func (l *joinLab) startProxy(i int) *daemon {
	t := l.t
	t.Helper()
	p := l.peers[i]
	ip, _, _ := net.SplitHostPort(p.Gossip)
	d := &daemon{config: filepath.Join(l.dir, p.Name+".yaml")}
	d.sip = net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(t, ip)))
	d.admin = "http://127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1"))
	rc := l.registrarConfig(p.Name)
	var b strings.Builder
	// dialog_secret_file is required with a cluster; the gossip key serves.
	fmt.Fprintf(&b, "node: {name: %s}\nsip:\n  listen: [\"udp://%s\"]\n  advertise: %s\n  drain_timeout: 2s\n  dialog_secret_file: %q\n", p.Name, d.sip, ip, l.key)
	fmt.Fprintf(&b, "backends:\n  - {name: asterisk1, address: %q, transport: udp}\n", l.backend)
	fmt.Fprintf(&b, "registrar: {data_dir: %q, domains: [%s]}\n", rc.DataDir, joinDomain)
	fmt.Fprintf(&b, "admin: {listen: %q}\nlog: {level: info, format: json}\n", strings.TrimPrefix(d.admin, "http://"))
	fmt.Fprintf(&b, "cluster:\n  bind: %q\n  secret_file: %q\n  data_dir: %q\n  vip: {address: %q, interface: lo}\n  peers:\n",
		p.Gossip, l.key, filepath.Join(l.dir, "raft-"+p.Name), joinVIP)
	for _, q := range l.peers {
		fmt.Fprintf(&b, "    - {name: %s, gossip: %q, raft: %q}\n", q.Name, q.Gossip, q.Raft)
	}
	if err := os.WriteFile(d.config, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	return d
}

// joinStatus is the part of /api/v1/status read here.
type joinStatus struct {
	Registrar registrar.Status `json:"registrar"`
	Cluster   *cluster.Status  `json:"cluster"`
}

func joinStatusOf(d *daemon) (joinStatus, error) {
	var s joinStatus
	c := http.Client{Timeout: 5 * time.Second}
	res, err := c.Get(d.admin + "/api/v1/status")
	if err != nil {
		return s, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return s, fmt.Errorf("status: HTTP %d", res.StatusCode)
	}
	err = json.NewDecoder(res.Body).Decode(&s)
	return s, err
}

func (l *joinLab) waitJoin(d *daemon, what string, within time.Duration, ok func(joinStatus) bool) joinStatus {
	l.t.Helper()
	var s joinStatus
	var err error
	if !testkit.Poll(within, func() bool {
		s, err = joinStatusOf(d)
		return err == nil && ok(s)
	}) {
		l.t.Fatalf("%s not reached within %v: last registrar %+v cluster %+v err %v", what, within, s.Registrar, s.Cluster, err)
	}
	return s
}

// joinSync runs the scenario with n bindings: A starts with them in its
// store and holds the VIP with the witness; B starts with an empty store.
// It returns the time from B's start (exec) until B's status counts all n
// bindings, failing if that takes over 60 s.
func joinSync(t testing.TB, n int) time.Duration {
	t.Helper()
	l := newJoinLab(t)
	t0 := time.Now()
	l.seedBindings("pa", n)
	seeded := time.Since(t0)
	a := l.startProxy(0)
	l.waitJoin(a, "pa loaded its store and holds the VIP with the witness", 30*time.Second, func(s joinStatus) bool {
		return s.Registrar.Bindings == n && s.Cluster != nil && s.Cluster.VIPHeld && s.Cluster.Quorum
	})

	t.Logf("pa's store seeded with %d bindings in %v; pa up with them, holding the VIP, %v later",
		n, seeded.Round(time.Millisecond), (time.Since(t0) - seeded).Round(time.Millisecond))
	start := time.Now()
	b := l.startProxy(1)
	healthy := time.Since(start)
	var last joinStatus
	var err error
	if !testkit.Poll(60*time.Second-time.Since(start), func() bool {
		var s joinStatus
		if s, err = joinStatusOf(b); err != nil {
			return false
		}
		last = s
		if s.Registrar.Bindings > n {
			t.Fatalf("pb counts %d bindings, more than the %d pa has", s.Registrar.Bindings, n)
		}
		return s.Registrar.Bindings == n
	}) {
		t.Fatalf("pb has %d of %d bindings 60 s after its start (err %v); registrar %+v cluster %+v",
			last.Registrar.Bindings, n, err, last.Registrar, last.Cluster)
	}
	took := time.Since(start)
	t.Logf("pb healthy %v after exec, has all %d bindings %v after exec", healthy.Round(time.Millisecond), n, took.Round(time.Millisecond))

	// Same state on both, and it stays so: no binding counted twice, none
	// lost, no tombstone invented, every extension one AOR.
	time.Sleep(500 * time.Millisecond)
	for _, d := range []*daemon{a, b} {
		s, err := joinStatusOf(d)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.Registrar; r.Bindings != n || r.AORs != n || r.Tombstones != 0 {
			t.Fatalf("%s after the sync: %d bindings, %d AORs, %d tombstones; want %d, %d, 0", r.Node, r.Bindings, r.AORs, r.Tombstones, n, n)
		}
	}
	// B joined the existing cluster rather than forming its own.
	l.waitJoin(b, "pb sees pa as the leader and the only VIP holder", 10*time.Second, func(s joinStatus) bool {
		c := s.Cluster
		return c != nil && c.Leader == "pa" && !c.VIPHeld && len(c.VIPHolders) == 1 && c.VIPHolders[0] == "pa"
	})
	pushed := false
	for _, line := range strings.Split(a.log.String(), "\n") {
		if strings.Contains(line, `"full state sent"`) && strings.Contains(line, `"to":"pb"`) && strings.Contains(line, `"channel":"registrar"`) {
			pushed = true
		}
	}
	if !pushed {
		t.Errorf("pa's log has no full registrar state push to pb")
	}
	return took
}

// TestJoinSyncRealBindings is the shared-state issue's "a proxy that joins
// an existing cluster has every binding": proxy pa has run with 5000 phones registered
// (its bbolt store written through the registrar package before it
// starts); proxy pb joins later with an empty store and ends with exactly
// the same 5000 bindings, through the real `hapbx run` processes.
func TestJoinSyncRealBindings(t *testing.T) {
	joinSync(t, 5000)
}

// BenchmarkJoinSync100k prints the time from pb's start until it has all
// 100000 bindings of pa (the shared-state issue's target: within 5 s). It fails only if
// pb never has them all within 60 s. It runs the scenario once whatever
// b.N is:
//
//	go test ./cmd/hapbx -run '^$' -bench JoinSync -benchtime 1x
func BenchmarkJoinSync100k(b *testing.B) {
	const n = 100000
	took := joinSync(b, n)
	b.Logf("join sync (shared machine; indicative): pb has all %d bindings %v after its start (target <= 5s)", n, took.Round(time.Millisecond))
	b.ReportMetric(float64(took.Milliseconds()), "sync-ms")
}
