package cluster

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"
)

// vipAddr is what the Cluster needs of its VIP (*VIP); a test substitutes a fake to
// inject failures.
type vipAddr interface {
	Acquire() error
	Release() error
	Held() (bool, error)
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
