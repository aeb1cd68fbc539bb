package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/event"
)

// Leadership: hashicorp/raft with a static voter set (every entry of peers: the
// proxies and the witness), bootstrapped identically on every node when data_dir is
// empty. Term, vote and log live in data_dir (raft-boltdb v2 on bbolt): a voter that
// forgot its vote could vote twice in a term. Transport: raft's NetworkTransport
// over TCP on peers[self].raft (what raft.NewTCPTransport builds), with a stream
// layer that makes both ends prove, by HMAC challenge-response, that they hold a key
// of secret_file (raftauth.go): a host that merely reaches the port cannot vote or
// append entries. Raft traffic is authenticated at connect, not encrypted.
//
// == Who holds the VIP ==
//
// A node holds the VIP iff it is a proxy, it is the raft leader, its quorum lease is
// fresh, it reaches at least one of ping_targets (when configured) and it is not
// handing leadership over. The quorum lease (lease.go): raft's transport notes, per
// follower, the send time of the newest AppendEntries (heartbeats included, one every
// H/10 to H/5) that the follower accepted in the leader's current term; the lease is
// fresh while a majority of voters, the leader counted, accepted one sent less than
// timing.leader_lease ago. The check runs every lease tick (H/20, at least 5 ms) and on
// every new acknowledgement, in its own goroutine. It needs nothing from raft's main
// loop: a main loop stuck on a disk write keeps the VIP as long as the heartbeats flow,
// since the followers then keep following and nobody else can be elected. raft's own
// LeaderLeaseTimeout (which only makes raft step down) is set to heartbeat_timeout
// less 1 ms, the maximum raft allows (see electionWatch).
//
// ping_targets are Heartbeat's ping nodes on top of the witness, not instead of it: a
// proxy that cannot reach any of them may not hold the VIP, but they cast no vote. Two
// proxies cut apart that both still reach the gateway would each count it, so a pair
// with ping targets alone cannot agree; raft needs the third voter (New refuses fewer).
//
// A witness that wins an election, a leader that lost its ping targets, and (with
// failback: true) a leader that sees a ping-healthy proxy of higher priority alive for
// failback_delay,
// release the VIP first and then transfer raft leadership to the best proxy (highest
// priority, then lowest name; priorities are gossiped in memberlist node metadata).
// With failback: false the current holder keeps the VIP when a higher-priority proxy
// returns.
//
// "Holds" means the address is on the interface as far as the node knows: IsLeader,
// Status.vip_held and the node's gossiped metadata ("v") all follow the
// Acquire/Release outcome, not the raft decision. A removal that fails leaves the node
// holding: the leader loop retries it every lease tick until the kernel confirms the
// address is gone, logs "cannot remove the VIP" at error level once per streak of
// failures and counts every failed attempt in hapbx_cluster_vip_release_failures_total.
// Meanwhile the node starts no leadership transfer (failback, ping loss, close): that
// would knowingly make a second holder. If raft elects the other proxy anyway (this
// node lost its quorum), both hold the address until the removal succeeds; the timing
// argument below assumes removals succeed (TestReleaseFailureRetried).
//
// Status.leader is the raft leader; Status.vip_holders lists the alive members whose
// metadata says they hold the VIP (this node from its own state): normally one, none
// while the VIP moves or while the leader may not hold it (lease lapsed, ping targets
// lost, witness), two only with a failing removal. Metadata travels by gossip, so
// another node's entry lags by a gossip round or so (TestStatusVIPHolders).
//
// == Timing argument (why there are never two holders) ==
//
// Defaults: heartbeat_timeout H = 250 ms, election_timeout = 250 ms, leader_lease
// L = 200 ms, lease tick = H/20 = 12.5 ms. Validate demands L <= H - H/10 - tick - 1 ms
// (211.5 ms with the defaults).
//
// Let s be the lease's reference time: a majority of voters (the holder included)
// accepted an AppendEntries of the holder's current term that was sent at or after s
// (the send time is taken before the request leaves). Each of those followers set its
// "last contact" to a time >= s and knows the holder as leader. The holder drops the VIP
// at the latest at s + L + tick (+ the netlink call, ~1 ms) = s + 213.5 ms.
//
// A new leader needs (pre-)votes from a majority, which shares at least one voter X with
// the majority that acknowledged s. X refuses (pre-)votes while it knows a leader, and
// forgets the leader only when its heartbeat check finds no contact for H (H - 1 ms
// while electionWatch nudges raft into checking at once); if X is the candidate
// itself, it does not start an election before that either. So no new leader exists
// before s + H - 1 ms = s + 249 ms, at least H/10 (25 ms, and 35 ms with the default
// L) after the old holder released the VIP, whatever the network delay: the argument
// uses send times on the holder and contact times on the followers, never a round
// trip. The margin absorbs scheduling delays of the holder's lease check. A holder
// whose whole process or machine is frozen longer (SIGSTOP, VM pause) cannot run its
// lease check; this library has no fencing for that case.
//
// Why this lease and not a shorter one: under CPU starvation the holder's heartbeats
// and their answers are late. The lease lapses only when no heartbeat sent in the last
// L was acknowledged by a majority: with heartbeats every H/10 to H/5 that is a stall of
// more than L - H/5 = 150 ms. The earlier lease (100 ms from the issue of a
// VerifyLeader round, which went through raft's main loop and had to allow for
// heartbeats in flight) lapsed after stalls of about 75 ms and made the VIP flap on a
// loaded holder. Re-added at once when the acknowledgements come back (still leader,
// same term), a lapse costs the VIP for the length of the stall beyond L.
//
// A voter that restarts forgets whom it followed and would grant votes at once; start
// therefore waits H before it starts raft, so a vote it grants comes at least H after
// any acknowledgement it gave in its previous life.
//
// The one raft path that bypasses the "I have a leader" refusal is leadership transfer
// (TimeoutNow). hapbx only starts a transfer after releasing the VIP itself (failback,
// ping loss, close); a witness never holds it.
//
// Failover time after the holder dies: its last heartbeats reached the followers up to
// H/5 before the death. electionWatch has each follower's raft give up on it H after
// its last contact once a dial to its raft port is refused (H + H/4 when unanswered:
// host off) (raft alone does so only at its next randomised timer, H to 3H after, and
// still does for a holder that is only late): the witness first; the surviving proxy, whose pre-vote the witness then
// grants, when the witness asks for a vote or at H + H/4. One pre-vote and one vote
// round trip and an fsync elect the proxy; then a heartbeat round renews its lease and
// it adds the VIP. The raft connections between the survivors are already open and
// authenticated (warmConns): the handshake no longer falls in the failover. If the
// witness wins instead (the proxy's own raft timer fired first and the witness, still
// following the dead holder, refused it), it hands leadership to the proxy as soon as
// the proxy accepts its first entries (transfer), a few ms more. Measured in network
// namespaces on a shared 2-core machine, load average 8-20 from other jobs
// (TestFailoverFigures, HAPBX_BENCH=1, 20 SIGKILLs): median 260-290 ms, p95 270-390
// ms in most runs; single runs at load 15-20 had p95 0.6-0.9 s (a (pre-)vote's fsync
// or dial taking hundreds of ms on the starved host).
//
// == Failure cases ==
//
//   - Holder dies (power, SIGKILL): the other proxy and the witness elect the other
//     proxy within about H + 50 ms (0.3 s); it adds the VIP and sends gratuitous ARP, so clients'
//     ARP entries follow at once (TestFailoverSIGKILL). If only the hapbx process died and
//     the host lives, the address stays on its interface until hapbx restarts (start
//     removes it) — deploy the systemd unit with
//     ExecStopPost=-/usr/sbin/ip addr del <vip> dev <interface> so a crashed process does
//     not leave a second owner answering ARP.
//   - Pair cut apart, both see the witness: the holder keeps its quorum with the witness
//     and keeps the VIP; the witness refuses the other proxy's pre-votes (it has a
//     leader), so nothing moves and terms do not inflate. Shared-state broadcasts
//     between the two stop; a full push runs when they see each other again
//     (TestPartition).
//   - Holder cut from everyone: its lease runs out and it releases the VIP after at most
//     L + tick; the others elect a new holder after at least H (TestPartition samples
//     every 50 ms in both namespaces: never two holders). Healed, the old holder becomes
//     a follower; failback decides whether it takes the VIP back.
//   - Witness dies: the two proxies keep a quorum of 2 of 3; nothing moves. A second
//     failure then leaves no quorum: restore the witness.
//   - Two nodes die: the survivor has no quorum and holds no VIP (released within L if it
//     held it). The service is down until a second voter returns: that is the price of
//     never having two holders. There is no manual override in this package.
//   - Holder loses its ping targets: it releases the VIP and hands leadership to a proxy
//     that reaches them; if none does, no node holds the VIP.
//   - Removing the VIP fails (netlink error): the node keeps reporting it holds the VIP,
//     retries every lease tick and logs/counts it (see Who holds the VIP); no hand-over
//     starts from it. On close the removal is tried once more in shutdown; after that
//     only ExecStopPost (hapbx release-vip) can remove it.

