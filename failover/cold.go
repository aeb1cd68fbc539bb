package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/event"
	"github.com/hapbx/hapbx/storage"
)

// ColdConfig is the `cold:` section: cold standby, where only one PBX
// node's resource group (DRBD Primary, file system, Asterisk) runs at a
// time and the coordinator moves it.
type ColdConfig struct {
	// Enabled selects the failover mode: false is hot standby (every
	// backend runs; routing alone fails over), true is cold standby.
	Enabled bool `yaml:"enabled"`
	// RequestTimeout bounds a status request to an agent; an agent that
	// does not answer within it counts as unreachable (and is fenced
	// before its group is started elsewhere).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// StopTimeout bounds the old node's group stop.
	StopTimeout time.Duration `yaml:"stop_timeout"`
	// StartTimeout bounds the new node's group start (DRBD, mount,
	// service start and its readiness).
	StartTimeout time.Duration `yaml:"start_timeout"`
	// UpTimeout bounds the wait for health to mark the started backend up.
	UpTimeout time.Duration `yaml:"up_timeout"`
	// PollInterval is how often every agent's status is read.
	PollInterval time.Duration `yaml:"poll_interval"`
	// InitialStart starts the group on the first node in order when no
	// agent reports it anywhere (all agents answered, none Primary).
	InitialStart bool `yaml:"initial_start"`
}

// DefaultColdConfig: hot standby; timeouts sized for a full Asterisk.
func DefaultColdConfig() ColdConfig {
	return ColdConfig{
		RequestTimeout: 2 * time.Second,
		StopTimeout:    60 * time.Second,
		StartTimeout:   120 * time.Second,
		UpTimeout:      30 * time.Second,
		PollInterval:   time.Second,
		InitialStart:   true,
	}
}

// Validate returns every problem of c, joined, keys relative to `cold:`.
func (c ColdConfig) Validate() error {
	var errs []error
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"request_timeout", c.RequestTimeout}, {"stop_timeout", c.StopTimeout}, {"start_timeout", c.StartTimeout},
		{"up_timeout", c.UpTimeout}, {"poll_interval", c.PollInterval}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be > 0, got %s", d.key, d.v))
		}
	}
	return errors.Join(errs...)
}

// Agent is what the coordinator needs of a PBX node's storage agent;
// storage.Client is one.
type Agent interface {
	Status(ctx context.Context) (storage.Status, error)
	Start(ctx context.Context, opts storage.StartOptions) (storage.Result, error)
	Stop(ctx context.Context) (storage.Result, error)
}

var _ Agent = storage.Client{}

// ColdNode is one PBX node: its backend name (as health and the Selector
// know it), its agent and how to fence it.
type ColdNode struct {
	Name  string
	Agent Agent
	// Fence makes sure the node no longer writes to the replicated disk
	// when its agent cannot stop its group. Nil means: wait until the DRBD
	// of the node about to be promoted shows this one disconnected, plus
	// SafetyDelay (storage.PeerDisconnectFencer).
	Fence storage.Fencer
	// FenceTimeout and SafetyDelay configure that default fencer.
	FenceTimeout, SafetyDelay time.Duration
}

// Coordinator phases, as ColdStatus shows them.
const (
	PhaseIdle     = "idle"
	PhaseStopping = "stopping"
	PhaseFencing  = "fencing"
	PhaseStarting = "starting"
	PhaseWaitUp   = "waiting-up"
	PhaseBlocked  = "blocked"
)

// Sentinel errors of manual moves.
var (
	// ErrNotLeader: only the leader proxy moves resource groups.
	ErrNotLeader = errors.New("failover: not the leader")
	// ErrBusy: a move is already running.
	ErrBusy = errors.New("failover: a move is already in progress")
	// ErrUnknownNode: no cold node by that name.
	ErrUnknownNode = errors.New("failover: unknown node")
	// ErrNoCandidate: no node can take the group (unreachable, split
	// brain, disk not UpToDate).
	ErrNoCandidate = errors.New("failover: no node can take the group")
)

// NodeStatus is one node as the coordinator last saw it.
type NodeStatus struct {
	Name      string         `json:"name"`
	Health    string         `json:"health"`
	Reachable bool           `json:"reachable"`
	Error     string         `json:"error,omitempty"`
	Agent     storage.Status `json:"agent"`
	CheckedAt time.Time      `json:"checked_at"`
}

