package failover

import (
	"errors"
	"fmt"
)

// Routing modes.
const (
	RoutingActiveStandby = "active-standby"
	RoutingBalance       = "balance"
)

// Config is the routing part of the configuration.
type Config struct {
	// Routing is "active-standby" (every new request to the active backend)
	// or "balance" (new requests spread by a hash of their key, the Call-ID).
	Routing string `yaml:"routing"`
	// Failback, as Heartbeat's auto_failback: when the preferred backend is
	// up again, it takes over again. With false the current active backend
	// stays active for as long as it is up.
	Failback bool `yaml:"failback"`
}

// DefaultConfig returns active-standby with failback.
func DefaultConfig() Config {
	return Config{Routing: RoutingActiveStandby, Failback: true}
}

// Validate returns every problem of c, joined.
func (c Config) Validate() error {
	var errs []error
	if c.Routing != RoutingActiveStandby && c.Routing != RoutingBalance {
		errs = append(errs, fmt.Errorf("routing: unknown mode %q (want %s or %s)", c.Routing, RoutingActiveStandby, RoutingBalance))
	}
	return errors.Join(errs...)
}