// leadership is the raft voter and the quorum lease the VIP depends on.
type leadership struct {
	r     *raft.Raft
	trans *ackTransport
	store *raftboltdb.BoltStore
	wake  chan struct{} // re-evaluates the lease at once (leaderLoop)

	pingOK       atomic.Bool // ping targets reached (true without targets)
	quorum       atomic.Bool
	transferring atomic.Bool
	voteAsked    atomic.Int64 // unix nanos when another voter last asked us for a (pre-)vote
}

// vipHolding is the VIP on our interface and who is told when that changes.
type vipHolding struct {
	vip vipAddr // nil on a witness and a service member; a test substitutes a fake
	// mu serialises every change of the VIP (leader loop, close, shutdown): one
	// Acquire or Release at a time, and none after close decided to let go.
	mu sync.Mutex
	// holding: the VIP is on our interface as far as we know (written under mu). A
	// failed Release leaves it true: the address is still there.
	holding      atomic.Bool
	gen          atomic.Uint64 // hold generation: bumped on every take and release
	stopped      bool          // under mu: close began, Acquire is refused
	lastErr      time.Time     // under mu
	releaseFails int           // under mu: failed Release attempts in the current streak
}

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
	c.lead.store = store
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
	stream, err := newAuthLayer(bind, adv, c.mem.keyring.GetKeys(), c.mem.keyring.GetPrimaryKey())
	if err != nil {
		return fmt.Errorf("cluster: raft transport on %s: %w", bind, err)
	}
	c.lead.trans = newAckTransport(raft.NewNetworkTransport(stream, rpcPool, c.rpcTimeout(), bridge), c.lead.poke)
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
	// Not what protects the VIP (see "Who holds the VIP" above): the maximum raft allows
	// while checkLeaderNow may lower the heartbeat timeout by checkNudge for a moment.
	rc.LeaderLeaseTimeout = c.cfg.Timing.HeartbeatTimeout - checkNudge
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
		if err := raft.BootstrapCluster(rc, store, store, snaps, c.lead.trans, conf); err != nil {
			return fmt.Errorf("cluster: bootstrap raft in %s: %w", c.cfg.DataDir, err)
		}
		c.log.Info("raft bootstrapped with the static voter set", zap.Int("voters", len(conf.Servers)))
	}
	c.lead.r, err = raft.NewRaft(rc, c.kv.fsm, store, store, snaps, c.lead.trans)
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
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RequestPreVoteRequest, raft.RequestVoteRequest:
			return true
		}
		return false
	})
	c.lead.r.RegisterObserver(ob)
	defer c.lead.r.DeregisterObserver(ob)
	var last raft.ServerID
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-ch:
			lo, ok := o.Data.(raft.LeaderObservation)
			if !ok {
				// Another voter asks for a (pre-)vote: it has given up on the leader.
				c.lead.voteAsked.Store(time.Now().UnixNano())
				continue
			}
			if lo.LeaderID != "" && lo.LeaderID != last {
				c.m.leaderChanges.Inc()
				c.log.Info("raft leader", zap.String("leader", string(lo.LeaderID)))
				c.events.Record(event.Event{At: time.Now(), Kind: event.Leader, Subject: string(lo.LeaderID),
					Text: "raft leader is " + string(lo.LeaderID)})
				last = lo.LeaderID
			}
			c.lead.poke()
		}
	}
}

