package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/event"
)

// amiNotConfigured is Status.AMI for a backend that require: [ami] cannot
// apply to because it has no AMI settings.
const amiNotConfigured = "not configured: no ami settings, only SIP is checked"

// Checker probes every backend and keeps its state.
type Checker struct {
	cfg    Config
	codes  codeSet
	log    *zap.Logger
	m      *metrics
	load   LocalLoad  // nil: every probe counts
	events event.Sink // see WithEvents
	// bridgeSink and maxBridges: see FollowBridges (nil: not followed).
	bridgeSink BridgeSink
	maxBridges int

	mu       sync.Mutex
	order    []string
	backends map[string]*backend
	// heardBy is a copy of backends for Heard, which the proxy calls on
	// every backend response: read without c.mu, replaced under it.
	heardBy  atomic.Pointer[map[string]*backend]
	subs     map[*Queue[Change]]struct{}
	runCtx   context.Context // set while Run runs
	finished bool            // Run has returned
	wg       sync.WaitGroup  // backend loops
}

// backend is one watched target. Fields below t are guarded by Checker.mu.
type backend struct {
	t          Target
	requireSIP bool
	ami        *AMIClient // nil unless AMI is required
	noAMI      bool       // require lists ami but the target has no AMI settings
	kick       chan struct{}
	heard      atomic.Int64 // unix ns of the last answer to a forwarded request (busy.go)

	state            State
	reason           string
	since            time.Time
	good, bad        int
	lastSIP, lastAMI string
	lastBad          string
	excusedSince     time.Time // first of the probe timeouts excused in a row
	cancel           context.CancelFunc
}

// WithEvents reports every state change (and every backend removed from
// the configuration) to sink, for the status page's last events.
func WithEvents(sink event.Sink) Option {
	return func(c *Checker) { c.events = sink }
}

// New validates cfg and targets and returns a Checker; probes start with Run.
// reg may be nil (no metrics registered).
func New(cfg Config, targets []Target, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("health config: %w", err)
	}
	if err := validateTargets(targets); err != nil {
		return nil, err
	}
	codes, _ := newCodeSet(cfg.AliveCodes) // validated above
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Checker{
		cfg:      cfg,
		codes:    codes,
		log:      log,
		m:        m,
		backends: map[string]*backend{},
		subs:     map[*Queue[Change]]struct{}{},
		events:   event.Discard{},
	}
	for _, o := range opts {
		o(c)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range targets {
		c.addLocked(t)
	}
	return c, nil
}

