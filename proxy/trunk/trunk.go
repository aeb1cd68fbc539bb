package trunk

import (
	"context"
	"fmt"
)

// Trunk is one provider's trunk: its hosts resolved in order, the live
// ones first once a Keepalive watches them.
type Trunk struct {
	cfg   Config
	hosts []Host
	res   *Resolver
	live  func(Target) bool
}

// NewTrunk returns the trunk of cfg (its defaults applied, validated),
// resolving its hosts with res.
func NewTrunk(cfg Config, res *Resolver) (*Trunk, error) {
	t := &Trunk{cfg: cfg, res: res}
	for _, s := range cfg.Hosts {
		h, err := ParseHost(s)
		if err != nil {
			return nil, fmt.Errorf("trunk %s: %w", cfg.Name, err)
		}
		t.hosts = append(t.hosts, h)
	}
	return t, nil
}

// Config returns the trunk's settings.
func (t *Trunk) Config() Config { return t.cfg }

// Targets returns every address of the trunk's hosts in the order to try
// them: the hosts in configured order, each resolved (RFC 3263), and with
// a keepalive, the hosts it saw answer before those it did not. A host
// whose name does not resolve is left out; only when none resolves is it
// an error.
func (t *Trunk) Targets(ctx context.Context) ([]Target, error) {
	var out []Target
	var firstErr error
	for _, h := range t.hosts {
		ts, err := t.res.Resolve(ctx, h, t.cfg.Transport)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		out = append(out, ts...)
	}
	if len(out) == 0 && firstErr != nil {
		return nil, fmt.Errorf("trunk %s: %w", t.cfg.Name, firstErr)
	}
	if t.live != nil {
		out = liveFirst(out, t.live)
	}
	return out, nil
}

// liveFirst moves the targets live reports down behind the others,
// keeping the order within each group.
func liveFirst(ts []Target, live func(Target) bool) []Target {
	out := make([]Target, 0, len(ts))
	var dead []Target
	for _, t := range ts {
		if live(t) {
			out = append(out, t)
		} else {
			dead = append(dead, t)
		}
	}
	return append(out, dead...)
}
