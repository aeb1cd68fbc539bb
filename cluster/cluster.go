package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Cluster is one node: memberlist membership and state gossip, a raft voter, and (for a
// proxy) the VIP it holds while it is the leader with a fresh quorum lease.
type Cluster struct {
	cfg  Config
	role Role
	log  *zap.Logger
	m    *metrics
	vip  vipAddr // nil on a witness and an agent; changed only under vipMu
	pub  *VIP    // what VIP() hands out; the same object as vip outside tests
	fsm  *kvFSM

	keyring *memberlist.Keyring
	agent   AgentInfo // RoleAgent: what the metadata announces
	ml      atomic.Pointer[memberlist.Memberlist]
	r       *raft.Raft
	trans   *raft.NetworkTransport
	store   *raftboltdb.BoltStore

	chMu  sync.RWMutex
	chans map[string]*channel

	pingOK atomic.Bool
	// vipMu serialises every change of the VIP (leader loop, Close, shutdown): one
	// Acquire or Release at a time, and none after Close decided to let go.
	vipMu sync.Mutex
	// holding: the VIP is on our interface as far as we know (written under vipMu). A
	// failed Release leaves it true: the address is still there.
	holding      atomic.Bool
	vipStopped   bool      // under vipMu: Close began, Acquire is refused
	lastVIPErr   time.Time // under vipMu
	releaseFails int       // under vipMu: failed Release attempts in the current streak
	holdGen      atomic.Uint64
	quorum       atomic.Bool
	transferring atomic.Bool
	lastAck      atomic.Int64 // unix nanos when the newest successful VerifyLeader was issued
	inflight     atomic.Int32
	alive        atomic.Int64 // members alive, self included (from memberlist events)
	wake         chan struct{}
	metaWake     chan struct{} // asks metaLoop to re-announce our node metadata

	repMu     sync.Mutex
	republish map[string]func() []byte // RepublishOnTakeover

	subMu sync.Mutex
	subs  []chan bool

	// Copies of memberlist's nodes taken in its event callbacks: the *Node pointers
	// memberlist.Members returns are mutated by memberlist without a lock we can take.
	memMu  sync.RWMutex
	nodes  map[string]memberlist.Node
	states map[string]string
	upAt   map[string]time.Time // when a member last became alive

	obMu     sync.Mutex
	outboxes map[string]*outbox
	runCtx   context.Context // set in Start, before memberlist runs

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	closed  atomic.Bool
}

// nodeMeta is gossiped with each member (memberlist limits it to 512 bytes).
type nodeMeta struct {
	Role     string `json:"r"`
	Priority int    `json:"p"`
	PingOK   bool   `json:"ok"`
	// State: the node has registered state channels; others send it records only then
	// (a witness usually has none and is spared the full pushes).
	State bool `json:"s,omitempty"`
	// Backend and API: set by an agent (role "agent"): the backend it serves and the
	// URL of its control API.
	Backend string `json:"b,omitempty"`
	API     string `json:"api,omitempty"`
	// VIP: the node has the VIP on its interface (a proxy; set from the same state as
	// its IsLeader, re-announced on every change).
	VIP bool `json:"v,omitempty"`
}

// Member is a memberlist member as seen by this node.
type Member struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Role     string `json:"role"`
	Priority int    `json:"priority"`
	PingOK   bool   `json:"ping_ok"`
	State    string `json:"state"`
	// Backend and API are set for agents (Role "agent").
	Backend string `json:"backend,omitempty"`
	API     string `json:"api,omitempty"`
	// VIPHeld: the member announces it has the VIP on its interface (for this node
	// itself: its own current state, not the gossiped one).
	VIPHeld bool `json:"vip_held"`
}

// vipAddr is what the Cluster needs of its VIP (*VIP); a test substitutes a fake to
// inject failures.
type vipAddr interface {
	Acquire() error
	Release() error
	Held() (bool, error)
}

