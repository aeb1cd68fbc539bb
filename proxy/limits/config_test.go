package limits

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Bytes
		bad  bool
	}{
		{"512MiB", 512 * MiB, false},
		{"1GiB", GiB, false},
		{"64 KiB", 64 * KiB, false},
		{"2GB", 2 * GiB, false},
		{"1048576", MiB, false},
		{"", 0, true},
		{"-1MiB", 0, true},
		{"lots", 0, true},
		{"99999999999GiB", 0, true},
	} {
		got, err := ParseBytes(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseBytes(%q) = %v, %v; want %v (error %v)", c.in, got, err, c.want, c.bad)
		}
	}
	for _, b := range []Bytes{512 * MiB, GiB, 3 * KiB, 1000} {
		if back, err := ParseBytes(b.String()); err != nil || back != b {
			t.Errorf("%d written as %q reads back as %d, %v", b, b.String(), back, err)
		}
	}
}

func TestBytesYAML(t *testing.T) {
	var c Config
	if err := yaml.Unmarshal([]byte("memory: 1GiB\n"), &c); err != nil || c.Memory != GiB {
		t.Fatalf("memory: 1GiB read as %v, %v", c.Memory, err)
	}
	err := yaml.Unmarshal([]byte("\nmemory: plenty\n"), &c)
	var te *yaml.TypeError
	if !asTypeError(err, &te) || !strings.HasPrefix(te.Errors[0], "line 2: ") {
		t.Fatalf("a bad size gave %v, want a type error with its line", err)
	}
}

func asTypeError(err error, te **yaml.TypeError) bool {
	t, ok := err.(*yaml.TypeError)
	*te = t
	return ok
}

func TestValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	off := DefaultConfig()
	off.Flood = FloodConfig{}
	if err := off.Validate(); err != nil {
		t.Fatalf("flood guard off (rate 0) invalid: %v", err)
	}
	for _, c := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"tiny budget", func(c *Config) { c.Memory = MiB }, "memory: 1MiB must be at least 64MiB"},
		{"no transactions", func(c *Config) { c.MaxTransactions = 0 }, "max_transactions: 0 must be at least 1"},
		{"negative rate", func(c *Config) { c.Flood.Rate = -1 }, "flood.rate: -1 must be 0 (off) or more"},
		{"short window", func(c *Config) { c.Flood.Window = time.Millisecond }, "flood.window: 1ms must be between 100ms and 1m"},
		{"short cooldown", func(c *Config) { c.Flood.Cooldown = 0 }, "flood.cooldown: 0s must be at least 1s"},
		{"no table", func(c *Config) { c.Flood.MaxSources = 0 }, "flood.max_sources: 0 must be at least 1"},
	} {
		cfg := DefaultConfig()
		c.mutate(&cfg)
		if err := cfg.Validate(); err == nil || err.Error() != c.want {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