// Run probes until ctx ends, then stops every probe and returns nil. It may
// be called once. Subscriber channels close after delivering what was
// queued (or when their own ctx ends).
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.runCtx != nil || c.finished {
		c.mu.Unlock()
		return errors.New("health: Run called twice")
	}
	c.runCtx = ctx
	for _, name := range c.order {
		c.startLocked(c.backends[name])
	}
	c.mu.Unlock()

	<-ctx.Done()

	c.mu.Lock()
	c.finished = true
	for _, b := range c.backends {
		if b.cancel != nil {
			b.cancel()
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	for s := range c.subs {
		s.Close() // the pump delivers what is queued, then closes
	}
	c.mu.Unlock()
	return nil
}

// SetTargets replaces the watched backends (configuration reload).
// Backends whose target is unchanged keep their state and their probes;
// removed ones are announced with a Change marked Removed; a changed target
// counts as removed and added again, starting from unknown.
func (c *Checker) SetTargets(targets []Target) error {
	if err := validateTargets(targets); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := map[string]bool{}
	for _, t := range targets {
		if b, ok := c.backends[t.Name]; ok && b.t.equal(t) {
			keep[t.Name] = true
		}
	}
	for _, name := range c.order {
		if keep[name] {
			continue
		}
		b := c.backends[name]
		if b.cancel != nil {
			b.cancel()
		}
		delete(c.backends, name)
		c.publishLocked()
		c.m.forget(name)
		c.emitLocked(Change{Name: name, From: b.state, To: StateDown, Reason: "removed from configuration", At: time.Now(), Removed: true})
		c.log.Info("backend removed from health checks", zap.String("backend", name))
		c.events.Record(event.Event{At: time.Now(), Kind: event.Backend, Subject: name, Text: "removed from the configuration"})
	}
	c.order = c.order[:0]
	for _, t := range targets {
		c.order = append(c.order, t.Name)
		if keep[t.Name] {
			continue
		}
		b := c.addLocked(t)
		c.emitLocked(Change{Name: t.Name, From: StateUnknown, To: StateUnknown, Reason: "added to configuration", At: b.since})
		if c.runCtx != nil && !c.finished {
			c.startLocked(b)
		}
	}
	return nil
}

func (c *Checker) addLocked(t Target) *backend {
	b := &backend{
		t:      t,
		kick:   make(chan struct{}, 1),
		state:  StateUnknown,
		reason: "not probed yet",
		since:  time.Now(),
	}
	requireAMI := false
	for _, r := range c.cfg.Require {
		switch r {
		case CheckSIP:
			b.requireSIP = true
		case CheckAMI:
			requireAMI = t.AMI != nil
			b.noAMI = t.AMI == nil
		}
	}
	if !b.requireSIP && !requireAMI {
		b.requireSIP = true // "require: [ami]" on a backend without AMI
	}
	if b.noAMI {
		// AMI is optional per backend (the example configuration has
		// backends without it), so this is no error; but "require: ami"
		// quietly meaning "sip only" would hide a forgotten ami: block.
		b.lastAMI = amiNotConfigured
		c.log.Warn("health requires ami but the backend has no ami settings: AMI is not checked, only SIP",
			zap.String("backend", t.Name), zap.Strings("require", c.cfg.Require))
	}
	if requireAMI {
		name := t.Name
		b.ami = NewAMIClient(AMIClientConfig{
			Address:      t.AMI.Address,
			Username:     t.AMI.Username,
			Secret:       t.AMI.Secret,
			PingInterval: c.cfg.AMIInterval,
			Timeout:      c.cfg.AMITimeout,
			BackoffMin:   min(100*time.Millisecond, c.cfg.AMIBackoffMax),
			BackoffMax:   c.cfg.AMIBackoffMax,
			OnPing: func(rtt time.Duration, _ error) {
				c.observe(b, CheckAMI, rtt)
			},
			// Losing the session is news: probe now instead of at the next tick.
			OnChange: func(AMIState) { b.poke() },
		}, c.log.With(zap.String("backend", name)))
	}
	c.followLocked(b)
	if !slices.Contains(c.order, t.Name) {
		c.order = append(c.order, t.Name)
	}
	c.backends[t.Name] = b
	c.publishLocked()
	c.m.up.WithLabelValues(t.Name).Set(0)
	return b
}

// FollowBridges has every backend's AMI session tell sink which two SIP
// calls the backend bridges (BridgeEnter, BridgeLeave, ...; amibridges.go),
// keeping at most max bridges per backend
// (hapbx_health_ami_bridges_untracked_total counts the others). Call it
// before Run; backends added later follow too. Backends without AMI
// settings report nothing.
func (c *Checker) FollowBridges(sink BridgeSink, max int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bridgeSink, c.maxBridges = sink, max
	for _, b := range c.backends {
		c.followLocked(b)
	}
}

func (c *Checker) followLocked(b *backend) {
	if b.ami == nil || c.bridgeSink == nil {
		return
	}
	b.ami.followBridges(newBridgeTracker(b.t.Name, c.bridgeSink, max(c.maxBridges, 1), c.m.bridgesFull.WithLabelValues(b.t.Name)))
}

func (b *backend) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (c *Checker) startLocked(b *backend) {
	ctx, cancel := context.WithCancel(c.runCtx)
	b.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.loop(ctx, b)
	}()
}