// New checks cfg and prepares a node of the given role; nothing listens until Start.
// reg may be nil (no metrics exported). RoleAgent needs WithAgentInfo.
func New(cfg Config, role Role, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Cluster, error) {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	err := cfg.validate(role)
	if err == nil && role == RoleAgent {
		err = checkAgentInfo(o.agent)
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
	if role == RoleAgent {
		// An agent has no quorum, leader or VIP: a constant 0 would read as an outage.
		m = newMetrics(nil)
		if reg != nil {
			reg.MustRegister(m.members)
		}
	} else {
		m = newMetrics(reg)
	}
	c := &Cluster{cfg: cfg, role: role, log: log, m: m, fsm: newKVFSM(), keyring: kr, agent: o.agent,
		chans: map[string]*channel{}, wake: make(chan struct{}, 1), metaWake: make(chan struct{}, 1), republish: map[string]func() []byte{},
		outboxes: map[string]*outbox{}, nodes: map[string]memberlist.Node{}, states: map[string]string{}, upAt: map[string]time.Time{}}
	if role == RoleProxy {
		c.pub, err = newVIP(cfg.VIP, log, c.m)
		if err != nil {
			return nil, err
		}
		c.vip = c.pub
	}
	c.pingOK.Store(true)
	return c, nil
}

// VIP returns the node's VIP manager (nil on a witness).
func (c *Cluster) VIP() *VIP { return c.pub }

// Start removes a stale VIP, opens the raft stores, bootstraps the static voter set if
// the data dir is new, starts raft and memberlist and keeps joining the peers in the
// background. It returns once the node is listening (after waiting one
// heartbeat_timeout first, see doc.go); ctx ends the background work as Close does.
func (c *Cluster) Start(ctx context.Context) (err error) {
	if c.started {
		return errors.New("cluster: Start called twice")
	}
	c.started = true
	defer func() {
		if err != nil {
			c.shutdown()
		}
	}()
	if c.role == RoleAgent {
		return c.startAgent(ctx)
	}
	if c.vip != nil {
		// A crash may have left the VIP behind; we must not answer for it before raft
		// says so.
		if held, herr := c.vip.Held(); herr != nil {
			return herr
		} else if held {
			c.log.Warn("stale VIP found at start, removing it")
		}
		if err := c.vip.Release(); err != nil {
			return err
		}
	}
	if len(c.cfg.PingTargets) > 0 && c.role == RoleProxy {
		c.pingOK.Store(reachable(ctx, c.cfg.PingTargets, c.cfg.PingTimeout))
	}
	ctx, c.cancel = context.WithCancel(ctx)
	c.runCtx = ctx
	// A voter forgets in memory whom it follows when it restarts, and would grant a vote
	// at once. Staying silent for one heartbeat timeout keeps the timing argument true
	// for a voter that restarts right after acknowledging the holder (doc.go).
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
	c.wg.Add(4)
	go c.joinLoop(ctx)
	go c.leaderLoop(ctx)
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
	if c.role == RoleAgent {
		return "" // memberlist takes bind's address (or a private one for 0.0.0.0)
	}
	return c.cfg.self().Gossip
}

func (c *Cluster) startRaft() error {
	bridge := logBridge{c.log.Named("raft")}
	if err := os.MkdirAll(c.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("cluster: data_dir %s: %w", c.cfg.DataDir, err)
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(c.cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("cluster: raft store in %s: %w", c.cfg.DataDir, err)
	}
	c.store = store
	snaps, err := raft.NewFileSnapshotStore(c.cfg.DataDir, 2, bridge)
	if err != nil {
		return fmt.Errorf("cluster: raft snapshots in %s: %w", c.cfg.DataDir, err)
	}
	self := c.cfg.self()
	adv, err := net.ResolveTCPAddr("tcp", self.Raft)
	if err != nil {
		return fmt.Errorf("cluster: peers[%s].raft %q: %w", self.Name, self.Raft, err)
	}
	bind := c.cfg.RaftBind
	if bind == "" {
		bind = net.JoinHostPort("0.0.0.0", strconv.Itoa(adv.Port))
	}
	// raft's TCP transport (as raft.NewTCPTransport builds it) over a stream layer that
	// authenticates peers with the gossip keys.
	stream, err := newAuthLayer(bind, adv, c.keyring.GetKeys(), c.keyring.GetPrimaryKey())
	if err != nil {
		return fmt.Errorf("cluster: raft transport on %s: %w", bind, err)
	}
	c.trans = raft.NewNetworkTransport(stream, 3, c.rpcTimeout(), bridge)
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.cfg.Name)
	rc.HeartbeatTimeout = c.cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = c.cfg.Timing.ElectionTimeout
	if c.role == RoleWitness {
		// A witness whose pre-vote was refused waits long before it tries again, so it
		// rarely collides with a proxy's election (split vote): it would only hand
		// leadership over anyway. Its first attempt still comes after H like everyone's.
		rc.ElectionTimeout *= 4
	}
	// raft's own lease only makes a leader step down; it is not what protects the VIP
	// (the VerifyLeader lease in leaderLoop is). Set to the maximum raft allows so a
	// leader whose acknowledgements are merely late (CPU starvation, a slow fsync on a
	// follower) does not step down and force a new election.
	rc.LeaderLeaseTimeout = c.cfg.Timing.HeartbeatTimeout
	rc.CommitTimeout = 20 * time.Millisecond
	rc.LogOutput = bridge
	rc.LogLevel = "INFO"
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("cluster: raft timing: %w", err)
	}
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("cluster: read raft state in %s: %w", c.cfg.DataDir, err)
	}
	if !has {
		var conf raft.Configuration
		for _, p := range c.cfg.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.Name), Address: raft.ServerAddress(p.Raft)})
		}
		if err := raft.BootstrapCluster(rc, store, store, snaps, c.trans, conf); err != nil {
			return fmt.Errorf("cluster: bootstrap raft in %s: %w", c.cfg.DataDir, err)
		}
		c.log.Info("raft bootstrapped with the static voter set", zap.Int("voters", len(conf.Servers)))
	}
	c.r, err = raft.NewRaft(rc, c.fsm, store, store, snaps, c.trans)
	if err != nil {
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	return nil
}

