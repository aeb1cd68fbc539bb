package cluster

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/event"
)

// Cluster is one node: memberlist membership and state gossip, a raft voter, and (for a
// proxy) the VIP it holds while it is the leader with a fresh quorum lease. Each concern
// keeps its state in its own part, declared in its file.
type Cluster struct {
	cfg    Config
	role   Role
	log    *zap.Logger
	m      *metrics
	events event.Sink // see WithEvents

	mem   membership // membership.go
	lead  leadership // leadership.go: raft and the quorum lease
	hold  vipHolding // leadership.go: the VIP on our interface
	state channels   // state.go
	kv    published  // publish.go

	runCtx  context.Context // set in start, before memberlist runs
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	closed  atomic.Bool
}

// Option configures New.
type Option func(*options)

type options struct {
	svc    ServiceInfo
	events event.Sink
}

// WithEvents reports this node's VIP additions and removals, raft leader
// changes and members joining or lost to sink, for the status page's last
// events.
func WithEvents(sink event.Sink) Option {
	return func(o *options) { o.events = sink }
}

// New checks cfg and prepares a node of the given role; nothing listens until Run.
// reg may be nil (no metrics exported). RoleService needs WithServiceInfo.
func New(cfg Config, role Role, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Cluster, error) {
	o := options{events: event.Discard{}}
	for _, fn := range opts {
		fn(&o)
	}
	svc := o.svc
	err := cfg.validate(role)
	if err == nil && role == RoleService {
		err = checkServiceInfo(svc)
	}
	if err != nil {
		return nil, err
	}
	kr, err := LoadKeyring(cfg.SecretFile)
	if err != nil {
		return nil, err
	}
	log = log.With(zap.String("node", cfg.Name), zap.Stringer("role", role))
	var m *metrics
	if role == RoleService {
		// A service member has no quorum, leader or VIP: a constant 0 would read as an outage.
		m = newMetrics(nil)
		if reg != nil {
			reg.MustRegister(m.members)
		}
	} else {
		m = newMetrics(reg)
	}
	c := &Cluster{cfg: cfg, role: role, log: log, m: m, events: o.events,
		mem: membership{keyring: kr, service: svc, metaWake: make(chan struct{}, 1),
			nodes: map[string]memberlist.Node{}, states: map[string]string{}, upAt: map[string]time.Time{}},
		lead:  leadership{wake: make(chan struct{}, 1)},
		state: channels{chans: map[string]*channel{}, outboxes: map[string]*outbox{}},
		kv:    published{fsm: newKVFSM(), republish: map[string]func() []byte{}}}
	c.lead.pingOK.Store(true)
	if role == RoleProxy {
		if c.hold.vip, err = newVIP(cfg.VIP, log, c.m); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Run runs the node until ctx ends, then closes it (see close). A node that
// cannot start returns the reason.
func (c *Cluster) Run(ctx context.Context) error {
	// The background work runs on until close: close releases the VIP and
	// hands leadership over while the loops still run.
	if err := c.start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	<-ctx.Done()
	return c.close()
}

// start removes a stale VIP, opens the raft stores, bootstraps the static voter set if
// the data dir is new, starts raft and memberlist and keeps joining the peers in the
// background. It returns once the node is listening (after waiting one
// heartbeat_timeout first, see the timing argument in leadership.go); ctx ends the background work as close does.
func (c *Cluster) start(ctx context.Context) (err error) {
	if c.started {
		return errors.New("cluster: started twice")
	}
	c.started = true
	defer func() {
		if err != nil {
			c.shutdown()
		}
	}()
	if c.role == RoleService {
		return c.startService(ctx)
	}
	if c.hold.vip != nil {
		// A crash may have left the VIP behind; we must not answer for it before raft
		// says so.
		if held, herr := c.hold.vip.Held(); herr != nil {
			return herr
		} else if held {
			c.log.Warn("stale VIP found at start, removing it")
		}
		if err := c.hold.vip.Release(); err != nil {
			return err
		}
	}
	if len(c.cfg.PingTargets) > 0 && c.role == RoleProxy {
		c.lead.pingOK.Store(reachable(ctx, c.cfg.PingTargets, c.cfg.PingTimeout))
	}
	ctx, c.cancel = context.WithCancel(ctx)
	c.runCtx = ctx
	// Silence for one heartbeat timeout: a restarted voter forgot whom it followed (see
	// the timing argument in leadership.go).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(c.cfg.Timing.HeartbeatTimeout):
	}
	if err := c.startRaft(); err != nil {
		return err
	}
	if err := c.startMemberlist(); err != nil {
		return err
	}
	c.wg.Add(6)
	go c.joinLoop(ctx)
	go c.leaderLoop(ctx)
	go c.electionWatch(ctx)
	go c.warmConns(ctx)
	go c.observe(ctx)
	go c.metaLoop(ctx)
	if len(c.cfg.PingTargets) > 0 && c.role == RoleProxy {
		c.wg.Add(1)
		go c.pingLoop(ctx)
	}
	c.log.Info("cluster started", zap.String("gossip", c.advertise()), zap.String("raft", c.cfg.self().Raft),
		zap.Int("priority", c.cfg.Priority), zap.Bool("failback", c.cfg.Failback))
	return nil
}

func (c *Cluster) advertise() string {
	if c.cfg.Advertise != "" {
		return c.cfg.Advertise
	}
	if c.role == RoleService {
		return "" // memberlist takes bind's address (or a private one for 0.0.0.0)
	}
	return c.cfg.self().Gossip
}

// Status is a snapshot of the node's view, for `hapbx status`.
type Status struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	RaftState string `json:"raft_state"`
	// Leader is the raft leader. It is not necessarily the VIP holder: a leader whose
	// lease lapsed, that lost its ping targets or that hands over does not hold it, and
	// a witness never does. See VIPHolders.
	Leader string `json:"leader"`
	Term   string `json:"term"`
	VIP    string `json:"vip,omitempty"`
	// VIPHeld: this node has the VIP on its interface.
	VIPHeld bool `json:"vip_held"`
	// VIPHolders: the alive members that announce having the VIP on their interface
	// (this node from its own state), sorted: normally one, none while it moves, two
	// only if a removal failed (logged on that node).
	VIPHolders []string `json:"vip_holders"`
	Quorum     bool     `json:"quorum"`
	PingOK     bool     `json:"ping_ok"`
	Priority   int      `json:"priority"`
	Failback   bool     `json:"failback"`
	Members    []Member `json:"members"`
	// LastContact is raft's time since a follower last heard the leader ("0" on the leader).
	LastContact string `json:"last_contact"`
}