// loop starts a probe every interval (suspect_interval while suspect)
// without waiting for the previous one to end: each probe has its own
// socket and timeout, so a silent backend is down fall*interval + timeout
// after its last answer, and a slow answer (up to timeout) still counts.
// Verdicts are applied in the order the probes were sent: a result older
// than one already applied (a timeout that ends after a newer probe was
// answered) says nothing new and is dropped.
func (c *Checker) loop(ctx context.Context, b *backend) {
	if b.ami != nil {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			_ = b.ami.Run(ctx)
		}()
	}
	results := make(chan sipResult)
	var sent, applied uint64
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-results:
			if r.seq > applied {
				applied = r.seq
				c.apply(ctx, b, r)
			}
			continue
		case <-t.C:
		case <-b.kick:
			t.Stop()
		}
		sent++
		seq := sent
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			r := c.probeSIP(ctx, b)
			r.seq = seq
			select {
			case results <- r:
			case <-ctx.Done():
			}
		}()
		c.mu.Lock()
		next := c.cfg.Interval
		if b.state == StateSuspect {
			next = c.cfg.SuspectInterval
		}
		c.mu.Unlock()
		t.Reset(next)
	}
}

// observe records a probe duration unless b was removed meanwhile (which
// would bring back the series SetTargets dropped).
func (c *Checker) observe(b *backend, kind string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.backends[b.t.Name] == b {
		c.m.duration.WithLabelValues(b.t.Name, kind).Observe(d.Seconds())
	}
}

// sipResult is the outcome of one probe's SIP part (skipped: only AMI is
// required).
type sipResult struct {
	seq     uint64
	sent    time.Time // when the OPTIONS left: hapbx's strain since then excuses silence
	ok      bool
	silent  bool // no answer within the timeout
	reason  string
	lastSIP string
}

// probeSIP sends one OPTIONS when SIP is required.
func (c *Checker) probeSIP(ctx context.Context, b *backend) sipResult {
	if !b.requireSIP {
		return sipResult{ok: true}
	}
	start := time.Now()
	code, err := sipProbe(ctx, b.t, c.cfg.Timeout)
	d := time.Since(start)
	c.observe(b, CheckSIP, d)
	switch {
	case err != nil:
		return sipResult{sent: start, silent: errors.Is(err, ErrProbeTimeout), reason: "sip: " + err.Error(), lastSIP: err.Error()}
	case !c.codes.alive(code):
		return sipResult{reason: "sip: answered " + strconv.Itoa(code), lastSIP: "answered " + strconv.Itoa(code)}
	default:
		return sipResult{ok: true, lastSIP: "answered " + strconv.Itoa(code) + " in " + d.Round(10*time.Microsecond).String()}
	}
}

// apply joins a probe's SIP result with the AMI session's state and
// records the verdict.
func (c *Checker) apply(ctx context.Context, b *backend, r sipResult) {
	ok, reason := r.ok, r.reason
	var lastAMI string
	if b.noAMI {
		lastAMI = amiNotConfigured
	}
	if b.ami != nil {
		st := b.ami.State()
		lastAMI = st.Reason()
		if !st.Ready() && ok {
			ok, reason = false, "ami: "+st.Reason()
		}
	}
	if ctx.Err() != nil {
		return // stopped mid-probe: the verdict means nothing
	}
	if ok {
		reason = "probes answered"
	} else if r.silent && (c.busy(b, r.sent, reason) || c.excuse(b, r.sent, reason)) {
		return
	}
	c.record(b, ok, reason, r.lastSIP, lastAMI)
}