func (c *Cluster) startMemberlist() error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.cfg.Name
	host, port, _ := net.SplitHostPort(c.cfg.Bind)
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr = host
	mc.BindPort, _ = strconv.Atoi(port)
	ah, ap, _ := net.SplitHostPort(c.advertise())
	mc.AdvertiseAddr = ah
	mc.AdvertisePort, _ = strconv.Atoi(ap)
	mc.Keyring = c.keyring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.EnableCompression = false // LAN; LZW would dominate a 30 MB full sync
	t := c.cfg.Timing
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.SuspicionMult = t.SuspicionMult
	mc.GossipInterval = t.GossipInterval
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = 5 * time.Second
	mc.DeadNodeReclaimTime = time.Second // a restarted node may come back at once
	mc.Delegate = (*delegate)(c)
	mc.Events = (*events)(c)
	mc.LogOutput = logBridge{c.log.Named("memberlist")}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("cluster: memberlist on %s: %w", c.cfg.Bind, err)
	}
	c.ml.Store(ml)
	return nil
}

// joinLoop joins the configured peers with exponential backoff until one answers, then
// keeps re-joining peers memberlist has lost (after a long partition memberlist stops
// gossiping to dead members on its own).
func (c *Cluster) joinLoop(ctx context.Context) {
	defer c.wg.Done()
	backoff := 100 * time.Millisecond
	joined := false
	for {
		var missing []string
		alive := map[string]bool{}
		for _, m := range c.Members() {
			if m.State == "alive" {
				alive[m.Name] = true
				alive[m.Addr] = true // an agent may list voters by address only
			}
		}
		for _, p := range c.cfg.Peers {
			if p.Name != c.cfg.Name && !alive[p.Name] && !alive[p.Gossip] {
				missing = append(missing, p.Gossip)
			}
		}
		wait := backoff
		if len(missing) > 0 {
			n, err := c.ml.Load().Join(missing)
			switch {
			case n > 0:
				if !joined {
					c.log.Info("joined the cluster", zap.Int("answered", n), zap.Strings("tried", missing))
				}
				joined = true
				backoff = 100 * time.Millisecond
			case err != nil:
				if hint := joinHint(err); hint != "" {
					c.log.Error("cannot join the cluster", zap.Strings("peers", missing), zap.Error(err), zap.String("hint", hint))
				} else if !joined {
					c.log.Warn("join failed, retrying", zap.Strings("peers", missing), zap.Duration("backoff", backoff), zap.Error(err))
				} else {
					c.log.Debug("re-join failed", zap.Strings("peers", missing), zap.Error(err))
				}
				backoff = min(backoff*2, c.cfg.Timing.JoinRetryMax)
			}
		} else {
			backoff = 100 * time.Millisecond
			wait = c.cfg.Timing.JoinRetryMax
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// joinHint recognises a gossip key mismatch: the peer's TCP port answers but it drops
// the connection after failing to decrypt our state, or sends what we cannot decrypt.
func joinHint(err error) string {
	s := strings.ToLower(err.Error())
	switch {
	case isKeyMismatch(s):
		return ErrKeyMismatch.Error()
	case strings.Contains(s, "eof"), strings.Contains(s, "connection reset"):
		return "peer answered and then closed the connection: " + ErrKeyMismatch.Error()
	}
	return ""
}

// observe counts leader changes and logs them.
func (c *Cluster) observe(ctx context.Context) {
	defer c.wg.Done()
	ch := make(chan raft.Observation, 16)
	ob := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.r.RegisterObserver(ob)
	defer c.r.DeregisterObserver(ob)
	var last raft.ServerID
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-ch:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID != "" && lo.LeaderID != last {
				c.m.leaderChanges.Inc()
				c.log.Info("raft leader", zap.String("leader", string(lo.LeaderID)))
				last = lo.LeaderID
			}
			c.poke()
		}
	}
}

func (c *Cluster) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Cluster) leaseTick() time.Duration {
	return max(c.cfg.Timing.LeaderLease/4, 5*time.Millisecond)
}