// Status returns the node's view; marshal it with encoding/json.
func (c *Cluster) Status() Status {
	s := Status{Name: c.cfg.Name, Role: c.role.String(), VIPHeld: c.hold.holding.Load(), Quorum: c.lead.quorum.Load(),
		PingOK: c.lead.pingOK.Load(), Priority: c.cfg.Priority, Failback: c.cfg.Failback, Members: c.Members()}
	if c.hold.vip != nil {
		s.VIP = c.cfg.VIP.Address
	}
	s.VIPHolders = []string{}
	for _, m := range s.Members {
		if m.VIPHeld && (m.State == "alive" || m.Name == c.cfg.Name) {
			s.VIPHolders = append(s.VIPHolders, m.Name)
		}
	}
	if c.lead.r != nil {
		s.RaftState = c.lead.r.State().String()
		_, id := c.lead.r.LeaderWithID()
		s.Leader = string(id)
		st := c.lead.r.Stats()
		s.Term = st["term"]
		s.LastContact = st["last_contact"]
	}
	return s
}

// close releases the VIP (no Acquire can follow, whatever the leader loop is doing),
// hands leadership over if this node leads (so the peer takes over at once rather than
// after the timeouts) and stops everything. If the VIP cannot be removed there is no
// hand-over: it would make the peer a second holder at once.
func (c *Cluster) close() error {
	if c.closed.Swap(true) {
		return nil
	}
	released := c.stopVIP()
	if c.lead.r != nil && c.lead.r.State() == raft.Leader {
		if released {
			c.lead.transferring.Store(true)
			if err := c.lead.r.LeadershipTransfer().Error(); err != nil {
				c.log.Info("no leadership hand-over on close", zap.Error(err))
			}
		} else {
			c.log.Error("no leadership hand-over on close: the VIP is still on our interface")
		}
	}
	c.shutdown()
	return nil
}

func (c *Cluster) shutdown() {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
	if c.hold.vip != nil {
		c.hold.mu.Lock()
		c.hold.stopped = true
		// Unconditional, whatever holding says: the last chance before the process exits.
		if err := c.hold.vip.Release(); err != nil {
			c.log.Error("VIP not removed on shutdown", zap.Error(err))
		} else {
			c.hold.holding.Store(false)
		}
		c.hold.mu.Unlock()
	}
	if c.lead.r != nil {
		if err := c.lead.r.Shutdown().Error(); err != nil {
			c.log.Warn("raft shutdown", zap.Error(err))
		}
	}
	if c.mem.ml.Load() != nil {
		_ = c.mem.ml.Load().Leave(500 * time.Millisecond)
		_ = c.mem.ml.Load().Shutdown()
	}
	if c.lead.trans != nil {
		_ = c.lead.trans.Close()
	}
	if c.lead.store != nil {
		_ = c.lead.store.Close()
	}
	c.log.Info("cluster stopped")
}