// record applies one probe verdict to the state machine:
// unknown/down -> up after Rise good; up -> suspect on the first bad;
// suspect -> up on a good; anything -> down after Fall bad.
func (c *Checker) record(b *backend, ok bool, reason, lastSIP, lastAMI string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.backends[b.t.Name] != b {
		return // removed or replaced meanwhile
	}
	b.lastSIP, b.lastAMI = lastSIP, lastAMI
	if ok {
		b.excusedSince = time.Time{} // excuses run out over a strain, not per bad probe
	}
	to := b.state
	if ok {
		b.good++
		b.bad = 0
		switch b.state {
		case StateSuspect:
			to = StateUp
		case StateUnknown, StateDown:
			if b.good >= c.cfg.Rise {
				to = StateUp
			}
		}
	} else {
		b.bad++
		b.good = 0
		switch {
		case b.bad >= c.cfg.Fall:
			to = StateDown
		case b.state == StateUp:
			to = StateSuspect
		}
	}
	if !ok {
		b.lastBad = reason
	}
	switch {
	case to != b.state:
		c.transitionLocked(b, to, reason)
	case ok && to != StateUp:
		// Rising: say how far, and why it was not up.
		b.reason = fmt.Sprintf("%d of %d good probes; last failure: %s", b.good, c.cfg.Rise, b.lastBad)
	case !ok:
		b.reason = reason
	}
}

// Suspect is the passive check: the proxy calls it when a request forwarded
// to the backend timed out, drew a 503 or hit a transport error. An up
// backend becomes suspect at once (one strike towards fall, never enough
// alone to make it down) and is probed at once; the other backends keep
// their schedule.
func (c *Checker) Suspect(name, reason string) {
	c.mu.Lock()
	b := c.backends[name]
	if b == nil {
		c.mu.Unlock()
		return
	}
	if b.state == StateUp {
		b.bad = min(b.bad+1, c.cfg.Fall-1)
		b.good = 0
		c.transitionLocked(b, StateSuspect, "passive: "+reason)
	}
	c.mu.Unlock()
	b.poke()
}

func (c *Checker) transitionLocked(b *backend, to State, reason string) {
	from := b.state
	now := time.Now()
	b.state, b.reason, b.since = to, reason, now
	up := 0.0
	if to.Routable() {
		up = 1
	}
	c.m.up.WithLabelValues(b.t.Name).Set(up)
	c.m.transitions.WithLabelValues(b.t.Name, from.String(), to.String()).Inc()
	log := c.log.Info
	if to == StateDown || to == StateSuspect {
		log = c.log.Warn
	}
	log("backend health changed",
		zap.String("backend", b.t.Name), zap.Stringer("from", from), zap.Stringer("to", to),
		zap.String("reason", reason))
	c.emitLocked(Change{Name: b.t.Name, From: from, To: to, Reason: reason, At: now})
	c.events.Record(event.Event{At: now, Kind: event.Backend, Subject: b.t.Name,
		Text: from.String() + " -> " + to.String() + ": " + reason, Warn: to == StateDown})
}

func (c *Checker) emitLocked(ch Change) {
	for s := range c.subs {
		s.Push(ch)
	}
}

// Subscribe returns a channel that first carries the current status of
// every backend (From equal to To), then every change in order. Nothing is
// lost and a slow reader never delays probes (changes queue without
// bound). The channel closes when ctx ends, or once drained after Run has
// returned.
func (c *Checker) Subscribe(ctx context.Context) <-chan Change {
	s := NewQueue[Change]()
	c.mu.Lock()
	for _, name := range c.order {
		b := c.backends[name]
		s.q = append(s.q, Change{Name: name, From: b.state, To: b.state, Reason: b.reason, At: b.since})
	}
	if c.finished {
		s.closed = true
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	go s.Pump(ctx, func() {
		c.mu.Lock()
		delete(c.subs, s)
		c.mu.Unlock()
	})
	return s.Out()
}

// Snapshot returns the status of every backend in target order.
func (c *Checker) Snapshot() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.order))
	for _, name := range c.order {
		b := c.backends[name]
		out = append(out, Status{
			Name: name, Address: b.t.Address, Transport: b.t.transport(),
			State: b.state, Reason: b.reason, Since: b.since,
			SIP: b.lastSIP, AMI: b.lastAMI,
		})
	}
	return out
}

// State returns the state of one backend, or StateUnknown and false.
func (c *Checker) State(name string) (State, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.backends[name]
	if b == nil {
		return StateUnknown, false
	}
	return b.state, true
}