// poke makes leaderLoop re-evaluate the lease at once.
func (l *leadership) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// rpcPool is how many idle connections raft's transport keeps per peer.
const rpcPool = 3

// rpcTimeout bounds every raft RPC, heartbeats included. The lease does not depend on
// it (it counts from send times, see the timing argument above); half a heartbeat
// timeout lets a follower's answer be late under load without failing the heartbeat.
func (c *Cluster) rpcTimeout() time.Duration { return c.cfg.Timing.HeartbeatTimeout / 2 }

// leaderLoop decides, every lease tick and whenever raft's leadership changes or a
// follower acknowledges us, whether this node may hold the VIP (see "Who holds the
// VIP" above).
func (c *Cluster) leaderLoop(ctx context.Context) {
	defer c.wg.Done()
	lease := c.cfg.Timing.LeaderLease
	tick := time.NewTicker(c.cfg.Timing.leaseTick())
	defer tick.Stop()
	leaderCh := c.lead.r.LeaderCh()
	self := raft.ServerID(c.cfg.Name)
	voters := make([]raft.ServerID, 0, len(c.cfg.Peers))
	for _, p := range c.cfg.Peers {
		voters = append(voters, raft.ServerID(p.Name))
	}
	var lastTransfer time.Time
	for {
		// An acknowledgement (wake) only re-evaluates the lease; hand-overs are
		// considered on the tick and on leadership changes.
		considerTransfer := true
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-leaderCh:
		case <-c.lead.wake:
			considerTransfer = false
		}
		// The term first: a term read after the state could be a newer one in which
		// we lead no more (then no acknowledgement counts, which is safe).
		term := c.lead.r.CurrentTerm()
		isLeader := c.lead.r.State() == raft.Leader
		c.m.isLeader.Set(b2f(isLeader))
		now := time.Now()
		leaseOK := isLeader && now.Sub(c.lead.trans.quorumSince(term, self, voters)) < lease
		if isLeader {
			c.lead.quorum.Store(leaseOK)
		} else {
			addr, _ := c.lead.r.LeaderWithID()
			c.lead.quorum.Store(addr != "")
		}
		c.m.quorum.Set(b2f(c.lead.quorum.Load()))
		hold := c.role == RoleProxy && leaseOK && c.lead.pingOK.Load() && !c.lead.transferring.Load()
		// A failed Release leaves holding true, so it is tried again here every tick.
		c.setHolding(hold)

		// A leader that must not hold the VIP (witness, lost ping targets) or that should
		// fail back hands leadership to the best proxy.
		if considerTransfer && isLeader && !c.lead.transferring.Load() && now.Sub(lastTransfer) > c.cfg.Timing.ElectionTimeout {
			if targets := c.transferTargets(); len(targets) > 0 {
				lastTransfer = now
				// Release before anyone else can be elected. A transfer while the address
				// is still on our interface would make two holders at once: keep
				// leadership and try again later.
				if !c.setHolding(false) {
					continue
				}
				c.lead.transferring.Store(true)
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					defer c.lead.poke()
					defer c.lead.transferring.Store(false)
					c.transfer(targets)
				}()
			}
		}
	}
}