// rpcTimeout bounds every raft RPC, heartbeats included (I/O deadline from the moment
// the request is sent). A VerifyLeader round can be satisfied by a heartbeat that was
// already in flight when the round was issued; the bound says how much earlier than the
// issue time that heartbeat can have reached the follower. See doc.go, timing argument:
// heartbeat_timeout - leader_lease - tick - rpcTimeout is the safety margin, kept at
// heartbeat_timeout/10.
func (c *Cluster) rpcTimeout() time.Duration {
	t := c.cfg.Timing
	return t.HeartbeatTimeout - t.LeaderLease - c.leaseTick() - t.HeartbeatTimeout/10
}

// leaderLoop decides, every tick and whenever raft's leadership changes, whether this
// node may hold the VIP: it must be a proxy, the raft leader, reach its ping targets,
// not be handing leadership over, and hold a quorum lease: a VerifyLeader round issued
// less than LeaderLease ago must have succeeded. The lease is checked here, outside the
// raft goroutine, so a stuck raft loop also drops the VIP.
func (c *Cluster) leaderLoop(ctx context.Context) {
	defer c.wg.Done()
	lease := c.cfg.Timing.LeaderLease
	tick := time.NewTicker(c.leaseTick())
	defer tick.Stop()
	leaderCh := c.r.LeaderCh()
	var lastTransfer time.Time
	for {
		// A wake (an acknowledged VerifyLeader, a finished transfer) only
		// re-evaluates the lease. Verifying on it too made every answer
		// start the next round at once: an idle leader spun at network round
		// trip speed, most of a core. Verifications go out on the tick (and
		// when leadership changes), which is what the lease is sized for.
		verify := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			verify = true
		case <-leaderCh:
			verify = true
		case <-c.wake:
		}
		isLeader := c.r.State() == raft.Leader
		c.m.isLeader.Set(b2f(isLeader))
		now := time.Now()
		if isLeader && verify && c.inflight.Load() < 4 {
			c.inflight.Add(1)
			issued := now
			go func() {
				defer c.inflight.Add(-1)
				if c.r.VerifyLeader().Error() == nil {
					for {
						old := c.lastAck.Load()
						if issued.UnixNano() <= old || c.lastAck.CompareAndSwap(old, issued.UnixNano()) {
							break
						}
					}
					c.poke()
				}
			}()
		}
		leaseOK := isLeader && now.Sub(time.Unix(0, c.lastAck.Load())) < lease
		if isLeader {
			c.quorum.Store(leaseOK)
		} else {
			addr, _ := c.r.LeaderWithID()
			c.quorum.Store(addr != "")
		}
		c.m.quorum.Set(b2f(c.quorum.Load()))
		hold := c.role == RoleProxy && leaseOK && c.pingOK.Load() && !c.transferring.Load()
		// A failed Release leaves holding true, so it is tried again here every tick.
		c.setHolding(hold)

		// A leader that must not hold the VIP (witness, lost ping targets) or that should
		// fail back hands leadership to the best proxy.
		if isLeader && !c.transferring.Load() && now.Sub(lastTransfer) > c.cfg.Timing.ElectionTimeout {
			if targets := c.transferTargets(); len(targets) > 0 {
				lastTransfer = now
				// Release before anyone else can be elected. A transfer while the address
				// is still on our interface would make two holders at once: keep
				// leadership and try again later.
				if !c.setHolding(false) {
					continue
				}
				c.transferring.Store(true)
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					defer c.poke()
					defer c.transferring.Store(false)
					c.transfer(targets)
				}()
			}
		}
	}
}

