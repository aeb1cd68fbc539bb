package registrar

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the `registrar:` section.
type Config struct {
	// DataDir holds the bbolt file registrar.db. Empty keeps bindings in memory only.
	DataDir string `yaml:"data_dir"`
	// MinExpires is the shortest registration interval accepted; see TooBrief.
	MinExpires time.Duration `yaml:"min_expires"`
	// MaxExpires caps the lifetime of a stored binding, whatever the backend granted.
	MaxExpires time.Duration `yaml:"max_expires"`
	// DefaultExpires applies when neither the 2xx nor the REGISTER names an expiry.
	DefaultExpires time.Duration `yaml:"default_expires"`
	// PurgeInterval is how often expired bindings and tombstones are dropped.
	PurgeInterval time.Duration `yaml:"purge_interval"`
	// MaxBindings bounds memory: beyond it new bindings are refused with ErrFull.
	MaxBindings int `yaml:"max_bindings"`
	// MaxBindingsPerAOR bounds the contacts of one address of record: a
	// REGISTER that would give an AOR more is refused whole with
	// ErrAORFull (RFC 3261 10.3 lets a registrar refuse a new binding).
	MaxBindingsPerAOR int `yaml:"max_bindings_per_aor"`
	// Domains the proxy considers its own; an AOR in one of them is keyed by its
	// user part alone. Empty means every domain is local.
	Domains []string `yaml:"domains"`
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		DataDir:           "/var/lib/hapbx",
		MinExpires:        60 * time.Second,
		MaxExpires:        3600 * time.Second,
		DefaultExpires:    3600 * time.Second,
		PurgeInterval:     10 * time.Second,
		MaxBindings:       100000,
		MaxBindingsPerAOR: 10,
	}
}

// Validate reports every problem of c, each as "<key>: <reason>".
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if c.MinExpires < time.Second {
		bad("min_expires", "must be >= 1s, got %s", c.MinExpires)
	}
	if c.MaxExpires < time.Second {
		bad("max_expires", "must be >= 1s, got %s", c.MaxExpires)
	} else if c.MaxExpires < c.MinExpires {
		bad("max_expires", "must be >= min_expires (%s), got %s", c.MinExpires, c.MaxExpires)
	}
	if c.DefaultExpires < c.MinExpires || c.DefaultExpires > c.MaxExpires {
		bad("default_expires", "must be within min_expires..max_expires (%s..%s), got %s",
			c.MinExpires, c.MaxExpires, c.DefaultExpires)
	}
	if c.PurgeInterval <= 0 {
		bad("purge_interval", "must be > 0, got %s", c.PurgeInterval)
	}
	if c.MaxBindings <= 0 {
		bad("max_bindings", "must be > 0, got %d", c.MaxBindings)
	}
	if c.MaxBindingsPerAOR <= 0 {
		bad("max_bindings_per_aor", "must be > 0, got %d", c.MaxBindingsPerAOR)
	}
	for i, d := range c.Domains {
		if strings.TrimSpace(d) == "" || strings.ContainsAny(d, " \t@;<>") {
			bad(fmt.Sprintf("domains[%d]", i), "must be a host name or address, got %q", d)
		}
	}
	return errors.Join(errs...)
}