// checkNudge is how much checkLeaderNow lowers raft's heartbeat timeout for a moment.
const checkNudge = time.Millisecond

// electionWatch makes a follower give up on a silent leader as soon as raft allows, not
// at raft's next randomised timer. raft checks "no contact for heartbeat_timeout" only
// when a timer re-armed at random in [H, 2H) fires, so a dead leader was abandoned
// between H and 3H after its last heartbeat. This loop watches raft's LastContact and,
// once it is H old, has raft run that same check at once (checkLeaderNow): the rule
// that protects the VIP (no vote while the leader was heard within H) is unchanged,
// only its timing is exact.
//
// Only a leader that is gone is abandoned early: once silent for H, the follower dials
// the leader's raft port (leaderGone, again every H/4 while the silence lasts). Refused
// (process dead) or unanswered within H/4 (host off or cut off): early. Connected (the
// process lives but is late, e.g. starved of CPU): raft's own timer decides, H to 3H,
// the tolerance of a loaded holder it always had.
//
// Order matters with two survivors: a voter refuses a (pre-)vote while it still knows
// a leader, and two candidates at once split the vote (the retry waits
// election_timeout). So the witness checks at H; a proxy checks at once when another
// voter has asked it for a (pre-)vote within the last H (that voter has given up on
// the leader and, its pre-vote refused by us, waits as a candidate that grants ours),
// else only at H + H/4 (heartbeats to the two followers go out independently, every
// H/10 to H/5, so the witness's last contact can be that much later than ours).
func (c *Cluster) electionWatch(ctx context.Context) {
	defer c.wg.Done()
	h := c.cfg.Timing.HeartbeatTimeout
	tick := time.NewTicker(max(h/25, time.Millisecond))
	defer tick.Stop()
	var kicked, probed time.Time
	gone := false // the last probe found the leader's process or host gone
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := c.lead.r
		if r.State() != raft.Follower {
			continue
		}
		addr, _ := r.LeaderWithID()
		if addr == "" {
			continue // raft has given up on it already, or never had one
		}
		now := time.Now()
		silent := now.Sub(r.LastContact())
		if silent < h {
			gone, probed = false, time.Time{}
			continue
		}
		if now.Sub(probed) >= h/4 {
			gone, probed = leaderGone(string(addr), h/4), now
		}
		if !gone {
			continue // alive but late (starved): raft's own timer decides, as it always did
		}
		asked := now.Sub(time.Unix(0, c.lead.voteAsked.Load())) <= h
		if c.role == RoleProxy && !asked && silent < h+h/4 {
			continue
		}
		if now.Sub(kicked) < h/10 {
			continue // raft's loop has not got to the last one yet
		}
		kicked = now
		c.checkLeaderNow()
	}
}

