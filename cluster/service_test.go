package cluster

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hapbx/hapbx/internal/testkit"
)

func validServiceConfig() Config {
	c := DefaultConfig()
	c.Name = "pbx1"
	c.Peers = []Peer{{Name: "n1", Gossip: "10.0.0.1:7946"}, {Gossip: "10.0.0.2:7946", Raft: "10.0.0.2:7947"}}
	c.SecretFile = "/etc/hapbx/cluster.key"
	c.DataDir = "" // not used by a service member
	return c
}

func TestServiceConfigValidate(t *testing.T) {
	if err := validServiceConfig().ValidateService(); err != nil {
		t.Fatalf("valid service member config rejected: %v", err)
	}
	if validServiceConfig().Validate() == nil || validServiceConfig().ValidateWitness() == nil {
		t.Fatal("a service member's section (one voter named, no data_dir) passes as a voter's")
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"no peers", func(c *Config) { c.Peers = nil }, []string{"peers: list the voters' gossip addresses"}},
		{"own name", func(c *Config) { c.Peers[0].Name = "pbx1" }, []string{`peers[0].name: "pbx1" is this member's own name`}},
		{"bad gossip", func(c *Config) { c.Peers[1].Gossip = "0.0.0.0:7946" }, []string{"peers[1].gossip:"}},
		{"no secret", func(c *Config) { c.SecretFile = "" }, []string{"secret_file: must be set"}},
		{"no name", func(c *Config) { c.Name = "" }, []string{"name: must not be empty"}},
		{"bad advertise", func(c *Config) { c.Advertise = "pbx:7946" }, []string{"advertise: host"}},
		{"timing", func(c *Config) { c.Timing.ProbeInterval = 0; c.Timing.SuspicionMult = 0 },
			[]string{"timing.probe_interval: must be > 0", "timing.suspicion_mult: must be >= 1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validServiceConfig()
			tc.mod(&c)
			err := c.ValidateService()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// Raft and VIP keys do not concern a service member.
	c := validServiceConfig()
	c.Timing.LeaderLease = time.Hour
	c.VIP = VIPConfig{Address: "nonsense"}
	if err := c.ValidateService(); err != nil {
		t.Fatalf("service member rejected for raft/VIP keys it ignores: %v", err)
	}
}

func TestServiceInfoRequired(t *testing.T) {
	c := validServiceConfig()
	c.SecretFile = writeKey(t, t.TempDir(), 1)
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{nil, "needs its backend name"},
		{[]Option{WithServiceInfo("asterisk1", "10.0.0.11:7790")}, "is not an http:// or https:// URL"},
		{[]Option{WithServiceInfo("asterisk1", "http://10.0.0.11:7790/"+strings.Repeat("x", 500))}, "memberlist allows 512"},
	} {
		if _, err := New(c, RoleService, zap.NewNop(), nil, tc.opts...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(service member, %d opts): %v, want %q", len(tc.opts), err, tc.want)
		}
	}
	a, err := New(c, RoleService, zap.NewNop(), nil, WithServiceInfo("asterisk1", "http://10.0.0.11:7790"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.RegisterState("test", newCountingSource(0, 0)); err == nil {
		t.Fatal("a service member accepted a state channel")
	}
	if err := a.Publish("k", nil); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Publish on a service member: %v, want ErrNotLeader", err)
	}
}

// serviceConfig is a service member joining the loopback trio cfgs; peers are listed by gossip
// address only, except the first (names are optional for a service member).
func serviceConfig(t *testing.T, cfgs []Config, name, key string) Config {
	c := DefaultConfig()
	c.Name = name
	c.Bind = "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1"))
	c.SecretFile = key
	c.DataDir = ""
	for i, v := range cfgs {
		p := Peer{Gossip: v.Peers[i].Gossip}
		if i == 0 {
			p.Name = v.Name
		}
		c.Peers = append(c.Peers, p)
	}
	return c
}

