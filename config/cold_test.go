package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestColdSectionAndBackendAgents(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "agent.token")
	if err := os.WriteFile(tok, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(minimal, "  - {name: asterisk1, address: 127.0.0.11:5060, transport: udp}\n  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp}\n",
		"  - {name: asterisk1, address: 127.0.0.11:5060, transport: udp, agent: {url: \"http://127.0.0.11:7790\", token_file: \""+tok+"\", fence: {command: \"true\"}}}\n"+
			"  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp, agent: {url: \"http://127.0.0.12:7790\", token_file: \""+tok+"\", fence: {safety_delay: 0s}}}\n", 1)
	text += "cold: {enabled: true, start_timeout: 30s}\n"
	f, err := Parse("x.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Cold.Enabled || f.Cold.StartTimeout != 30*time.Second || f.Cold.StopTimeout != 60*time.Second {
		t.Errorf("cold: %+v", f.Cold)
	}
	a1, a2 := f.Backends[0].Agent, f.Backends[1].Agent
	if a1.Fence.Command != "true" || a1.Fence.Timeout != 30*time.Second || a1.Fence.SafetyDelay != 5*time.Second {
		t.Errorf("fence defaults: %+v", a1.Fence)
	}
	if a2.Fence.SafetyDelay != 0 {
		t.Errorf("explicit safety_delay 0 lost: %+v", a2.Fence)
	}

	bad := minimal + "cold: {enabled: true, poll_interval: 0s}\nrouting: balance\n"
	bad = strings.Replace(bad, "routing: active-standby\n", "", 1)
	bad = strings.Replace(bad, "  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp}\n",
		"  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp, agent: {url: \"ftp://x\", token_file: /nonexistent, fence: {timeout: 0s, bogus: 1}}}\n", 1)
	_, err = Parse("x.yaml", []byte(bad))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"x.yaml: cold.poll_interval: must be > 0",
		"x.yaml: cold.enabled: needs routing: active-standby",
		"x.yaml: backends[0].agent: required with cold.enabled",
		`x.yaml: backends[1].agent.url: "ftp://x" is not`,
		"x.yaml: backends[1].agent.token_file:",
		"x.yaml: backends[1].agent.fence.timeout: must be > 0",
		"x.yaml: backends[1].agent.fence.bogus: unknown key",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%s", w, err)
		}
	}
}

func TestAgentFile(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(tok, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "hapbx-agent.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(raw), "/etc/hapbx/agent.token", tok, 1)
	if !IsAgentFile([]byte(text)) || IsAgentFile([]byte(minimal)) {
		t.Fatal("IsAgentFile")
	}
	f, err := ParseAgent("agent.yaml", []byte(text))
	if err != nil {
		t.Fatalf("deploy/hapbx-agent.example.yaml: %v", err)
	}
	if f.Agent.Service.Unit != "asterisk.service" || f.Agent.Ready.SIP != "127.0.0.1:5060" || f.Agent.DRBD.Resource != "r0" {
		t.Errorf("agent: %+v", f.Agent)
	}
	cmds := "node: {name: n}\nagent: {token_file: " + tok + ", service: {start_command: a, stop_command: b}}\n"
	if f, err := ParseAgent("a.yaml", []byte(cmds)); err != nil || f.Agent.Service.Unit != "" {
		t.Fatalf("start commands without unit: %+v %v", f.Agent.Service, err)
	}
	bad := "node: {name: n}\nagent: {listen: nope, token_file: /nonexistent, drbd: {resource: \"a b\"}, ready: {sip: x, transport: sctp, ami: {address: y}}, bogus: 1}\n"
	_, err = ParseAgent("a.yaml", []byte(bad))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"a.yaml: agent.bogus: unknown key",
		"a.yaml: agent.listen: must be ip:port",
		"a.yaml: agent.drbd.resource:",
		"a.yaml: agent.ready.sip:",
		`a.yaml: agent.ready.transport: "sctp"`,
		"a.yaml: agent.ready.ami.address:",
		"a.yaml: agent.ready.ami.username: must not be empty",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%s", w, err)
		}
	}
}

// clusterSection is a proxy's cluster: section (three voters).
const clusterSection = `cluster:
  peers:
    - {name: proxy1, gossip: 10.0.0.1:7946, raft: 10.0.0.1:7947}
    - {name: proxy2, gossip: 10.0.0.2:7946, raft: 10.0.0.2:7947}
    - {name: witness, gossip: 10.0.0.3:7946, raft: 10.0.0.3:7947}
  secret_file: /etc/hapbx/cluster.key
  vip: {address: 10.0.0.13/24, interface: eth0}
`

// withKey points the section's secret_file at a valid key in a temp dir:
// check-config reads the key.
func withKey(t *testing.T, section string) string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(key, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(section, "/etc/hapbx/cluster.key", key)
}

func TestBackendAgentURLFromCluster(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "agent.token")
	if err := os.WriteFile(tok, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(minimal, "  - {name: asterisk1, address: 127.0.0.11:5060, transport: udp}\n  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp}\n",
		"  - {name: asterisk1, address: 127.0.0.11:5060, transport: udp, agent: {token_file: \""+tok+"\"}}\n"+
			"  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp, agent: {url: \"http://127.0.0.12:7790\", token_file: \""+tok+"\"}}\n", 1)
	text += "cold: {enabled: true}\n"
	// Without a cluster nobody announces asterisk1's agent.
	_, err := Parse("x.yaml", []byte(text))
	if err == nil || !strings.Contains(err.Error(), "x.yaml: backends[0].agent.url: must be set without a cluster") {
		t.Fatalf("no url, no cluster: %v", err)
	}
	if strings.Contains(err.Error(), "backends[1]") {
		t.Fatalf("explicit url refused: %v", err)
	}
	f, err := Parse("x.yaml", []byte(withDialogSecret(text, dialogSecret(t))+withKey(t, clusterSection)))
	if err != nil {
		t.Fatalf("no url with a cluster: %v", err)
	}
	if f.Backends[0].Agent.URL != "" || f.Backends[1].Agent.URL != "http://127.0.0.12:7790" {
		t.Errorf("urls %q %q", f.Backends[0].Agent.URL, f.Backends[1].Agent.URL)
	}
}