// leaderGone tells a dead leader from a late one by dialling its raft port: a refusal
// means its process is gone (the host answers for it), no answer within timeout that
// its host is off or cut off. A connection means the host's kernel and the process's
// socket live: a starved or stopped process, which keeps the old tolerance.
func leaderGone(addr string, timeout time.Duration) bool {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return true
	}
	_ = conn.Close()
	return false
}

// checkLeaderNow makes a follower's raft run its heartbeat check now: raft does so when
// its heartbeat timeout is lowered, so it is lowered by checkNudge and set back.
func (c *Cluster) checkLeaderNow() {
	rc := c.lead.r.ReloadableConfig()
	h := rc.HeartbeatTimeout
	rc.HeartbeatTimeout = h - checkNudge
	if err := c.lead.r.ReloadConfig(rc); err != nil {
		c.log.Warn("cannot have raft check the leader now", zap.Error(err))
		return
	}
	rc.HeartbeatTimeout = h
	if err := c.lead.r.ReloadConfig(rc); err != nil {
		c.log.Error("cannot set raft's heartbeat timeout back", zap.Duration("heartbeat_timeout", h), zap.Error(err))
	}
}

// transfer hands raft leadership to a target proxy, best first among those known alive:
// one that accepted an AppendEntries of ours in this term within the last
// heartbeat_timeout, else one that answers a direct memberlist ping. Right after an
// election the previous leader is often dead but not yet declared so by memberlist: a
// ping to it costs a probe timeout and a transfer to it would only time out. A witness
// that won the election after the holder died thus hands over to the surviving proxy
// as soon as that proxy accepts its first entries (waiting up to H/2 for them), without
// a ping round trip.
func (c *Cluster) transfer(targets []Peer) {
	h := c.cfg.Timing.HeartbeatTimeout
	term := c.lead.r.CurrentTerm()
	acked := func() (Peer, bool) {
		for _, p := range targets {
			if c.lead.trans.ackedWithin(raft.ServerID(p.Name), term, h) {
				return p, true
			}
		}
		return Peer{}, false
	}
	p, ok := acked()
	for wait := time.Now().Add(h / 2); !ok && time.Now().Before(wait) && c.lead.r.State() == raft.Leader; p, ok = acked() {
		time.Sleep(5 * time.Millisecond)
	}
	if ok && c.transferTo(p) {
		return
	}
	ml := c.mem.ml.Load()
	for _, p := range targets {
		if c.lead.r.State() != raft.Leader {
			return
		}
		addr, err := net.ResolveUDPAddr("udp", p.Gossip)
		if err != nil {
			continue
		}
		if _, err := ml.Ping(p.Name, addr); err != nil {
			c.log.Info("not handing leadership to an unresponsive proxy", zap.String("to", p.Name), zap.Error(err))
			continue
		}
		if c.transferTo(p) {
			return
		}
	}
}

