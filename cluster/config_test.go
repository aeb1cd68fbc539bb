package cluster

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hapbx/hapbx/internal/secretfile"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Name = "n1"
	c.Peers = []Peer{
		{Name: "n1", Gossip: "10.0.0.1:7946", Raft: "10.0.0.1:7947"},
		{Name: "n2", Gossip: "10.0.0.2:7946", Raft: "10.0.0.2:7947"},
		{Name: "w", Gossip: "10.0.0.3:7946", Raft: "10.0.0.3:7947"},
	}
	c.SecretFile = "/etc/hapbx/cluster.key"
	c.VIP.Address = "192.168.1.13/24"
	return c
}

func TestConfigYAML(t *testing.T) {
	text := `
name: n2
bind: 0.0.0.0:7946
peers:
  - {name: n1, gossip: 10.0.0.1:7946, raft: 10.0.0.1:7947}
  - {name: n2, gossip: 10.0.0.2:7946, raft: 10.0.0.2:7947}
  - {name: w, gossip: 10.0.0.3:7946, raft: 10.0.0.3:7947}
secret_file: /k
priority: 50
failback: true
ping_targets: [192.168.1.1:80]
timing: {heartbeat_timeout: 400ms, leader_lease: 150ms}
vip: {address: 192.168.1.13/24, interface: eth1, garp_count: 5, garp_interval: 100ms}
`
	c := DefaultConfig()
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.Timing.HeartbeatTimeout != 400*time.Millisecond || c.Timing.ElectionTimeout != 250*time.Millisecond ||
		c.VIP.GARPCount != 5 || c.VIP.Interface != "eth1" || !c.Failback || c.Priority != 50 || c.self().Name != "n2" {
		t.Fatalf("decoded %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"no name", func(c *Config) { c.Name = "" }, []string{"name: must not be empty"}},
		{"self missing", func(c *Config) { c.Name = "n9" }, []string{`peers: this node "n9" is not listed`}},
		{"two peers", func(c *Config) { c.Peers = c.Peers[:2] }, []string{"peers: need at least 3 voters"}},
		{"dup peer", func(c *Config) { c.Peers[1].Name = "n1" }, []string{`peers[1].name: "n1" listed twice`}},
		{"bad raft addr", func(c *Config) { c.Peers[2].Raft = "w:7947" }, []string{"peers[2].raft: host \"w\" must be an IP address"}},
		{"unspecified gossip", func(c *Config) { c.Peers[0].Gossip = "0.0.0.0:7946" }, []string{"peers[0].gossip:"}},
		{"bad port", func(c *Config) { c.Bind = "0.0.0.0:99999" }, []string{"bind: port"}},
		{"no secret", func(c *Config) { c.SecretFile = "" }, []string{"secret_file: must be set"}},
		{"no data dir", func(c *Config) { c.DataDir = "" }, []string{"data_dir: must be set"}},
		{"lease too long", func(c *Config) { c.Timing.LeaderLease = 230 * time.Millisecond }, []string{"timing.leader_lease: 230ms must be at most 211.5ms"}},
		{"zero timing", func(c *Config) { c.Timing.ProbeInterval = 0; c.Timing.GossipInterval = 0 },
			[]string{"timing.probe_interval: must be > 0", "timing.gossip_interval: must be > 0"}},
		{"vip", func(c *Config) { c.VIP.Address = "192.168.1.13"; c.VIP.Interface = ""; c.VIP.GARPCount = 0 },
			[]string{"vip.address:", "vip.interface: must be set", "vip.garp_count: must be >= 1"}},
		{"ping", func(c *Config) { c.PingTargets = []string{"gw"} }, []string{"ping_targets[0]:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mod(&c)
			err := c.Validate()
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
	// A witness needs no VIP.
	c := validConfig()
	c.VIP = VIPConfig{}
	if err := c.ValidateWitness(); err != nil {
		t.Fatalf("witness without VIP rejected: %v", err)
	}
	if c.Validate() == nil {
		t.Fatal("proxy without VIP accepted")
	}
}

func TestKeyring(t *testing.T) {
	k16 := base64.StdEncoding.EncodeToString(make([]byte, 16))
	k32 := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	kr, err := parseKeyring("f", "# cluster key\n"+k32+"\n\n"+k16+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(kr.GetKeys()) != 2 || string(kr.GetPrimaryKey()) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("keys %d, primary %q", len(kr.GetKeys()), kr.GetPrimaryKey())
	}
	for _, bad := range []string{"", "# only a comment\n", base64.StdEncoding.EncodeToString(make([]byte, 10)), "not base64!"} {
		if _, err := parseKeyring("f", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := parseKeyring("f", base64.StdEncoding.EncodeToString(make([]byte, 20))); !errors.Is(err, ErrBadKey) {
		t.Errorf("20-byte key: %v, want ErrBadKey", err)
	}
	// The file is a secret: one group or others may read is refused.
	exposed := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(exposed, []byte(k32+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(exposed); err != nil {
		t.Fatalf("private key file: %v", err)
	}
	if err := os.Chmod(exposed, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(exposed); !errors.Is(err, secretfile.ErrExposed) {
		t.Errorf("key file of mode 0640: %v, want secretfile.ErrExposed", err)
	}
}
