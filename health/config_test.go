package health

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestConfigYAMLAndDefaults(t *testing.T) {
	cfg := DefaultConfig()
	in := "interval: 250ms\ntimeout: 200ms\nrise: 3\nfall: 1\nalive_codes: [2xx, 404]\nrequire: [sip]\n"
	if err := yaml.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Interval != 250*time.Millisecond || cfg.Timeout != 200*time.Millisecond || cfg.Rise != 3 || cfg.Fall != 1 {
		t.Fatalf("decoded %+v", cfg)
	}
	if cfg.SuspectInterval != DefaultConfig().SuspectInterval || cfg.AMIInterval != DefaultConfig().AMIInterval {
		t.Fatalf("unset key lost its default: %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"zero durations", func(c *Config) {
			c.Interval, c.Timeout, c.SuspectInterval, c.AMIBackoffMax, c.AMIInterval, c.AMITimeout = 0, -1, 0, 0, 0, -1
		},
			[]string{"interval: must be > 0", "suspect_interval: must be > 0", "timeout: must be > 0",
				"ami_interval: must be > 0", "ami_timeout: must be > 0", "ami_backoff_max: must be > 0"}},
		{"counts", func(c *Config) { c.Rise, c.Fall = 0, -2 }, []string{"rise: must be >= 1", "fall: must be >= 1"}},
		{"codes", func(c *Config) { c.AliveCodes = []string{"200", "9xx", "500-400", "abc", "2xx"} },
			[]string{"alive_codes[1]:", "alive_codes[2]:", "alive_codes[3]:"}},
		{"no codes", func(c *Config) { c.AliveCodes = nil }, []string{"alive_codes: must list"}},
		{"require", func(c *Config) { c.Require = []string{"sip", "http", "sip"} },
			[]string{`require[1]: unknown check "http"`, `require[2]: duplicate check "sip"`}},
		{"empty require", func(c *Config) { c.Require = nil }, []string{"require: must list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(tt.want), err)
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("problem %d = %q, want prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestCodeSet(t *testing.T) {
	cs, err := newCodeSet([]string{"2xx", "404", "480-486"})
	if err != nil {
		t.Fatal(err)
	}
	for code, want := range map[int]bool{200: true, 299: true, 300: false, 404: true, 403: false, 480: true, 486: true, 487: false, 503: false} {
		if got := cs.alive(code); got != want {
			t.Errorf("alive(%d) = %v, want %v", code, got, want)
		}
	}
	def, _ := newCodeSet(DefaultConfig().AliveCodes)
	if !def.alive(404) || !def.alive(200) || def.alive(500) || def.alive(503) {
		t.Error("default alive codes must take every final answer below 500")
	}
}

func TestValidateTargets(t *testing.T) {
	ts := []Target{
		{Name: "a", Address: "127.0.0.1:5060"},
		{Name: "a", Address: "127.0.0.1", Transport: "sctp"},
		{Name: "", Address: "x:0", AMI: &AMITarget{Address: "nohost"}},
		{Name: "d", Address: "127.0.0.1:5060", AMI: &AMITarget{Address: "127.0.0.1:5038", Username: "u", Secret: "pw\n"}},
	}
	err := validateTargets(ts)
	for _, w := range []string{
		"targets[1].name: duplicate", "targets[1].address:", "targets[1].transport:",
		"targets[2].name: must not be empty", "targets[2].address:", "targets[2].ami.address:", "targets[2].ami.username:",
		"targets[3].ami.secret: must not contain line breaks",
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in %v", w, err)
		}
	}
	if validateTargets(ts[:1]) != nil {
		t.Error("valid target refused")
	}
}