// transferTo asks raft to hand leadership to p and reports whether it did.
func (c *Cluster) transferTo(p Peer) bool {
	c.log.Info("handing raft leadership over", zap.String("to", p.Name))
	err := c.lead.r.LeadershipTransferToServer(raft.ServerID(p.Name), raft.ServerAddress(p.Raft)).Error()
	if err != nil {
		c.log.Warn("leadership transfer failed", zap.String("to", p.Name), zap.Error(err))
	}
	return err == nil
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
	case c.role == RoleWitness, !c.lead.pingOK.Load():
	case c.cfg.Failback && cands[0].Priority > c.cfg.Priority:
		// Only proxies that outrank us and have been up for failback_delay (a proxy
		// that just restarted is still catching up raft's log; a transfer to it would
		// time out after the VIP was already released).
		upAt := c.mem.upSince()
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
	if c.hold.vip == nil {
		return !hold
	}
	c.hold.mu.Lock()
	defer c.hold.mu.Unlock()
	return c.setHoldingLocked(hold)
}

func (c *Cluster) setHoldingLocked(hold bool) bool {
	if c.hold.holding.Load() == hold {
		if hold && c.hold.releaseFails > 0 {
			// Entitled to the VIP again before a removal succeeded: the streak ends.
			c.log.Warn("keeping the VIP that could not be removed", zap.Int("failed_attempts", c.hold.releaseFails))
			c.hold.releaseFails = 0
		}
		return true
	}
	if hold {
		if c.hold.stopped {
			return false
		}
		if err := c.hold.vip.Acquire(); err != nil {
			// Retried every lease tick: log once a second, not forty times.
			if time.Since(c.hold.lastErr) > time.Second {
				c.log.Error("cannot take the VIP", zap.Error(err))
				c.hold.lastErr = time.Now()
			}
			return false
		}
	} else if err := c.hold.vip.Release(); err != nil {
		// Only the kernel can say the address is gone; until then we still hold it,
		// whatever raft says, and say so (IsLeader, Status, node metadata).
		if held, herr := c.hold.vip.Held(); herr != nil || held {
			c.hold.releaseFails++
			c.m.releaseFailures.Inc()
			if c.hold.releaseFails == 1 {
				c.log.Error("cannot remove the VIP; retrying every lease tick", zap.Error(err))
			} else {
				c.log.Debug("VIP removal failed again", zap.Int("attempts", c.hold.releaseFails), zap.Error(err))
			}
			return false
		}
	}
	if !hold && c.hold.releaseFails > 0 {
		c.log.Warn("VIP removed after failed attempts", zap.Int("failed_attempts", c.hold.releaseFails))
		c.hold.releaseFails = 0
	}
	c.hold.holding.Store(hold)
	text := "VIP " + c.cfg.VIP.Address + " removed from this node"
	if hold {
		text = "VIP " + c.cfg.VIP.Address + " taken by this node"
	}
	c.events.Record(event.Event{At: time.Now(), Kind: event.VIP, Subject: c.cfg.Name, Text: text, Warn: !hold})
	if hold {
		c.takeover(c.hold.gen.Add(1))
	} else {
		c.hold.gen.Add(1)
	}
	c.mem.pokeMeta()
	return true
}

// stopVIP refuses every later Acquire and removes the VIP (one attempt); it reports
// whether the VIP is off our interface.
func (c *Cluster) stopVIP() bool {
	if c.hold.vip == nil {
		return true
	}
	c.hold.mu.Lock()
	defer c.hold.mu.Unlock()
	c.hold.stopped = true
	return c.setHoldingLocked(false)
}

// IsLeader reports whether this node holds the VIP, i.e. is the acting leader that
// should run the failover coordinator. A witness never is. It stays true while a
// removal of the VIP keeps failing: the address is still ours (see "Who holds the VIP" at the top of this file).
func (c *Cluster) IsLeader() bool { return c.hold.holding.Load() }

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
		if ok != c.lead.pingOK.Swap(ok) {
			c.log.Warn("ping targets", zap.Bool("reachable", ok), zap.Strings("targets", c.cfg.PingTargets))
			c.mem.pokeMeta()
			c.lead.poke()
		}
	}
}
