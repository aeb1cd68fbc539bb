package trunk

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// KeepaliveConfig tunes the OPTIONS keepalive of a trunk's hosts.
type KeepaliveConfig struct {
	// Interval between two rounds (the trunk's `keepalive`).
	Interval time.Duration
	// Timeout bounds one OPTIONS; no answer within it is a failure.
	Timeout time.Duration
	// Fall failures in a row make a host down; Rise answers in a row make
	// it up again.
	Fall, Rise int
	// From is the host of the OPTIONS' From (the VIP).
	From string
}

// DefaultKeepaliveConfig is the trunk's interval, a timeout of 2 s (less
// when the interval is shorter), fall 2, rise 1.
func DefaultKeepaliveConfig(interval time.Duration, from string) KeepaliveConfig {
	return KeepaliveConfig{Interval: interval, Timeout: min(2*time.Second, interval), Fall: 2, Rise: 1, From: from}
}

// Validate checks the settings.
func (c KeepaliveConfig) Validate() error {
	var errs []error
	if c.Interval <= 0 || c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("interval and timeout: must be > 0, got %s and %s", c.Interval, c.Timeout))
	}
	if c.Fall < 1 || c.Rise < 1 {
		errs = append(errs, fmt.Errorf("fall and rise: must be >= 1, got %d and %d", c.Fall, c.Rise))
	}
	if c.From == "" {
		errs = append(errs, errors.New("from: must name a host"))
	}
	return errors.Join(errs...)
}

// Keepalive sends OPTIONS to each address of a trunk's hosts every
// interval and keeps each one up or down: any response is an answer (a
// provider may well answer 404 or 405 to OPTIONS); silence or a transport
// error is a failure. A host not yet probed counts as up, so a request
// does not wait for the first round. Its Up is what Trunk.Targets orders
// the hosts by, so an outgoing request skips a dead host without waiting
// for it.
type Keepalive struct {
	trunk *Trunk
	cfg   KeepaliveConfig
	send  Sender
	m     *Metrics
	log   *zap.Logger
	// notify, when set, is called on every change of a host's state.
	notify func(Target, bool)

	mu sync.Mutex
	// hosts holds the addresses of the last round's resolution only, so
	// it is bounded by what the trunk's DNS names.
	hosts map[netip.AddrPort]*hostState
}

type hostState struct {
	up         bool
	fails, oks int
}

// KeepaliveOption changes a Keepalive from its defaults.
type KeepaliveOption func(*Keepalive)

// WithTransitions calls f whenever a host goes up or down (tests, logs).
func WithTransitions(f func(t Target, up bool)) KeepaliveOption {
	return func(k *Keepalive) { k.notify = f }
}

// NewKeepalive watches the hosts of t and makes t's Targets list the live
// ones first. m may be nil.
func NewKeepalive(t *Trunk, cfg KeepaliveConfig, send Sender, m *Metrics, log *zap.Logger, opts ...KeepaliveOption) (*Keepalive, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("trunk %s keepalive: %w", t.cfg.Name, err)
	}
	if m == nil {
		m, _ = NewMetrics(nil)
	}
	k := &Keepalive{
		trunk: t, cfg: cfg, send: send, m: m,
		log:   log.With(zap.String("trunk", t.cfg.Name)),
		hosts: map[netip.AddrPort]*hostState{},
	}
	for _, o := range opts {
		o(k)
	}
	t.live = k.Up
	return k, nil
}

// Up reports whether the host at t answered the keepalive lately (true
// for one not probed yet).
func (k *Keepalive) Up(t Target) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, ok := k.hosts[t.Addr]
	return !ok || h.up
}

// Run probes every interval until ctx ends; it returns nil then.
func (k *Keepalive) Run(ctx context.Context) error {
	tick := time.NewTicker(k.cfg.Interval)
	defer tick.Stop()
	for {
		k.round(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// round probes every address of the trunk's hosts at once.
func (k *Keepalive) round(ctx context.Context) {
	t := *k.trunk
	t.live = nil // every address, in configured order
	targets, err := t.Targets(ctx)
	if err != nil {
		k.log.Warn("trunk hosts do not resolve", zap.Error(err))
		return
	}
	answered := make([]bool, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		wg.Go(func() { answered[i] = k.probe(ctx, tg) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	k.record(targets, answered)
}

// probe sends one OPTIONS to t and reports whether anything answered.
func (k *Keepalive) probe(ctx context.Context, t Target) bool {
	ruri := sip.Uri{Scheme: "sip", Host: t.Addr.Addr().String(), Port: int(t.Addr.Port())}
	from := sip.Uri{Scheme: "sip", User: "hapbx", Host: k.cfg.From}
	req := newRequest(sip.OPTIONS, ruri, from, ruri, sip.GenerateTagN(16), sip.GenerateTagN(24)+"@"+k.cfg.From, 1, t)
	tctx, cancel := context.WithTimeout(ctx, k.cfg.Timeout)
	defer cancel()
	_, err := k.send.Do(tctx, req)
	result := resultOK
	if err != nil {
		result = resultTimeout
	}
	if ctx.Err() == nil {
		k.m.keepalives.WithLabelValues(k.trunk.cfg.Name, result).Inc()
	}
	return err == nil
}

// record applies one round's answers and forgets addresses the trunk's
// hosts no longer resolve to.
func (k *Keepalive) record(targets []Target, answered []bool) {
	type change struct {
		t  Target
		up bool
	}
	var changes []change
	k.mu.Lock()
	seen := make(map[netip.AddrPort]bool, len(targets))
	up := 0
	for i, t := range targets {
		if seen[t.Addr] {
			continue
		}
		seen[t.Addr] = true
		h := k.hosts[t.Addr]
		if h == nil {
			h = &hostState{up: true}
			k.hosts[t.Addr] = h
		}
		was := h.up
		if answered[i] {
			h.oks, h.fails = h.oks+1, 0
			if !h.up && h.oks >= k.cfg.Rise {
				h.up = true
			}
		} else {
			h.fails, h.oks = h.fails+1, 0
			if h.up && h.fails >= k.cfg.Fall {
				h.up = false
			}
		}
		if h.up != was {
			changes = append(changes, change{t, h.up})
		}
		if h.up {
			up++
		}
	}
	for a := range k.hosts {
		if !seen[a] {
			delete(k.hosts, a)
		}
	}
	k.mu.Unlock()
	k.m.hostsUp.WithLabelValues(k.trunk.cfg.Name).Set(float64(up))
	for _, c := range changes {
		k.log.Info("trunk host "+upDown(c.up), zap.Stringer("host", c.t))
		if k.notify != nil {
			k.notify(c.t, c.up)
		}
	}
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// HostStates returns each probed address of the trunk and whether it is
// up, for status output ("udp:203.0.113.5:5060" -> true).
func (k *Keepalive) HostStates() map[string]bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]bool, len(k.hosts))
	for a, h := range k.hosts {
		out[k.trunk.cfg.Transport+":"+a.String()] = h.up
	}
	return out
}
