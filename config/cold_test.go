package config

import (
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
