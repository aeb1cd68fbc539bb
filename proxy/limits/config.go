package limits

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the `limits:` section: what hapbx may hold and what one source
// may send.
type Config struct {
	// Memory is hapbx's memory budget: the Go soft memory limit, and the
	// figure new work is shed against (Budget). Written as 512MiB, 1GiB or
	// a number of bytes.
	Memory Bytes `yaml:"memory"`
	// MaxTransactions bounds the requests being forwarded at once (pending
	// server transactions): past it new INVITE, REGISTER, SUBSCRIBE and
	// MESSAGE get 503 at the door. Each costs some tens of KB while it is
	// pending (goroutines, the request and its copies, sipgo's transactions),
	// so the default keeps them well inside the default budget.
	MaxTransactions int `yaml:"max_transactions"`
	// Flood is the per-source flood guard.
	Flood FloodConfig `yaml:"flood"`
}

// FloodConfig is the per-source flood guard (Kamailio's pike): a source
// address sending more than Rate requests in any Window is answered 503
// once, then ignored for Cooldown. Backends and the twin proxy are exempt.
//
// The default (2000 requests per 2 s, a sustained 1000/s) is for a small
// company behind one NAT address: after a router reboot 200 phones register
// at once, each sending a REGISTER, its authenticated re-send, and a
// SUBSCRIBE (with its re-send) for voicemail and a few busy lamps, about 10
// requests a phone, 2000 in all, which phones spread over several seconds;
// even all of them inside one window pass. A flooding tool sends thousands
// a second from one address and is blocked within a fraction of a second.
type FloodConfig struct {
	// Rate is the number of requests one source may send per Window; 0
	// turns the guard off.
	Rate int `yaml:"rate"`
	// Window is the sliding window the rate is measured over.
	Window time.Duration `yaml:"window"`
	// Cooldown is how long a blocked source is ignored.
	Cooldown time.Duration `yaml:"cooldown"`
	// MaxSources bounds the sources tracked at once (about 100 bytes each);
	// when the table is full new sources pass unchecked and are counted
	// (hapbx_limits_flood_table_full_total).
	MaxSources int `yaml:"max_sources"`
}

// DefaultConfig returns the defaults documented in deploy/hapbx.example.yaml.
func DefaultConfig() Config {
	return Config{
		Memory:          512 * MiB,
		MaxTransactions: 10000,
		Flood: FloodConfig{
			Rate:       2000,
			Window:     2 * time.Second,
			Cooldown:   30 * time.Second,
			MaxSources: 50000,
		},
	}
}

// Validate reports every problem, each as "key: reason".
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Memory < 64*MiB {
		bad("memory: %s must be at least 64MiB", c.Memory)
	}
	if c.MaxTransactions < 1 {
		bad("max_transactions: %d must be at least 1", c.MaxTransactions)
	}
	f := c.Flood
	if f.Rate < 0 {
		bad("flood.rate: %d must be 0 (off) or more", f.Rate)
	}
	if f.Rate > 0 {
		if f.Window < 100*time.Millisecond || f.Window > time.Minute {
			bad("flood.window: %v must be between 100ms and 1m", f.Window)
		}
		if f.Cooldown < time.Second {
			bad("flood.cooldown: %v must be at least 1s", f.Cooldown)
		}
		if f.MaxSources < 1 {
			bad("flood.max_sources: %d must be at least 1", f.MaxSources)
		}
	}
	return errors.Join(errs...)
}

// Bytes is a size in bytes; in YAML a number of bytes or a number with a
// unit: KiB, MiB, GiB (or KB, MB, GB, also powers of 1024 here).
type Bytes int64

// Units of Bytes.
const (
	KiB Bytes = 1 << 10
	MiB Bytes = 1 << 20
	GiB Bytes = 1 << 30
)

var units = []struct {
	suffix string
	n      Bytes
}{{"KiB", KiB}, {"MiB", MiB}, {"GiB", GiB}, {"KB", KiB}, {"MB", MiB}, {"GB", GiB}, {"B", 1}}

// ParseBytes reads "512MiB", "1GiB" or "1048576".
func ParseBytes(s string) (Bytes, error) {
	s = strings.TrimSpace(s)
	mul := Bytes(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mul = strings.TrimSpace(num), u.n
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || Bytes(n) > (1<<62)/mul {
		return 0, fmt.Errorf("%q is not a size (512MiB, 1GiB or a number of bytes)", s)
	}
	return Bytes(n) * mul, nil
}

// UnmarshalYAML reads a size; a bad one is a type error, which the config
// loader reports with its key path.
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseBytes(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a size (512MiB, 1GiB or a number of bytes)", n.Line, n.Value)}}
	}
	*b = v
	return nil
}

// MarshalYAML writes the size as ParseBytes reads it.
func (b Bytes) MarshalYAML() (any, error) { return b.String(), nil }

func (b Bytes) String() string {
	for _, u := range []struct {
		suffix string
		n      Bytes
	}{{"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if b >= u.n && b%u.n == 0 {
			return strconv.FormatInt(int64(b/u.n), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
