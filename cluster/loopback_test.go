package cluster

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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

func writeKey(t *testing.T, dir string, b byte) string {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b + byte(i)
	}
	p := filepath.Join(dir, "key"+strconv.Itoa(int(b)))
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(k)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loopbackTrio configures three witnesses on 127.0.0.1 (no root, no VIP): enough to test
// membership, raft, Publish/Get and state channels. keys[i] is node i's secret file.
func loopbackTrio(t *testing.T, keys [3]string) []Config {
	dir := t.TempDir()
	var peers []Peer
	for i := 0; i < 3; i++ {
		peers = append(peers, Peer{Name: "w" + strconv.Itoa(i), Gossip: "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1")),
			Raft: "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1"))})
	}
	var cfgs []Config
	for i := 0; i < 3; i++ {
		c := DefaultConfig()
		c.Name = peers[i].Name
		c.Bind = peers[i].Gossip
		c.Peers = peers
		c.SecretFile = keys[i]
		c.DataDir = filepath.Join(dir, c.Name)
		cfgs = append(cfgs, c)
	}
	return cfgs
}

func startNode(t *testing.T, cfg Config, log *zap.Logger) *Cluster {
	t.Helper()
	c, err := New(cfg, RoleWitness, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWitnessTrioPublishAndState(t *testing.T) {
	dir := t.TempDir()
	k := writeKey(t, dir, 1)
	cfgs := loopbackTrio(t, [3]string{k, k, k})
	var nodes []*Cluster
	var srcs []*countingSource
	reg := prometheus.NewRegistry()
	for i, cfg := range cfgs {
		var c *Cluster
		if i == 0 {
			var err error
			if c, err = New(cfg, RoleWitness, zap.NewNop(), reg); err != nil {
				t.Fatal(err)
			}
		} else {
			c = startNode(t, cfg, zap.NewNop())
		}
		src := newCountingSource(0, 0)
		if i == 0 {
			src = newCountingSource(50, 0) // w0 owns 50 records; the others get them on join
		}
		if err := c.RegisterState("test", src); err != nil {
			t.Fatal(err)
		}
		if err := c.RegisterState("test", src); err == nil {
			t.Fatal("channel registered twice")
		}
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
		nodes = append(nodes, c)
		srcs = append(srcs, src)
	}
	var leader *Cluster
	testkit.Eventually(t, 10*time.Second, "a raft leader", func() bool {
		for _, c := range nodes {
			if c.Status().RaftState == "Leader" {
				leader = c
				return true
			}
		}
		return false
	})
	for _, c := range nodes {
		if c.IsLeader() {
			t.Fatalf("witness %s claims the VIP", c.cfg.Name)
		}
		if c != leader {
			if err := c.Publish("active", []byte("x")); !errors.Is(err, ErrNotLeader) {
				t.Fatalf("Publish on follower: %v, want ErrNotLeader", err)
			}
		}
	}
	if err := leader.Publish("active", []byte("asterisk-b")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 3*time.Second, "the published value on every node", func() bool {
		for _, c := range nodes {
			if v, ok := c.Get("active"); !ok || string(v) != "asterisk-b" {
				return false
			}
		}
		return true
	})
	testkit.Eventually(t, 5*time.Second, "full sync of w0's 50 records", func() bool {
		return srcs[1].count() == 50 && srcs[2].count() == 50
	})
	rec := make([]byte, 300)
	rec[7] = 200
	big := make([]byte, 5000) // beyond a gossip packet: goes over TCP
	big[7] = 201
	if err := nodes[1].Broadcast("test", rec); err != nil {
		t.Fatal(err)
	}
	if err := srcs[1].send(big); err != nil { // the outlet RegisterState handed over
		t.Fatal(err)
	}
	if srcs[1].holder() {
		t.Fatal("a witness's state channel is told it holds the VIP")
	}
	if err := nodes[1].Broadcast("nope", rec); !errors.Is(err, ErrUnknownChannel) {
		t.Fatalf("unknown channel: %v", err)
	}
	testkit.Eventually(t, 3*time.Second, "broadcast records on w0 and w2", func() bool {
		return srcs[0].count() == 52 && srcs[2].count() == 52
	})
	st, err := json.Marshal(nodes[0].Status())
	if err != nil || !strings.Contains(string(st), `"members":[{"name":"w0"`) {
		t.Fatalf("status %s %v", st, err)
	}
	if n := len(nodes[2].Members()); n != 3 {
		t.Fatalf("members %d", n)
	}
	testkit.Eventually(t, 2*time.Second, "metrics of w0", func() bool {
		return gauge(t, reg, "hapbx_cluster_members") == 3 && gauge(t, reg, "hapbx_cluster_quorum") == 1 &&
			gauge(t, reg, "hapbx_cluster_vip_held") == 0 && gauge(t, reg, "hapbx_cluster_leader_changes_total") >= 1 &&
			gauge(t, reg, "hapbx_cluster_state_records_received_total") == 2
	})
}

// gauge reads a gauge's or counter's value from reg (-1 if absent).
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}

func TestWrongKeyIsReported(t *testing.T) {
	dir := t.TempDir()
	good, bad := writeKey(t, dir, 1), writeKey(t, dir, 9)
	cfgs := loopbackTrio(t, [3]string{good, good, bad})
	for _, cfg := range cfgs[:2] {
		c := startNode(t, cfg, zap.NewNop())
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
	}
	core, logs := observer.New(zapcore.DebugLevel)
	c := startNode(t, cfgs[2], zap.New(core))
	if err := c.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close() })
	testkit.Eventually(t, 5*time.Second, "a key-mismatch error in the intruder's log", func() bool {
		for _, e := range logs.All() {
			if h, _ := e.ContextMap()["hint"].(string); e.Level >= zapcore.ErrorLevel && strings.Contains(h, "gossip key") {
				t.Logf("intruder logged: %s %v", e.Message, e.ContextMap())
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	for _, m := range c.Members() {
		if m.Name != cfgs[2].Name {
			t.Fatalf("node with the wrong key sees member %s", m.Name)
		}
	}
}

// Figures: gossip throughput of Broadcast (records of 300 bytes) between witnesses on
// loopback. HAPBX_BENCH=1 to run.
func TestBroadcastFigures(t *testing.T) {
	if os.Getenv("HAPBX_BENCH") != "1" {
		t.Skip("figures: set HAPBX_BENCH=1")
	}
	k := writeKey(t, t.TempDir(), 1)
	cfgs := loopbackTrio(t, [3]string{k, k, k})
	var nodes []*Cluster
	var srcs []*countingSource
	for _, cfg := range cfgs {
		c := startNode(t, cfg, zap.NewNop())
		src := newCountingSource(0, 0)
		if err := c.RegisterState("test", src); err != nil {
			t.Fatal(err)
		}
		if err := c.start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.close() })
		nodes, srcs = append(nodes, c), append(srcs, src)
	}
	testkit.Eventually(t, 10*time.Second, "3 members", func() bool { return len(nodes[0].mem.aliveNodes(nodes[0].cfg.Name)) == 2 })
	for _, n := range []int{200, 2000, 100000} {
		base := srcs[1].count()
		t0 := time.Now()
		for i := 0; i < n; i++ {
			r := make([]byte, 300)
			binary.BigEndian.PutUint64(r, uint64(1_000_000*n+i))
			if err := nodes[0].Broadcast("test", r); err != nil {
				t.Fatal(err)
			}
		}
		testkit.Poll(60*time.Second, func() bool { return srcs[1].count() >= base+n })
		got := srcs[1].count() - base
		d := time.Since(t0)
		t.Logf("burst of %d broadcasts: %d arrived in %s (%.0f records/s)", n, got, d.Round(time.Millisecond), float64(got)/d.Seconds())
	}
}
