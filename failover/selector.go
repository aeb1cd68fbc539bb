package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/event"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// HealthSource delivers backend health changes; *health.Checker is one.
// The channel must first carry the current state of every backend and
// close when the source stops or ctx ends.
type HealthSource interface {
	Subscribe(ctx context.Context) <-chan health.Change
}

var _ HealthSource = (*health.Checker)(nil)

// errNoHealth: Run without a health source would follow nothing.
var errNoHealth = errors.New("failover: no health source (WithHealth, WithColdHealth)")

// EventKind tells what an Event announces.
type EventKind int

// Event kinds.
const (
	// BackendDown: a backend that was routable (up or suspect) is not any
	// more (health declared it down). Its calls are lost; the proxy ends
	// their dialogs.
	BackendDown EventKind = iota + 1
	// ActiveChanged: Active() now returns Backend ("" if none); Previous
	// is what it returned before.
	ActiveChanged
	// BackendRemoved: a backend left the configuration (reload). New calls
	// no longer go there, but it still runs: its calls in progress go on.
	BackendRemoved
)

func (k EventKind) String() string {
	switch k {
	case BackendDown:
		return "backend-down"
	case ActiveChanged:
		return "active-changed"
	case BackendRemoved:
		return "backend-removed"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is one thing the Selector announces.
type Event struct {
	Kind     EventKind
	Backend  string
	Previous string
	Reason   string
	At       time.Time
}

// Selector is the one place that decides where new requests go.
type Selector struct {
	cfg Config
	log *zap.Logger
	m   *metrics

	src    HealthSource     // see WithHealth
	events event.Sink       // see WithEvents
	settle time.Duration    // startup settling time, see WithStartupSettle
	now    func() time.Time // time.Now; tests replace it

	mu       sync.RWMutex
	order    []string // priority order
	states   map[string]health.State
	active   string
	lastReal string // last non-empty active, to count switches
	subs     map[*health.Queue[Event]]struct{}
	changed  chan struct{} // closed at the next state or list change, see Changed
	// Startup: the settling window opens at the first Run or Apply and
	// ends (settled) once every backend has a first verdict or the window
	// has passed. Until then the active role goes to the preferred up
	// backend whatever failback says.
	settleBy time.Time
	settled  bool
}

// SelectorOption configures a Selector.
type SelectorOption func(*Selector)

// WithStartupSettle sets the startup settling time (default
// StartupSettle(health.DefaultConfig())). With failback: false the rule
// "the active backend stays while it is up" holds only once startup has
// settled: until every backend has a first health verdict (up or down), or
// until d has passed since the Selector's first Run or Apply, the active
// backend is the highest-priority up one, so a standby whose first probes
// happen to answer a few milliseconds earlier does not keep the role for
// good. d bounds how long a dead or slow preferred backend can still take
// the role back; d <= 0 settles at once (the first backend up keeps it).
func WithStartupSettle(d time.Duration) SelectorOption {
	return func(s *Selector) { s.settle = d }
}

// WithHealth sets the health changes Run follows.
func WithHealth(src HealthSource) SelectorOption {
	return func(s *Selector) { s.src = src }
}

// WithEvents reports every change of the active backend to sink, for the
// status page's last events.
func WithEvents(sink event.Sink) SelectorOption {
	return func(s *Selector) { s.events = sink }
}

// StartupSettle returns the settling time that fits a health configuration:
// the time a live backend needs for its Rise good probes (the first probe
// at once, then one every Interval, each answered within Timeout), plus one
// Interval of slack for backends whose probes start a little later.
func StartupSettle(h health.Config) time.Duration {
	return time.Duration(max(h.Rise, 1))*h.Interval + h.Timeout
}

// New returns a Selector over backends in priority order (the first is the
// preferred one). All start unknown, hence unusable, until health says
// otherwise. reg may be nil.
func New(cfg Config, backends []string, log *zap.Logger, reg prometheus.Registerer, opts ...SelectorOption) (*Selector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("failover config: %w", err)
	}
	if err := checkNames(backends); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Selector{
		cfg:     cfg,
		log:     log,
		m:       m,
		order:   slices.Clone(backends),
		states:  map[string]health.State{},
		subs:    map[*health.Queue[Event]]struct{}{},
		changed: make(chan struct{}),
		settle:  StartupSettle(health.DefaultConfig()),
		now:     time.Now,
		events:  event.Discard{},
	}
	for _, o := range opts {
		o(s)
	}
	for _, b := range backends {
		s.states[b] = health.StateUnknown
		m.active.WithLabelValues(b).Set(0)
	}
	return s, nil
}

func checkNames(backends []string) error {
	if len(backends) == 0 {
		return fmt.Errorf("no backends: %w", ErrInvalidBackends)
	}
	seen := map[string]bool{}
	for i, b := range backends {
		if b == "" {
			return fmt.Errorf("backends[%d]: empty name: %w", i, ErrInvalidBackends)
		}
		if seen[b] {
			return fmt.Errorf("backends[%d]: duplicate name %q: %w", i, b, ErrInvalidBackends)
		}
		seen[b] = true
	}
	return nil
}

// Run applies the changes of the WithHealth source until its channel closes
// or ctx ends.
func (s *Selector) Run(ctx context.Context) error {
	if s.src == nil {
		return errNoHealth
	}
	s.mu.Lock()
	s.openSettleLocked()
	s.mu.Unlock()
	for c := range s.src.Subscribe(ctx) {
		s.Apply(c)
	}
	return nil
}

// Apply takes one health change into account. Changes for names the
// Selector does not know are ignored.
func (s *Selector) Apply(c health.Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.openSettleLocked()
	prev, ok := s.states[c.Name]
	if !ok {
		return
	}
	to := c.To
	if c.Removed {
		to = health.StateDown
	}
	s.states[c.Name] = to
	s.signalLocked() // also the active backend may move (electLocked)
	if prev.Routable() && !to.Routable() {
		kind := BackendDown
		if c.Removed {
			kind = BackendRemoved // reconfigured away, not dead: its calls go on
		}
		s.log.Warn("backend lost", zap.String("backend", c.Name), zap.Stringer("state", to), zap.String("reason", c.Reason))
		s.emitLocked(Event{Kind: kind, Backend: c.Name, Reason: c.Reason, At: time.Now()})
	}
	s.electLocked(c.Name + " " + to.String() + ": " + c.Reason)
}

// SetBackends replaces the backend list (configuration reload). Known
// backends keep their state; new ones start unknown; dropped ones count as
// down.
func (s *Selector) SetBackends(backends []string) error {
	if err := checkNames(backends); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	states := map[string]health.State{}
	for _, b := range backends {
		st, ok := s.states[b]
		if !ok {
			st = health.StateUnknown
			s.m.active.WithLabelValues(b).Set(0)
		}
		states[b] = st
	}
	for _, b := range s.order {
		if _, keep := states[b]; keep {
			continue
		}
		if s.states[b].Routable() {
			s.emitLocked(Event{Kind: BackendRemoved, Backend: b, Reason: "removed from configuration", At: time.Now()})
		}
		s.m.active.DeleteLabelValues(b)
	}
	s.order, s.states = slices.Clone(backends), states
	s.signalLocked() // a reload: what the proxy offers around the backends may have changed too
	s.electLocked("configuration reloaded")
	return nil
}

// Changed returns a channel closed at the next change that may change what
// Candidates returns (a backend's state, the backend list, a reload), so
// that a request held for a backend waits for one instead of polling. Call
// it again for the change after.
func (s *Selector) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// signalLocked wakes the waiters of Changed.
func (s *Selector) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// openSettleLocked starts the startup settling window, once.
func (s *Selector) openSettleLocked() {
	if s.settleBy.IsZero() {
		s.settleBy = s.now().Add(s.settle)
	}
}

// settledLocked reports whether startup had settled before the change
// being applied: the settling window has passed, or an earlier change gave
// every backend a first verdict (noteVerdictsLocked). The change that gives
// the last first verdict is still elected as at startup, so the preferred
// backend wins when it is the last to answer. It latches, so backends added
// later by SetBackends do not reopen it.
func (s *Selector) settledLocked() bool {
	if !s.settled && !s.settleBy.IsZero() && !s.now().Before(s.settleBy) {
		s.settled = true
	}
	return s.settled
}

// noteVerdictsLocked ends startup once no backend is unknown any more.
func (s *Selector) noteVerdictsLocked() {
	if s.settled {
		return
	}
	for _, st := range s.states {
		if st == health.StateUnknown {
			return
		}
	}
	s.settled = true
}

// electLocked recomputes the active backend. A suspect active backend keeps
// the role (a switch costs more than a suspicion, which the next probes
// settle within a fraction of a second); only losing it moves the role.
// Without failback the active backend also keeps the role while it is up,
// but only once startup has settled (see WithStartupSettle): before, the
// preferred up backend takes it, and such a move is not counted as a switch.
func (s *Selector) electLocked(why string) {
	cur := s.active
	eligible := func(b string) bool {
		st := s.states[b]
		return st == health.StateUp || (st == health.StateSuspect && b == cur)
	}
	settled := s.settledLocked()
	defer s.noteVerdictsLocked()
	next := ""
	if !s.cfg.Failback && settled && cur != "" && eligible(cur) {
		next = cur
	} else {
		for _, b := range s.order {
			if eligible(b) {
				next = b
				break
			}
		}
	}
	if next == "" { // no up backend: a suspect one beats none
		for _, b := range s.order {
			if s.states[b] == health.StateSuspect {
				next = b
				break
			}
		}
	}
	if next == cur {
		return
	}
	s.active = next
	if _, known := s.states[cur]; known && cur != "" {
		s.m.active.WithLabelValues(cur).Set(0)
	}
	if next != "" {
		s.m.active.WithLabelValues(next).Set(1)
		if s.lastReal != "" && s.lastReal != next && settled {
			s.m.switches.Inc()
		}
		s.lastReal = next
	}
	s.log.Info("active backend changed", zap.String("active", next), zap.String("previous", cur), zap.String("reason", why))
	now := time.Now()
	s.emitLocked(Event{Kind: ActiveChanged, Backend: next, Previous: cur, Reason: why, At: now})
	s.events.Record(event.Event{At: now, Kind: event.Failover, Subject: next,
		Text: "active backend " + orNone(next) + " (was " + orNone(cur) + "): " + why, Warn: cur != "" || next == ""})
}

func orNone(name string) string {
	if name == "" {
		return "none"
	}
	return name
}

// Active returns the active backend, or "" when none is usable. In balance
// mode it names the backend active-standby would use (for status and for
// requests that need one home, such as REGISTER).
func (s *Selector) Active() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.active
}