// TestServiceJoinsWithoutVoting: three voters on loopback plus a service member. The service member shows
// up in every voter's Services() with its backend and API, is no raft server, gets no
// shared state, and its crash changes nothing in leadership.
func TestServiceJoinsWithoutVoting(t *testing.T) {
	dir := t.TempDir()
	k := writeKey(t, dir, 1)
	cfgs := loopbackTrio(t, [3]string{k, k, k})
	var voters []*Cluster
	var srcs []*countingSource
	for i, cfg := range cfgs {
		c := startNode(t, cfg, zap.NewNop())
		src := newCountingSource(0, 0)
		if i == 0 {
			src = newCountingSource(20, 0) // full pushes go to joining stateful members only
		}
		if err := c.RegisterState("test", src); err != nil {
			t.Fatal(err)
		}
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
		voters, srcs = append(voters, c), append(srcs, src)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	acfg := serviceConfig(t, cfgs, "pbx1", k)
	api := "http://127.0.0.11:7790"
	reg := prometheus.NewRegistry()
	a, err := New(acfg, RoleService, zap.New(core), reg, WithServiceInfo("asterisk1", api))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.close() })

	var leader *Cluster
	testkit.Eventually(t, 10*time.Second, "a raft leader and the service member in every voter's Services()", func() bool {
		leader = nil
		for _, c := range voters {
			if c.Status().RaftState == "Leader" {
				leader = c
			}
			ag := c.Services()
			if len(ag) != 1 || ag[0] != (ServiceInfo{Name: "pbx1", Backend: "asterisk1", API: api, Addr: acfg.Bind, Alive: true}) {
				return false
			}
		}
		return leader != nil
	})
	// The service member sees the voters (joined by name or address) and counts itself a service member.
	testkit.Eventually(t, 3*time.Second, "the service member's view of 4 members", func() bool {
		n := 0
		for _, m := range a.Members() {
			if m.State == "alive" {
				n++
			}
		}
		return n == 4 && gauge(t, reg, "hapbx_cluster_members") == 4
	})
	if v := gauge(t, reg, "hapbx_cluster_quorum"); v != -1 {
		t.Fatalf("a service member exports hapbx_cluster_quorum (%v)", v)
	}
	if st := a.Status(); st.Role != "agent" || st.VIPHeld || st.RaftState != "" || a.IsLeader() {
		t.Fatalf("service member status %+v", st)
	}
	fut := leader.lead.r.GetConfiguration()
	if err := fut.Error(); err != nil {
		t.Fatal(err)
	}
	for _, s := range fut.Configuration().Servers {
		if s.ID == "pbx1" {
			t.Fatal("the service member is a raft server")
		}
	}
	if n := len(fut.Configuration().Servers); n != 3 {
		t.Fatalf("raft servers %d, want 3", n)
	}
	// State goes voter to voter only: the full push of w0's records and a broadcast.
	testkit.Eventually(t, 5*time.Second, "w0's records on w1 and w2", func() bool { return srcs[1].count() == 20 && srcs[2].count() == 20 })
	rec := make([]byte, 300)
	rec[7] = 99
	if err := voters[1].Broadcast("test", rec); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 3*time.Second, "the broadcast on w0 and w2", func() bool { return srcs[0].count() == 21 && srcs[2].count() == 21 })
	for _, c := range voters {
		for _, n := range c.mem.aliveNodes(c.cfg.Name) {
			if n.Name == "pbx1" {
				t.Fatalf("%s would send state to the service member", c.cfg.Name)
			}
		}
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "state") {
			t.Fatalf("the service member handled state: %s %v", e.Message, e.ContextMap())
		}
	}

	// The service member crashes (no leave message): voters declare it dead; leadership stays.
	term, lead := leader.Status().Term, leader.Status().Name
	a.closed.Store(true) // Close must not Leave: there is no goodbye in a crash
	a.cancel()
	a.wg.Wait()
	if err := a.mem.ml.Load().Shutdown(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "the service member dead in every voter's Services()", func() bool {
		for _, c := range voters {
			if ag := c.Services(); len(ag) != 1 || ag[0].Alive {
				return false
			}
		}
		return true
	})
	time.Sleep(4 * cfgs[0].Timing.HeartbeatTimeout)
	for _, c := range voters {
		st := c.Status()
		if st.Leader != lead || st.Term != term || !st.Quorum {
			t.Fatalf("%s after the service member's crash: leader %q term %s quorum %v, want %q term %s with quorum", st.Name, st.Leader, st.Term, st.Quorum, lead, term)
		}
	}
}

// TestServiceWrongKey: a service member with another gossip key cannot join, says why, and no
// voter lists it.
func TestServiceWrongKey(t *testing.T) {
	dir := t.TempDir()
	good, bad := writeKey(t, dir, 1), writeKey(t, dir, 9)
	cfgs := loopbackTrio(t, [3]string{good, good, good})
	var voters []*Cluster
	for _, cfg := range cfgs[:2] { // two voters are enough to answer a join
		c := startNode(t, cfg, zap.NewNop())
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
		voters = append(voters, c)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := New(serviceConfig(t, cfgs, "pbx1", bad), RoleService, zap.New(core), nil, WithServiceInfo("asterisk1", "http://127.0.0.11:7790"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.close() })
	testkit.Eventually(t, 5*time.Second, "a key-mismatch error in the service member's log", func() bool {
		for _, e := range logs.All() {
			if h, _ := e.ContextMap()["hint"].(string); e.Level >= zapcore.ErrorLevel && e.Message == "cannot join the cluster" && strings.Contains(h, "gossip key") {
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	for _, c := range voters {
		if ag := c.Services(); len(ag) != 0 {
			t.Fatalf("%s lists service members %+v joined with a wrong key", c.cfg.Name, ag)
		}
	}
	if n := len(a.Members()); n != 1 {
		t.Fatalf("the wrong-key service member sees %d members", n)
	}
}