// transfer hands raft leadership to the first target that answers a direct memberlist
// ping: right after an election the previous leader is often dead but not yet declared
// so by memberlist, and a transfer to it would only time out.
func (c *Cluster) transfer(targets []Peer) {
	ml := c.ml.Load()
	for _, p := range targets {
		addr, err := net.ResolveUDPAddr("udp", p.Gossip)
		if err != nil {
			continue
		}
		if _, err := ml.Ping(p.Name, addr); err != nil {
			c.log.Info("not handing leadership to an unresponsive proxy", zap.String("to", p.Name), zap.Error(err))
			continue
		}
		c.log.Info("handing raft leadership over", zap.String("to", p.Name))
		err = c.r.LeadershipTransferToServer(raft.ServerID(p.Name), raft.ServerAddress(p.Raft)).Error()
		if err == nil {
			return
		}
		c.log.Warn("leadership transfer failed", zap.String("to", p.Name), zap.Error(err))
		if c.r.State() != raft.Leader {
			return
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// transferTargets lists, best first, the proxies this leader should hand over to; empty
// when it should keep leadership.
func (c *Cluster) transferTargets() []Peer {
	var cands []Member
	for _, m := range c.Members() {
		if m.Name == c.cfg.Name || m.State != "alive" || m.Role != RoleProxy.String() || !m.PingOK {
			continue
		}
		cands = append(cands, m)
	}
	if len(cands) == 0 {
		return nil
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].Priority != cands[j].Priority {
			return cands[i].Priority > cands[j].Priority
		}
		return cands[i].Name < cands[j].Name
	})
	switch {
	case c.role == RoleWitness, !c.pingOK.Load():
	case c.cfg.Failback && cands[0].Priority > c.cfg.Priority:
		// Only proxies that outrank us and have been up for failback_delay (a proxy
		// that just restarted is still catching up raft's log; a transfer to it would
		// time out after the VIP was already released).
		c.memMu.RLock()
		upAt := maps.Clone(c.upAt)
		c.memMu.RUnlock()
		n := 0
		for _, m := range cands {
			if m.Priority > c.cfg.Priority && time.Since(upAt[m.Name]) >= c.cfg.FailbackDelay {
				cands[n] = m
				n++
			}
		}
		cands = cands[:n]
	default:
		return nil
	}
	var out []Peer
	for _, m := range cands {
		for _, p := range c.cfg.Peers {
			if p.Name == m.Name {
				out = append(out, p)
			}
		}
	}
	return out
}

// setHolding adds or removes the VIP so that holding becomes hold, and reports whether
// it now is. Called by the leader loop every tick, so a failed Acquire or Release is
// retried on the next one.
func (c *Cluster) setHolding(hold bool) bool {
	if c.vip == nil {
		return !hold
	}
	c.vipMu.Lock()
	defer c.vipMu.Unlock()
	return c.setHoldingLocked(hold)
}

func (c *Cluster) setHoldingLocked(hold bool) bool {
	if c.holding.Load() == hold {
		if hold && c.releaseFails > 0 {
			// Entitled to the VIP again before a removal succeeded: the streak ends.
			c.log.Warn("keeping the VIP that could not be removed", zap.Int("failed_attempts", c.releaseFails))
			c.releaseFails = 0
		}
		return true
	}
	if hold {
		if c.vipStopped {
			return false
		}
		if err := c.vip.Acquire(); err != nil {
			// Retried every lease tick: log once a second, not forty times.
			if time.Since(c.lastVIPErr) > time.Second {
				c.log.Error("cannot take the VIP", zap.Error(err))
				c.lastVIPErr = time.Now()
			}
			return false
		}
	} else if err := c.vip.Release(); err != nil {
		// Only the kernel can say the address is gone; until then we still hold it,
		// whatever raft says, and say so (IsLeader, Status, node metadata).
		if held, herr := c.vip.Held(); herr != nil || held {
			c.releaseFails++
			c.m.releaseFailures.Inc()
			if c.releaseFails == 1 {
				c.log.Error("cannot remove the VIP; retrying every lease tick", zap.Error(err))
			} else {
				c.log.Debug("VIP removal failed again", zap.Int("attempts", c.releaseFails), zap.Error(err))
			}
			return false
		}
	}
	if !hold && c.releaseFails > 0 {
		c.log.Warn("VIP removed after failed attempts", zap.Int("failed_attempts", c.releaseFails))
		c.releaseFails = 0
	}
	c.holding.Store(hold)
	if hold {
		c.takeover(c.holdGen.Add(1))
	} else {
		c.holdGen.Add(1)
	}
	c.notify(hold)
	c.pokeMeta()
	return true
}

// stopVIP refuses every later Acquire and removes the VIP (one attempt); it reports
// whether the VIP is off our interface.
func (c *Cluster) stopVIP() bool {
	if c.vip == nil {
		return true
	}
	c.vipMu.Lock()
	defer c.vipMu.Unlock()
	c.vipStopped = true
	return c.setHoldingLocked(false)
}

func (c *Cluster) notify(v bool) {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for _, ch := range c.subs {
		select {
		case <-ch:
		default:
		}
		ch <- v
	}
}

// LeaderCh returns a new channel that receives true when this node takes the VIP and
// false when the address is gone from its interface. Only the latest value is kept if
// the reader lags.
func (c *Cluster) LeaderCh() <-chan bool {
	ch := make(chan bool, 1)
	c.subMu.Lock()
	c.subs = append(c.subs, ch)
	c.subMu.Unlock()
	return ch
}

// IsLeader reports whether this node holds the VIP, i.e. is the acting leader that
// should run the failover coordinator. A witness never is. It stays true while a
// removal of the VIP keeps failing: the address is still ours (see doc.go).
func (c *Cluster) IsLeader() bool { return c.holding.Load() }

func (c *Cluster) pingLoop(ctx context.Context) {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok := reachable(ctx, c.cfg.PingTargets, c.cfg.PingTimeout)
		if ok != c.pingOK.Swap(ok) {
			c.log.Warn("ping targets", zap.Bool("reachable", ok), zap.Strings("targets", c.cfg.PingTargets))
			c.pokeMeta()
			c.poke()
		}
	}
}