// MoveReport is one failover or switchover, with its timings.
type MoveReport struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Manual bool   `json:"manual"`
	Reason string `json:"reason"`
	// DownAt is when the old backend was declared down (failover) or the
	// operator asked (switchover).
	DownAt    time.Time `json:"down_at"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
	// Fenced is true when the old node was fenced instead of stopped.
	Fenced    bool      `json:"fenced"`
	StartAt   time.Time `json:"start_at,omitzero"`
	StartedAt time.Time `json:"started_at,omitzero"`
	UpAt      time.Time `json:"up_at,omitzero"`
	// ServiceReady is the service's own start-to-ready time on the new
	// node (from the agent's report).
	ServiceReady time.Duration `json:"service_ready_ns"`
	// Overhead is hapbx's own share of DownAt..StartedAt: the whole time
	// minus ServiceReady.
	Overhead time.Duration `json:"overhead_ns"`
	Error    string        `json:"error,omitempty"`
}

// ColdStatus is the coordinator's state for /api/v1/status.
type ColdStatus struct {
	Enabled bool   `json:"enabled"`
	Leader  bool   `json:"leader"`
	Holder  string `json:"holder"`
	Phase   string `json:"phase"`
	// Blocked says why automatic promotion does not happen (split brain,
	// failed fencing, no candidate); "" when it is not blocked.
	Blocked string       `json:"blocked,omitempty"`
	Nodes   []NodeStatus `json:"nodes"`
	Last    *MoveReport  `json:"last_move,omitempty"`
}

// ColdOption configures a Coordinator.
type ColdOption func(*Coordinator)

// WithLeader makes the coordinator act only while isLeader() is true (the
// cluster's VIP leadership); without it, it always acts.
func WithLeader(isLeader func() bool) ColdOption {
	return func(c *Coordinator) { c.isLeader = isLeader }
}

// WithColdEvents reports the moves (started, fenced, group started or
// failed) and blocked promotions to sink, for the status page's last
// events.
func WithColdEvents(sink event.Sink) ColdOption {
	return func(c *Coordinator) { c.events = sink }
}

// WithColdHealth sets the health changes Run follows.
func WithColdHealth(src HealthSource) ColdOption {
	return func(c *Coordinator) { c.src = src }
}

// Coordinator drives cold standby: when the backend holding the resource
// group is declared down it stops that node's group, or fences the node
// when its agent cannot, and only then starts the group on the next node
// and waits until health sees it up (the Selector then routes to it).
type Coordinator struct {
	cfg      ColdConfig
	log      *zap.Logger
	isLeader func() bool
	src      HealthSource // see WithColdHealth
	events   event.Sink   // see WithColdEvents
	m        *coldMetrics

	op sync.Mutex // one move at a time

	mu      sync.Mutex
	nodes   []ColdNode // replaced whole by SetNodes, never changed in place
	holder  string
	phase   string
	blocked string
	status  map[string]NodeStatus
	health  map[string]health.State
	last    *MoveReport
	tried   time.Time // last move attempt
	missed  missedDown
	kick    chan struct{}
}

// missedDown is the holder's loss this proxy saw while it did not lead and
// left to the leader; poll moves the group itself if it leads again and
// finds nothing done (the other proxy lost its leadership or died first).
type missedDown struct {
	from   string // "" when none
	at     time.Time
	reason string
}

// retryBlocked is how often a blocked failover is tried again.
const retryBlocked = 10 * time.Second

func (c *Coordinator) lastTry() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tried
}

// NewCoordinator builds the coordinator over nodes in priority order. reg
// may be nil.
func NewCoordinator(cfg ColdConfig, nodes []ColdNode, log *zap.Logger, reg prometheus.Registerer, opts ...ColdOption) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cold config: %w", err)
	}
	if err := checkNodes(nodes); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	m, err := newColdMetrics(reg)
	if err != nil {
		return nil, err
	}
	c := &Coordinator{
		cfg: cfg, log: log, nodes: slices.Clone(nodes), isLeader: func() bool { return true }, m: m,
		phase: PhaseIdle, status: map[string]NodeStatus{}, health: map[string]health.State{},
		kick: make(chan struct{}, 1), events: event.Discard{},
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// SetNodes replaces the nodes (a configuration reload), after any move in
// progress has ended. The node that holds the resource group cannot be
// removed: move its group first.
func (c *Coordinator) SetNodes(nodes []ColdNode) error {
	if err := checkNodes(nodes); err != nil {
		return err
	}
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.holder != "" && !slices.ContainsFunc(nodes, func(n ColdNode) bool { return n.Name == c.holder }) {
		return fmt.Errorf("cold node %q holds the resource group and cannot be removed: %w", c.holder, ErrInvalidBackends)
	}
	c.nodes = slices.Clone(nodes)
	for name := range c.status {
		if !slices.ContainsFunc(nodes, func(n ColdNode) bool { return n.Name == name }) {
			delete(c.status, name)
		}
	}
	return nil
}

// checkNodes rejects nodes without an agent and duplicate or empty names.
func checkNodes(nodes []ColdNode) error {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
		if n.Agent == nil {
			return fmt.Errorf("cold node %q: no agent: %w", n.Name, ErrInvalidBackends)
		}
	}
	return checkNames(names)
}

// nodeList is the current nodes; the slice is never modified afterwards.
func (c *Coordinator) nodeList() []ColdNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes
}

func (c *Coordinator) node(name string) (ColdNode, bool) {
	for _, n := range c.nodeList() {
		if n.Name == name {
			return n, true
		}
	}
	return ColdNode{}, false
}

// Status returns a snapshot.
func (c *Coordinator) Status() ColdStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := ColdStatus{Enabled: true, Leader: c.isLeader(), Holder: c.holder, Phase: c.phase, Blocked: c.blocked}
	for _, n := range c.nodes {
		ns, ok := c.status[n.Name]
		if !ok {
			ns = NodeStatus{Name: n.Name}
		}
		ns.Health = c.health[n.Name].String()
		st.Nodes = append(st.Nodes, ns)
	}
	if c.last != nil {
		l := *c.last
		st.Last = &l
	}
	return st
}

func (c *Coordinator) setPhase(p string) {
	c.mu.Lock()
	c.phase = p
	c.mu.Unlock()
}

func (c *Coordinator) setBlocked(why string) {
	c.mu.Lock()
	was := c.blocked
	c.blocked = why
	if why != "" {
		c.phase = PhaseBlocked
	}
	c.mu.Unlock()
	if why != "" && why != was {
		c.log.Error("cold standby: automatic promotion blocked", zap.String("reason", why))
		c.record("", "automatic promotion blocked: "+why, true)
	}
	if why == "" {
		c.m.blocked.Set(0)
	} else {
		c.m.blocked.Set(1)
	}
}

// Holder is the node that holds (or is being given) the resource group.
func (c *Coordinator) Holder() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holder
}

// Run follows health (the WithColdHealth source) and polls the agents until
// ctx ends.
func (c *Coordinator) Run(ctx context.Context) error {
	if c.src == nil {
		return errNoHealth
	}
	type trigger struct {
		from   string
		at     time.Time
		reason string
	}
	trig := make(chan trigger, 16)
	changes := c.src.Subscribe(ctx)
	// Health is followed on its own goroutine: a move in progress waits
	// for the new backend to come up.
	go func() {
		for ch := range changes {
			c.mu.Lock()
			prev := c.health[ch.Name]
			to := ch.To
			if ch.Removed {
				to = health.StateDown
			}
			c.health[ch.Name] = to
			holder := c.holder
			c.mu.Unlock()
			if ch.Name == holder && prev.Routable() && !to.Routable() {
				c.log.Warn("cold standby: the backend holding the resource group is down", zap.String("backend", holder), zap.String("reason", ch.Reason))
				select {
				case trig <- trigger{holder, ch.At, "backend down: " + ch.Reason}:
				default:
				}
			}
		}
	}()
	c.poll(ctx)
	t := time.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case tr := <-trig:
			c.failover(ctx, tr.from, tr.at, tr.reason)
		case <-t.C:
			c.poll(ctx)
		case <-c.kick:
			c.poll(ctx)
		}
	}
}

// poll reads every agent's status, learns the holder and starts the
// group on a failed holder's standby or, at first, on the first node.
func (c *Coordinator) poll(ctx context.Context) {
	sts := c.readAll(ctx)
	c.mu.Lock()
	holder := c.holder
	phase := c.phase
	holderUp := c.health[holder].Routable()
	c.mu.Unlock()
	if phase != PhaseIdle && phase != PhaseBlocked {
		return
	}
	// Learn the holder from the agents: the node that is Primary or whose
	// group is (being) started.
	var holders []string
	all := true
	for _, n := range c.nodeList() {
		ns := sts[n.Name]
		if !ns.Reachable {
			all = false
			continue
		}
		if holds(ns.Agent) {
			holders = append(holders, n.Name)
		}
	}
	if len(holders) > 0 && !slices.Contains(holders, holder) {
		c.mu.Lock()
		c.holder = holders[0]
		c.mu.Unlock()
		c.log.Info("cold standby: resource group found", zap.String("holder", holders[0]))
		c.record(holders[0], "resource group found on "+holders[0], false)
		holder = holders[0]
	}
	if len(holders) > 1 {
		c.log.Error("cold standby: more than one node holds the resource group", zap.Strings("nodes", holders))
	}
	c.mu.Lock()
	if c.missed.from != holder || c.health[holder].Routable() {
		c.missed = missedDown{} // the group moved or its holder came back: that loss is over
	}
	c.mu.Unlock()
	if !c.isLeader() {
		return
	}
	if ns, ok := sts[holder]; ok && ns.Reachable && ns.Agent.State == storage.StateFailed && phase != PhaseBlocked {
		c.failover(ctx, holder, time.Now(), "agent reports the group failed: "+ns.Agent.LastError)
		return
	}
	// A blocked failover is retried now and then: an operator may have
	// cleared the split brain or repaired the fencing device.
	if phase == PhaseBlocked && holder != "" && !holderUp && time.Since(c.lastTry()) >= retryBlocked {
		c.failover(ctx, holder, time.Now(), "retry after: "+c.Status().Blocked)
		return
	}
	if md, ok := c.missedFailover(holder, phase, sts); ok {
		c.failover(ctx, md.from, md.at, "retry as leader: "+md.reason)
		return
	}
	if holder == "" && len(holders) == 0 && all && c.cfg.InitialStart &&
		(phase != PhaseBlocked || time.Since(c.lastTry()) >= retryBlocked) {
		c.initialStart(ctx, sts)
	}
}

// missedFailover is the holder's loss to act on now that this proxy leads:
// it saw the holder go down as a follower, the holder is still the one the
// agents report and still down in health (not unknown, not back up), and
// no agent is stopping or starting the group, which would be the former
// leader's move still under way. A group that move already started is no
// match either: the agents report it on the new node, which became the
// holder, even before health sees it up.
func (c *Coordinator) missedFailover(holder, phase string, sts map[string]NodeStatus) (missedDown, bool) {
	if phase != PhaseIdle || holder == "" {
		return missedDown{}, false
	}
	for _, ns := range sts {
		if ns.Reachable && (ns.Agent.State == storage.StateStopping || ns.Agent.State == storage.StateStarting) {
			return missedDown{}, false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	md := c.missed
	return md, md.from == holder && c.health[holder] == health.StateDown
}

// holds: the node is Primary or its group is (being) started or stopped.
// A failed group on a Secondary holds nothing.
func holds(s storage.Status) bool {
	switch s.State {
	case storage.StateStarted, storage.StateStarting, storage.StateStopping:
		return true
	}
	return s.DRBDRole == storage.RolePrimary
}

func (c *Coordinator) readAll(ctx context.Context) map[string]NodeStatus {
	nodes := c.nodeList()
	out := make(map[string]NodeStatus, len(nodes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := c.read(ctx, n)
			mu.Lock()
			out[n.Name] = ns
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// read fetches one agent's status and records it.
func (c *Coordinator) read(ctx context.Context, n ColdNode) NodeStatus {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	st, err := n.Agent.Status(rctx)
	ns := NodeStatus{Name: n.Name, Reachable: err == nil, Agent: st, CheckedAt: time.Now()}
	if err != nil {
		ns.Error = err.Error()
		c.mu.Lock()
		ns.Agent = c.status[n.Name].Agent // keep the last known state for display
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.status[n.Name] = ns
	c.mu.Unlock()
	if err == nil && st.SplitBrain {
		c.m.splitBrain.WithLabelValues(n.Name).Set(1)
	} else if err == nil {
		c.m.splitBrain.WithLabelValues(n.Name).Set(0)
	}
	return ns
}

func (c *Coordinator) initialStart(ctx context.Context, sts map[string]NodeStatus) {
	if !c.op.TryLock() {
		return
	}
	defer c.op.Unlock()
	c.mu.Lock()
	c.tried = time.Now()
	nodes := c.nodes
	c.mu.Unlock()
	for _, n := range nodes {
		ns := sts[n.Name]
		if why := unfit(ns); why != "" {
			c.log.Warn("cold standby: initial start: node unfit", zap.String("node", n.Name), zap.String("why", why))
			continue
		}
		rep := &MoveReport{To: n.Name, Reason: "initial start", DownAt: time.Now()}
		c.mu.Lock()
		c.holder = n.Name
		c.mu.Unlock()
		c.start(ctx, n, rep, nil)
		return
	}
	c.setBlocked("initial start: no node can take the group (see nodes)")
}

// unfit says why a node cannot take the group, or "".
func unfit(ns NodeStatus) string {
	switch {
	case !ns.Reachable:
		return "agent unreachable: " + ns.Error
	case ns.Agent.SplitBrain:
		return "DRBD split brain: " + ns.Agent.SplitBrainReason
	case ns.Agent.Disk != storage.DiskUpToDate:
		return "disk " + ns.Agent.Disk
	}
	return ""
}

// candidate is the first fit node other than from, after it in order
// (wrapping), so two nodes alternate.
func (c *Coordinator) candidate(ctx context.Context, from string) (ColdNode, NodeStatus, error) {
	nodes := c.nodeList()
	i := slices.IndexFunc(nodes, func(n ColdNode) bool { return n.Name == from })
	var whys []error
	for k := 1; k <= len(nodes); k++ {
		n := nodes[(i+k+len(nodes))%len(nodes)]
		if n.Name == from {
			continue
		}
		ns := c.read(ctx, n)
		if why := unfit(ns); why != "" {
			whys = append(whys, fmt.Errorf("%s: %s", n.Name, why))
			continue
		}
		return n, ns, nil
	}
	return ColdNode{}, NodeStatus{}, fmt.Errorf("%w: %w", ErrNoCandidate, errors.Join(whys...))
}

// failover moves the group off a holder that failed.
func (c *Coordinator) failover(ctx context.Context, from string, downAt time.Time, reason string) {
	if !c.isLeader() {
		c.log.Info("cold standby: not the leader; leaving the failover to it", zap.String("backend", from))
		c.mu.Lock()
		c.missed = missedDown{from: from, at: downAt, reason: reason}
		c.mu.Unlock()
		return
	}
	c.op.Lock()
	defer c.op.Unlock()
	c.mu.Lock()
	c.missed = missedDown{} // acted on now (or the group has moved): poll does not retry it
	c.mu.Unlock()
	if c.Holder() != from {
		return // already moved
	}
	_ = c.move(ctx, from, "", &MoveReport{From: from, Reason: reason, DownAt: downAt}, true)
}

// Switchover moves the group gracefully (Heartbeat's hb_standby and
// hb_takeover): to names the node to take it ("" means the next one). The
// old node must stop cleanly; it is never fenced. It returns when the new
// node is up (or the move failed).
func (c *Coordinator) Switchover(ctx context.Context, to string) (MoveReport, error) {
	if !c.isLeader() {
		return MoveReport{}, ErrNotLeader
	}
	if to != "" {
		if _, ok := c.node(to); !ok {
			return MoveReport{}, fmt.Errorf("%w: %q", ErrUnknownNode, to)
		}
	}
	if !c.op.TryLock() {
		return MoveReport{}, ErrBusy
	}
	defer c.op.Unlock()
	from := c.Holder()
	if to != "" && to == from {
		return MoveReport{From: from, To: to, Manual: true, Reason: "already there"}, nil
	}
	rep := &MoveReport{From: from, To: to, Manual: true, Reason: "operator switchover", DownAt: time.Now()}
	err := c.move(ctx, from, to, rep, false)
	return *rep, err
}

// move stops (or, when allowed, fences) from, then starts to (or the next
// candidate). The order is the safety property: the new node is never
// started before the old one is stopped or fenced.
func (c *Coordinator) move(ctx context.Context, from, to string, rep *MoveReport, mayFence bool) (err error) {
	defer func() {
		if err != nil {
			rep.Error = err.Error()
			c.m.moves.WithLabelValues("failed").Inc()
		}
		c.mu.Lock()
		c.last = rep
		c.mu.Unlock()
		c.kickPoll()
	}()
	c.mu.Lock()
	c.tried = time.Now()
	c.mu.Unlock()
	var target ColdNode
	var tst NodeStatus
	if to == "" {
		target, tst, err = c.candidate(ctx, from)
		if err != nil {
			c.setBlocked(err.Error())
			return err
		}
	} else {
		target, _ = c.node(to)
		tst = c.read(ctx, target)
		if why := unfit(tst); why != "" {
			err = fmt.Errorf("%w: %s: %s", ErrNoCandidate, to, why)
			c.setBlocked(err.Error())
			return err
		}
	}
	rep.To = target.Name
	log := c.log.With(zap.String("from", from), zap.String("to", target.Name), zap.Bool("manual", rep.Manual))
	log.Warn("cold standby: moving the resource group", zap.String("reason", rep.Reason))
	c.record(target.Name, "moving the resource group from "+orNone(from)+" to "+target.Name+": "+rep.Reason, true)

	// down is what the new node's agent is told about from, so that it
	// does not fence it a second time (nil: from neither stopped nor
	// fenced, or no from: the agent decides alone).
	var down *storage.PeerDown
	if from != "" {
		old, _ := c.node(from)
		c.setPhase(PhaseStopping)
		stopped, serr := c.stop(ctx, old)
		if stopped {
			down = &storage.PeerDown{Node: from, How: storage.PeerStopped}
		} else {
			if !mayFence {
				err = fmt.Errorf("stop %s: %w", from, serr)
				c.setPhase(PhaseIdle)
				c.record(from, "move stopped: "+err.Error(), true)
				return err
			}
			log.Warn("cold standby: old node not stopped cleanly: fencing it", zap.Error(serr))
			c.setPhase(PhaseFencing)
			if ferr := c.fence(ctx, old, target); ferr != nil {
				err = fmt.Errorf("%s not stopped (%v) and fencing failed: %w", from, serr, ferr)
				c.setBlocked(err.Error())
				c.m.fences.WithLabelValues("failed").Inc()
				return err
			}
			c.m.fences.WithLabelValues("ok").Inc()
			down = fencedHow(old)
			rep.Fenced = true
			log.Warn("cold standby: old node fenced")
			c.record(from, from+" fenced (it did not stop cleanly)", true)
		}
		rep.StoppedAt = time.Now()
	}
	c.mu.Lock()
	c.holder = target.Name
	c.mu.Unlock()
	if err = c.start(ctx, target, rep, down); err != nil {
		return err
	}
	c.m.moves.WithLabelValues("ok").Inc()
	return nil
}

// stop asks the old node's agent to stop its group. It reports true only
// when the agent answered that the group stopped and DRBD is Secondary.
func (c *Coordinator) stop(ctx context.Context, n ColdNode) (bool, error) {
	sctx, cancel := context.WithTimeout(ctx, c.cfg.StopTimeout)
	defer cancel()
	res, err := n.Agent.Stop(sctx)
	if err != nil {
		return false, err
	}
	if res.Status.State != storage.StateStopped || res.Status.DRBDRole == storage.RolePrimary {
		return false, fmt.Errorf("agent %s after stop: state %s, DRBD %s", n.Name, res.Status.State, res.Status.DRBDRole)
	}
	return true, nil
}

// fence makes sure old cannot write any more: its own fencer, or waiting
// until the target's DRBD shows it disconnected.
func (c *Coordinator) fence(ctx context.Context, old, target ColdNode) error {
	f := old.Fence
	if f == nil {
		f = storage.PeerDisconnectFencer{
			State: func(ctx context.Context) (storage.DRBDState, error) {
				st, err := target.Agent.Status(ctx)
				return st.DRBD, err
			},
			Timeout:     old.FenceTimeout,
			SafetyDelay: old.SafetyDelay,
		}
	}
	return f.Fence(ctx)
}

// fencedHow is what the new node's agent is told after fence(old)
// succeeded: a fence command counts as fenced; the default disconnection
// wait says so, with its safety delay, so an agent with a longer one (or
// with a fence command of its own) still does its part.
func fencedHow(old ColdNode) *storage.PeerDown {
	if old.Fence != nil {
		return &storage.PeerDown{Node: old.Name, How: storage.PeerFenced}
	}
	return &storage.PeerDown{Node: old.Name, How: storage.PeerDisconnected, SafetyDelay: old.SafetyDelay}
}

// start asks target's agent to start the group, telling it what was done
// to the old holder (down, nil when nothing), and waits until health marks
// the backend up.
func (c *Coordinator) start(ctx context.Context, target ColdNode, rep *MoveReport, down *storage.PeerDown) error {
	c.setPhase(PhaseStarting)
	rep.StartAt = time.Now()
	sctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	res, err := target.Agent.Start(sctx, storage.StartOptions{PeerDown: down})
	cancel()
	if err != nil {
		err = fmt.Errorf("start %s: %w", target.Name, err)
		if errors.Is(err, storage.ErrSplitBrain) || errors.Is(err, storage.ErrFenceFailed) || errors.Is(err, storage.ErrPeerPrimary) {
			c.setBlocked(err.Error())
		} else {
			c.setPhase(PhaseIdle)
			c.log.Error("cold standby: group start failed", zap.String("node", target.Name), zap.Error(err))
			c.record(target.Name, "group start failed: "+err.Error(), true)
		}
		return err
	}
	rep.StartedAt = time.Now()
	for _, s := range res.Report.Steps {
		rep.ServiceReady += s.ReadyAfter
	}
	rep.Overhead = rep.StartedAt.Sub(rep.DownAt) - rep.ServiceReady
	c.m.moveSeconds.Observe(rep.StartedAt.Sub(rep.DownAt).Seconds())
	c.m.overheadSeconds.Observe(rep.Overhead.Seconds())
	c.setBlocked("")
	c.setPhase(PhaseWaitUp)
	c.log.Info("cold standby: resource group started", zap.String("node", target.Name),
		zap.Duration("since_down", rep.StartedAt.Sub(rep.DownAt)), zap.Duration("service_ready", rep.ServiceReady), zap.Duration("overhead", rep.Overhead))
	c.record(target.Name, fmt.Sprintf("resource group started on %s in %v (%s)", target.Name,
		rep.StartedAt.Sub(rep.DownAt).Round(time.Millisecond), rep.Reason), false)
	deadline := time.Now().Add(c.cfg.UpTimeout)
	for {
		c.mu.Lock()
		up := c.health[target.Name].Routable()
		c.mu.Unlock()
		if up {
			rep.UpAt = time.Now()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.log.Error("cold standby: started backend not up in health", zap.String("node", target.Name), zap.Duration("up_timeout", c.cfg.UpTimeout))
			c.record(target.Name, "started but not up in health within "+c.cfg.UpTimeout.String(), true)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.setPhase(PhaseIdle)
	return nil
}

// record reports one cold standby event about node.
func (c *Coordinator) record(node, text string, warn bool) {
	c.events.Record(event.Event{At: time.Now(), Kind: event.Cold, Subject: node, Text: text, Warn: warn})
}

func (c *Coordinator) kickPoll() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

type coldMetrics struct {
	moves           *prometheus.CounterVec
	fences          *prometheus.CounterVec
	blocked         prometheus.Gauge
	splitBrain      *prometheus.GaugeVec
	moveSeconds     prometheus.Histogram
	overheadSeconds prometheus.Histogram
}

func newColdMetrics(reg prometheus.Registerer) (*coldMetrics, error) {
	buckets := []float64{.1, .25, .5, 1, 2, 5, 10, 30, 60, 120}
	m := &coldMetrics{
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_failover_cold_moves_total", Help: "Resource group moves (failovers and switchovers), by result ok|failed.",
		}, []string{"result"}),
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_failover_cold_fences_total", Help: "Fencings of a node whose agent could not stop its group, by result ok|failed.",
		}, []string{"result"}),
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_failover_cold_blocked", Help: "1 while automatic promotion is blocked (split brain, failed fencing, no candidate).",
		}),
		splitBrain: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hapbx_failover_cold_split_brain", Help: "1 while a node's agent reports an uncleared DRBD split brain.",
		}, []string{"node"}),
		moveSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hapbx_failover_cold_move_seconds", Help: "From backend down (or operator request) to the group started on the new node.", Buckets: buckets,
		}),
		overheadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hapbx_failover_cold_overhead_seconds", Help: "hapbx's own share of a move: move time minus the service's own start-to-ready time.", Buckets: buckets,
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.moves, m.fences, m.blocked, m.splitBrain, m.moveSeconds, m.overheadSeconds} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}
