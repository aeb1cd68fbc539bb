package media

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigYAMLAndDefaults(t *testing.T) {
	cfg := DefaultConfig()
	in := "enabled: true\naddress: 192.0.2.10\nports: \"30000-30999\"\nidle_timeout: 90s\nrelatch_after: 2s\nlearn_window: 1s\nmax_sessions: 100\ndatapath: user\nkernel_engine: nftables\n"
	if err := yaml.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	want := Config{Enabled: true, Address: "192.0.2.10", Ports: "30000-30999", IdleTimeout: 90 * time.Second, RelatchAfter: 2 * time.Second, LearnWindow: time.Second, MaxSessions: 100, Datapath: DatapathUser, KernelEngine: EngineNftables}
	if cfg != want {
		t.Fatalf("got %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	if d.Enabled || d.Ports != "20000-30000" || d.IdleTimeout != time.Minute || d.Datapath != DatapathAuto || d.KernelEngine != EngineEBPF {
		t.Fatalf("defaults %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	d.Enabled = true // address left empty: defaults to the SIP advertise address
	if err := d.Validate(); err != nil {
		t.Fatalf("enabled without address must validate: %v", err)
	}
	if _, err := New(d, nil, nil); err == nil {
		t.Fatal("New accepted an empty address")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"bad address", func(c *Config) { c.Address = "pbx" }, []string{`address: "pbx" is not an IP address`}},
		{"ipv6", func(c *Config) { c.Address = "::1" }, []string{"address: \"::1\" must be IPv4"}},
		{"unspecified", func(c *Config) { c.Address = "0.0.0.0" }, []string{"address: \"0.0.0.0\" must be a concrete address"}},
		{"ports shape", func(c *Config) { c.Ports = "20000" }, []string{`ports: "20000": want "lo-hi"`}},
		{"ports order", func(c *Config) { c.Ports = "30000-20000" }, []string{"ports: \"30000-20000\": want 1024 <= lo <= hi <= 65535"}},
		{"ports too small", func(c *Config) { c.Ports = "20001-20002" }, []string{"holds no even/odd RTP/RTCP pair"}},
		{"datapath", func(c *Config) { c.Datapath = "ebpf" }, []string{`datapath: "ebpf": want kernel, user or auto`}},
		{"kernel engine", func(c *Config) { c.KernelEngine = "xdp" }, []string{`kernel_engine: "xdp": want ebpf or nftables`}},
		{"all at once", func(c *Config) {
			c.IdleTimeout, c.RelatchAfter, c.LearnWindow, c.MaxSessions, c.Workers, c.Ports = 0, -1, -1, -1, -1, "x"
		}, []string{"idle_timeout: must be > 0", "relatch_after: must be > 0", "learn_window: must be >= 0", "max_sessions: must be >= 0", "workers: must be >= 0", "ports: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParsePortsOddBounds(t *testing.T) {
	first, last, err := parsePorts("20001-20010")
	if err != nil || first != 20002 || last != 20008 {
		t.Fatalf("got %d %d %v; want 20002 20008", first, last, err)
	}
}

func TestPortPool(t *testing.T) {
	p := newPortPool(20000, 20006) // 4 pairs
	var got []int
	for {
		port, ok := p.get()
		if !ok {
			break
		}
		got = append(got, port)
	}
	if len(got) != 4 || got[0] != 20000 || got[3] != 20006 {
		t.Fatalf("got %v", got)
	}
	p.put(20002)
	p.put(20002) // double free is harmless
	if port, ok := p.get(); !ok || port != 20002 {
		t.Fatalf("reuse got %d %v", port, ok)
	}
	if _, ok := p.get(); ok {
		t.Fatal("pool should be empty")
	}
	for _, port := range got {
		p.put(port)
	}
	if err := p.take(20004); err != nil {
		t.Fatal(err)
	}
	if err := p.take(20004); err == nil {
		t.Fatal("take of a used pair succeeded")
	}
	if err := p.take(20003); err == nil {
		t.Fatal("take of an odd port succeeded")
	}
	seen := map[int]bool{}
	for {
		port, ok := p.get()
		if !ok {
			break
		}
		if port == 20004 || seen[port] {
			t.Fatalf("got taken or duplicate port %d", port)
		}
		seen[port] = true
	}
	if len(seen) != 3 || p.free() != 0 {
		t.Fatalf("seen %v free %d", seen, p.free())
	}
}