func TestAgentFileWithCluster(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(tok, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "node: {name: asterisk1}\nagent: {token_file: " + tok + ", listen: %q%s}\n" +
		"cluster:\n  bind: %q\n  peers: [{name: proxy1, gossip: 10.0.0.1:7946, raft: 10.0.0.1:7947}, {gossip: 10.0.0.2:7946}]\n  secret_file: /etc/hapbx/cluster.key\n"
	for _, tc := range []struct {
		listen, extra, bind, url, err string
	}{
		{listen: "10.0.0.11:7790", bind: "0.0.0.0:7946", url: "http://10.0.0.11:7790"},
		{listen: "0.0.0.0:7790", bind: "10.0.0.11:7946", url: "http://10.0.0.11:7790"},
		{listen: "127.0.3.11:7790", bind: "127.0.3.11:7946", url: "http://127.0.3.11:7790"},
		{listen: "0.0.0.0:7790", extra: ", url: \"https://pbx1.example:443/\"", bind: "0.0.0.0:7946", url: "https://pbx1.example:443"},
		{listen: "127.0.0.1:7790", bind: "0.0.0.0:7946", err: "a.yaml: agent.listen: 127.0.0.1:7790 is a loopback address the proxies cannot reach"},
		{listen: "0.0.0.0:7790", bind: "0.0.0.0:7946", err: "a.yaml: agent.url: must be set: agent.listen 0.0.0.0:7790 is on all addresses"},
		{listen: "", bind: "0.0.0.0:7946", err: "a.yaml: agent.listen: must be set to join the cluster"},
		{listen: "10.0.0.11:7790", extra: ", url: \"10.0.0.11:7790\"", bind: "0.0.0.0:7946", err: `a.yaml: agent.url: "10.0.0.11:7790" is not an http`},
	} {
		text := fmt.Sprintf(base, tc.listen, tc.extra, tc.bind)
		if !IsAgentFile([]byte(text)) || IsWitnessFile([]byte(text)) {
			t.Fatalf("an agent file with a cluster section is not recognised as one:\n%s", text)
		}
		f, err := ParseAgent("a.yaml", []byte(text))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("listen %q bind %q: %v, want %q", tc.listen, tc.bind, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("listen %q bind %q: %v", tc.listen, tc.bind, err)
			continue
		}
		if u, err := f.AgentURL(); err != nil || u != tc.url {
			t.Errorf("listen %q bind %q: AgentURL %q %v, want %q", tc.listen, tc.bind, u, err, tc.url)
		}
		if c := f.ClusterConfig(); c.Name != "asterisk1" {
			t.Errorf("cluster name %q, want node.name", c.Name)
		}
	}
	// The cluster section is checked as an agent's: no raft, data_dir or VIP needed,
	// but its own problems are reported with their keys.
	bad := "node: {name: asterisk1}\nagent: {token_file: " + tok + ", listen: \"10.0.0.11:7790\"}\n" +
		"cluster:\n  peers: [{name: asterisk1, gossip: \"10.0.0.1\"}]\n  timing: {probe_interval: 0s}\n"
	_, err := ParseAgent("a.yaml", []byte(bad))
	for _, w := range []string{
		`a.yaml: cluster.peers[0].name: "asterisk1" is this member's own name`,
		"a.yaml: cluster.peers[0].gossip:",
		"a.yaml: cluster.secret_file: must be set",
		"a.yaml: cluster.timing.probe_interval: must be > 0",
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%v", w, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "vip") {
		t.Errorf("an agent asked for a VIP:\n%v", err)
	}
}

// TestAgentExampleClusterBlock: the commented cluster: block of
// deploy/hapbx-agent.example.yaml, uncommented, is a valid agent file once
// agent.listen names the node's address (a loopback listen is refused).
func TestAgentExampleClusterBlock(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(tok, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "hapbx-agent.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(raw), "/etc/hapbx/agent.token", tok, 1)
	i := strings.Index(text, "\n# cluster:\n")
	if i < 0 {
		t.Fatal("no commented cluster: block")
	}
	var b strings.Builder
	b.WriteString(text[:i+1])
	for _, line := range strings.Split(text[i+1:], "\n") {
		b.WriteString(strings.TrimPrefix(line, "# ") + "\n")
	}
	text = b.String()
	if _, err := ParseAgent("agent.yaml", []byte(text)); err == nil || !strings.Contains(err.Error(), "agent.listen: 127.0.0.1:7790 is a loopback address") {
		t.Fatalf("loopback listen with a cluster: %v", err)
	}
	text = strings.Replace(text, "listen: 127.0.0.1:7790", "listen: 192.168.1.11:7790", 1)
	f, err := ParseAgent("agent.yaml", []byte(text))
	if err != nil {
		t.Fatalf("uncommented cluster block:\n%v", err)
	}
	if u, _ := f.AgentURL(); !f.ClusterEnabled() || len(f.Cluster.Peers) != 3 || u != "http://192.168.1.11:7790" {
		t.Fatalf("cluster %+v url %q", f.Cluster, u)
	}
}