// Candidates returns the backends to try for a new request, best first:
// the chosen one (active-standby: the active backend; balance: the
// rendezvous-hash winner for key, normally the Call-ID), then the other up
// backends for retries, then suspect ones. Down and unknown backends are
// never listed; an empty result means "answer 503".
func (s *Selector) Candidates(key string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	// One slice: the up backends, then the suspect ones behind them.
	out := make([]string, 0, len(s.order))
	for _, b := range s.order {
		if s.states[b] == health.StateUp {
			out = append(out, b)
		}
	}
	nUp := len(out)
	for _, b := range s.order {
		if s.states[b] == health.StateSuspect {
			out = append(out, b)
		}
	}
	up, suspect := out[:nUp], out[nUp:]
	if s.cfg.Routing == RoutingBalance {
		hrwOrder(key, up)
		hrwOrder(key, suspect)
	} else {
		moveFirst(up, s.active)
		moveFirst(suspect, s.active)
	}
	return out
}

// Routable reports whether Candidates lists backend (up or suspect),
// without building the list: the proxy asks it for every request held by
// a slow backend.
func (s *Selector) Routable(backend string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.states[backend].Routable()
}

// OnlyRoutable reports whether backend is the one backend Candidates lists.
func (s *Selector) OnlyRoutable(backend string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, b := range s.order {
		if s.states[b].Routable() {
			n++
		}
	}
	return n == 1 && s.states[backend].Routable()
}

// moveFirst moves name to the front of list, keeping the others' order.
func moveFirst(list []string, name string) {
	i := slices.Index(list, name)
	if i > 0 {
		copy(list[1:i+1], list[:i])
		list[0] = name
	}
}

// Subscribe returns a channel of BackendDown and ActiveChanged events. It
// first carries one ActiveChanged with the current active backend
// (Previous equal to Backend). Events queue without bound; the channel
// closes when ctx ends.
func (s *Selector) Subscribe(ctx context.Context) <-chan Event {
	sub := health.NewQueue[Event]()
	s.mu.Lock()
	sub.Push(Event{Kind: ActiveChanged, Backend: s.active, Previous: s.active, Reason: "current", At: time.Now()})
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	go sub.Pump(ctx, func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	})
	return sub.Out()
}

func (s *Selector) emitLocked(e Event) {
	for sub := range s.subs {
		sub.Push(e)
	}
}