func (c *Cluster) pokeMeta() {
	select {
	case c.metaWake <- struct{}{}:
	default:
	}
}

// metaLoop re-announces our node metadata (ping state, VIP held) when it changes, off
// the leader loop: UpdateNode waits for the broadcast to go out.
func (c *Cluster) metaLoop(ctx context.Context) {
	defer c.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.metaWake:
		}
		if err := c.ml.Load().UpdateNode(time.Second); err != nil {
			c.log.Debug("meta update not confirmed", zap.Error(err))
		}
	}
}

// Members lists the members memberlist has reported, this node included, sorted by name.
func (c *Cluster) Members() []Member {
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	out := make([]Member, 0, len(c.nodes))
	for name, n := range c.nodes {
		var meta nodeMeta
		_ = json.Unmarshal(n.Meta, &meta)
		m := Member{Name: name, Addr: n.Address(), Role: meta.Role, Priority: meta.Priority, PingOK: meta.PingOK, State: c.states[name],
			Backend: meta.Backend, API: meta.API, VIPHeld: meta.VIP}
		if name == c.cfg.Name {
			m.VIPHeld = c.holding.Load()
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// node returns a copy of member name and whether it is alive.
func (c *Cluster) node(name string) (*memberlist.Node, bool) {
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	n, ok := c.nodes[name]
	return &n, ok && c.states[name] == "alive"
}

// stateful reports whether a member announced state channels in its metadata. An agent
// never gets state, whatever it announces: registrations and media sessions are the
// proxies' business.
func stateful(n *memberlist.Node) bool {
	var meta nodeMeta
	return json.Unmarshal(n.Meta, &meta) == nil && meta.State && meta.Role != RoleAgent.String()
}

// aliveNodes returns copies of the other alive members that take state records.
func (c *Cluster) aliveNodes() []*memberlist.Node {
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	var out []*memberlist.Node
	for name, n := range c.nodes {
		if name != c.cfg.Name && c.states[name] == "alive" && stateful(&n) {
			n := n
			out = append(out, &n)
		}
	}
	return out
}

// record copies n; called from memberlist's event callbacks (under its node lock).
func (c *Cluster) record(n *memberlist.Node, state string) {
	cp := memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port,
		Meta: append([]byte(nil), n.Meta...)}
	c.memMu.Lock()
	if state == "alive" && c.states[n.Name] != "alive" {
		c.upAt[n.Name] = time.Now()
	}
	c.nodes[n.Name] = cp
	c.states[n.Name] = state
	c.memMu.Unlock()
}

// Publish stores key=value through the raft log (strongly consistent, replicated to all
// voters, witness included). Only the raft leader can publish: ErrNotLeader elsewhere.
func (c *Cluster) Publish(key string, value []byte) error {
	if c.role == RoleAgent {
		return fmt.Errorf("publish %q: an agent is not a voter: %w", key, ErrNotLeader)
	}
	if c.r == nil || c.closed.Load() {
		return ErrClosed
	}
	b, err := json.Marshal(kvCommand{Key: key, Value: value})
	if err != nil {
		return err
	}
	if err := c.r.Apply(b, 2*time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("publish %q: %w", key, ErrNotLeader)
		}
		return fmt.Errorf("publish %q: %w", key, err)
	}
	return nil
}

// Get returns the last published value of key this node has applied (may trail the
// leader by a commit on followers).
func (c *Cluster) Get(key string) ([]byte, bool) { return c.fsm.get(key) }

// OnPublish sets a callback run after a published key is applied on this node.
// Set it before Start; it must not block.
func (c *Cluster) OnPublish(fn func(key string, value []byte)) {
	c.fsm.mu.Lock()
	c.fsm.onChange = fn
	c.fsm.mu.Unlock()
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
	s := Status{Name: c.cfg.Name, Role: c.role.String(), VIPHeld: c.holding.Load(), Quorum: c.quorum.Load(),
		PingOK: c.pingOK.Load(), Priority: c.cfg.Priority, Failback: c.cfg.Failback, Members: c.Members()}
	if c.vip != nil {
		s.VIP = c.cfg.VIP.Address
	}
	s.VIPHolders = []string{}
	for _, m := range s.Members {
		if m.VIPHeld && (m.State == "alive" || m.Name == c.cfg.Name) {
			s.VIPHolders = append(s.VIPHolders, m.Name)
		}
	}
	if c.r != nil {
		s.RaftState = c.r.State().String()
		_, id := c.r.LeaderWithID()
		s.Leader = string(id)
		st := c.r.Stats()
		s.Term = st["term"]
		s.LastContact = st["last_contact"]
	}
	return s
}

// Close releases the VIP (no Acquire can follow, whatever the leader loop is doing),
// hands leadership over if this node leads (so the peer takes over at once rather than
// after the timeouts) and stops everything. If the VIP cannot be removed there is no
// hand-over: it would make the peer a second holder at once.
func (c *Cluster) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	released := c.stopVIP()
	if c.r != nil && c.r.State() == raft.Leader {
		if released {
			c.transferring.Store(true)
			if err := c.r.LeadershipTransfer().Error(); err != nil {
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
	if c.vip != nil {
		c.vipMu.Lock()
		c.vipStopped = true
		// Unconditional, whatever holding says: the last chance before the process exits.
		if err := c.vip.Release(); err != nil {
			c.log.Error("VIP not removed on shutdown", zap.Error(err))
		} else if c.holding.Swap(false) {
			c.notify(false)
		}
		c.vipMu.Unlock()
	}
	if c.r != nil {
		if err := c.r.Shutdown().Error(); err != nil {
			c.log.Warn("raft shutdown", zap.Error(err))
		}
	}
	if c.ml.Load() != nil {
		_ = c.ml.Load().Leave(500 * time.Millisecond)
		_ = c.ml.Load().Shutdown()
	}
	if c.trans != nil {
		_ = c.trans.Close()
	}
	if c.store != nil {
		_ = c.store.Close()
	}
	c.log.Info("cluster stopped")
}

// RunWitness runs a witness node until ctx ends: it votes in raft so two proxies keep a
// quorum when one dies, never holds the VIP, and hands raft leadership to the best proxy
// whenever it wins an election. For `hapbx witness -c FILE`.
func RunWitness(ctx context.Context, cfg Config, log *zap.Logger, reg prometheus.Registerer) error {
	c, err := New(cfg, RoleWitness, log, reg)
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return c.Close()
}

// delegate and events are the memberlist callbacks, as distinct method sets on Cluster.
type delegate Cluster

func (d *delegate) NodeMeta(limit int) []byte {
	c := (*Cluster)(d)
	c.chMu.RLock()
	hasState := len(c.chans) > 0
	c.chMu.RUnlock()
	meta := nodeMeta{Role: c.role.String(), Priority: c.cfg.Priority, PingOK: c.role == RoleProxy && c.pingOK.Load(), State: hasState,
		VIP: c.holding.Load()}
	if c.role == RoleAgent {
		meta = nodeMeta{Role: c.role.String(), Backend: c.agent.Backend, API: c.agent.API}
	}
	b, _ := json.Marshal(meta)
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg(b []byte) { (*Cluster)(d).handleMsg(b) }

// GetBroadcasts: nothing rides on gossip packets; see Broadcast.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState carries nothing: full state goes by chunked TCP pushes on join (pushState),
// because memberlist's push/pull is capped at 20 MiB and runs on a timer as well.
func (d *delegate) LocalState(join bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

type events Cluster

func (e *events) NotifyJoin(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.record(n, "alive")
	c.memberCount(1)
	if n.Name == c.cfg.Name {
		return
	}
	c.log.Info("member up", zap.String("member", n.Name), zap.String("addr", n.Address()))
	c.poke()
	c.chMu.RLock()
	has := len(c.chans) > 0
	c.chMu.RUnlock()
	if has && stateful(n) && !c.closed.Load() {
		cp := memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port}
		go func() { _ = c.pushState(&cp) }()
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	c := (*Cluster)(e)
	st := "dead"
	if n.State == memberlist.StateLeft {
		st = "left"
	}
	c.record(n, st)
	c.memberCount(-1)
	c.log.Warn("member down", zap.String("member", n.Name), zap.String("state", st))
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.record(n, "alive")
	c.poke()
}

// memberCount runs inside memberlist's event callbacks, which hold its node lock: it
// must not call back into memberlist (NumMembers would deadlock).
func (c *Cluster) memberCount(delta int64) {
	c.m.members.Set(float64(c.alive.Add(delta)))
}
