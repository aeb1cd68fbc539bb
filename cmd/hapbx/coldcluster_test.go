package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/internal/testkit"
)

// The proxy's cluster in the cold lab: the proxy ("test", on proxyIP) and
// two witnesses run in this test process on 127.0.3.21 and .22, the VIP a
// /32 on lo. The agents join it with the same key.
const (
	witness1IP = "127.0.3.21"
	witness2IP = "127.0.3.22"
	labVIP     = "127.0.3.200/32"
)

type labCluster struct {
	key   string
	peers []cluster.Peer // proxy, w1, w2
}

// newLabCluster writes the gossip key and starts the two witnesses; the
// proxy (startProxy) and the agents (addNode) join them.
func (l *coldLab) newLabCluster() *labCluster {
	t := l.t
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(7 * i)
	}
	lc := &labCluster{key: filepath.Join(l.dir, "cluster.key")}
	if err := os.WriteFile(lc.key, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ name, ip string }{{"test", proxyIP}, {"w1", witness1IP}, {"w2", witness2IP}} {
		lc.peers = append(lc.peers, cluster.Peer{Name: v.name,
			Gossip: net.JoinHostPort(v.ip, strconv.Itoa(testkit.FreePort(t, v.ip))),
			Raft:   net.JoinHostPort(v.ip, strconv.Itoa(testkit.FreePort(t, v.ip)))})
	}
	// The VIP of a proxy killed by the test stays on lo: remove it last.
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", labVIP, "dev", "lo").Run() })
	for _, p := range lc.peers[1:] {
		cfg := cluster.DefaultConfig()
		cfg.Name, cfg.Bind, cfg.Peers, cfg.SecretFile = p.Name, p.Gossip, lc.peers, lc.key
		cfg.DataDir = filepath.Join(l.dir, "raft-"+p.Name)
		w, err := cluster.New(cfg, cluster.RoleWitness, zap.NewNop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		testkit.Run(t, w.Run)
	}
	l.cluster = lc
	return lc
}

// proxySection is the proxy's cluster: section.
func (lc *labCluster) proxySection(dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cluster:\n  bind: %q\n  secret_file: %q\n  data_dir: %q\n  vip: {address: %q, interface: lo}\n  peers:\n",
		lc.peers[0].Gossip, lc.key, filepath.Join(dir, "raft-test"), labVIP)
	for _, p := range lc.peers {
		fmt.Fprintf(&b, "    - {name: %s, gossip: %q, raft: %q}\n", p.Name, p.Gossip, p.Raft)
	}
	return b.String()
}

// agentNodeName: with a cluster, the agent's node name is its backend's
// name (that is how the proxy finds it).
func (l *coldLab) agentNodeName(nd *pbxNode) string {
	if l.cluster != nil {
		return nd.backend
	}
	return "node-" + strings.ToLower(nd.name)
}

// agentCluster is the agent's cluster: section (empty without a cluster):
// the voters' gossip addresses, the same key, no url (derived from
// agent.listen).
func (l *coldLab) agentCluster(nd *pbxNode) string {
	if l.cluster == nil {
		return ""
	}
	ip := coldIPs[nd.name]
	var b strings.Builder
	fmt.Fprintf(&b, "cluster:\n  bind: %q\n  secret_file: %q\n  peers:\n", net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(l.t, ip))), l.cluster.key)
	for _, p := range l.cluster.peers {
		fmt.Fprintf(&b, "    - {gossip: %q}\n", p.Gossip)
	}
	return b.String()
}

// TestColdAgentsJoinCluster is issue 6's "the agent joins the cluster with
// the same key": the proxy's file names no agent url; the agents of A and
// B join the proxy's cluster (proxy + two witnesses) and announce their
// API. The proxy, once VIP holder, finds them, starts the group on A and
// routes calls there. A crashes (agent and Asterisk SIGKILLed): its agent
// drops out of the cluster and counts as unreachable, so the proxy fences
// A before B starts; calls succeed on B.
func TestColdAgentsJoinCluster(t *testing.T) {
	l := newColdLab(t)
	l.newLabCluster()
	a, _ := l.addNode("A", false), l.addNode("B", false)
	l.startProxy(false)
	l.waitStatus("VIP holder found both agents in the cluster, group started on A and routed", 20*time.Second, func(s coldStatus) bool {
		reach := 0
		for _, n := range s.Cold.Nodes {
			if n.Reachable {
				reach++
			}
		}
		return reach == 2 && s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" && s.Cold.Phase == "idle"
	})
	out, err := l.hapbx("status")
	if err != nil || !strings.Contains(out, "asterisk1(agent)=alive") || !strings.Contains(out, "asterisk2(agent)=alive") || !strings.Contains(out, "here: true") {
		t.Fatalf("hapbx status does not show the proxy holding the VIP with both agents: %v\n%s", err, out)
	}
	for _, w := range []string{`"cold standby: agent found in the cluster"`, `"backend": "asterisk1"`} {
		if !strings.Contains(l.proxy.log.String(), strings.Trim(w, `"`)) {
			t.Fatalf("proxy log lacks %s", w)
		}
	}
	l.calls(2)

	l.crash(a)
	s := l.waitStatus("group moved to B and routed", 20*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk2" && s.Active == "asterisk2" && s.Cold.Last != nil && !s.Cold.Last.UpAt.IsZero()
	})
	if lm := s.Cold.Last; lm.From != "asterisk1" || lm.To != "asterisk2" || !lm.Fenced || lm.Error != "" {
		t.Fatalf("last move: %+v", lm)
	}
	l.waitStatus("A's agent reported as not in the cluster", 5*time.Second, func(s coldStatus) bool {
		for _, n := range s.Cold.Nodes {
			if n.Name == "asterisk1" {
				return !n.Reachable && strings.Contains(n.Error, "agent has not joined the cluster")
			}
		}
		return false
	})
	l.calls(2)
	testkit.NeverTwoPrimaries(t, l.drbd.Calls())
}
