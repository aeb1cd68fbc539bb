package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/event"
)

// Membership: hashicorp/memberlist (SWIM gossip), always encrypted with the keyring
// of secret_file (AES-GCM; first key encrypts, all decrypt). A node with a wrong key
// cannot join and logs "cannot join the cluster" at error level with the hint
// "gossip key does not match the peers' (check secret_file)"; the peers log the
// decryption failures with the same hint. Joining retries with exponential backoff
// (100 ms .. timing.join_retry_max) and keeps re-joining lost peers afterwards.
// memberlist's and raft's loggers are bridged to zap (logbridge.go).

// membership is memberlist and what its event callbacks reported.
type membership struct {
	keyring  *memberlist.Keyring
	service  ServiceInfo // RoleService: what the metadata announces
	ml       atomic.Pointer[memberlist.Memberlist]
	alive    atomic.Int64  // members alive, self included (from memberlist events)
	metaWake chan struct{} // asks metaLoop to re-announce our node metadata

	// Copies of memberlist's nodes taken in its event callbacks: the *Node pointers
	// memberlist.Members returns are mutated by memberlist without a lock we can take.
	mu     sync.RWMutex
	nodes  map[string]memberlist.Node
	states map[string]string
	upAt   map[string]time.Time // when a member last became alive
}

// nodeMeta is gossiped with each member (memberlist limits it to 512 bytes).
type nodeMeta struct {
	Role     string `json:"r"`
	Priority int    `json:"p"`
	PingOK   bool   `json:"ok"`
	// State: the node has registered state channels; others send it records only then
	// (a witness usually has none and is spared the full pushes).
	State bool `json:"s,omitempty"`
	// Backend and API: set by a service member (RoleService): the backend it serves and the
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
	// Backend and API are set for service members (RoleService).
	Backend string `json:"backend,omitempty"`
	API     string `json:"api,omitempty"`
	// VIPHeld: the member announces it has the VIP on its interface (for this node
	// itself: its own current state, not the gossiped one).
	VIPHeld bool `json:"vip_held"`
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
	mc.Keyring = c.mem.keyring
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
	c.mem.ml.Store(ml)
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
				alive[m.Addr] = true // a service member may list voters by address only
			}
		}
		for _, p := range c.cfg.Peers {
			if p.Name != c.cfg.Name && !alive[p.Name] && !alive[p.Gossip] {
				missing = append(missing, p.Gossip)
			}
		}
		wait := backoff
		if len(missing) > 0 {
			n, err := c.mem.ml.Load().Join(missing)
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

// pokeMeta asks metaLoop to re-announce our node metadata.
func (m *membership) pokeMeta() {
	select {
	case m.metaWake <- struct{}{}:
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
		case <-c.mem.metaWake:
		}
		if err := c.mem.ml.Load().UpdateNode(time.Second); err != nil {
			c.log.Debug("meta update not confirmed", zap.Error(err))
		}
	}
}

// Members lists the members memberlist has reported, this node included, sorted by name.
func (c *Cluster) Members() []Member {
	c.mem.mu.RLock()
	defer c.mem.mu.RUnlock()
	out := make([]Member, 0, len(c.mem.nodes))
	for name, n := range c.mem.nodes {
		var meta nodeMeta
		_ = json.Unmarshal(n.Meta, &meta)
		m := Member{Name: name, Addr: n.Address(), Role: meta.Role, Priority: meta.Priority, PingOK: meta.PingOK, State: c.mem.states[name],
			Backend: meta.Backend, API: meta.API, VIPHeld: meta.VIP}
		if name == c.cfg.Name {
			m.VIPHeld = c.hold.holding.Load()
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// node returns a copy of member name and whether it is alive.
func (m *membership) node(name string) (*memberlist.Node, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n, ok := m.nodes[name]
	return &n, ok && m.states[name] == "alive"
}

// stateful reports whether a member announced state channels in its metadata. A service
// member never gets state, whatever it announces: registrations and media sessions are the
// proxies' business.
func stateful(n *memberlist.Node) bool {
	var meta nodeMeta
	return json.Unmarshal(n.Meta, &meta) == nil && meta.State && meta.Role != RoleService.String()
}

// aliveNodes returns copies of the alive members other than self that take state
// records.
func (m *membership) aliveNodes(self string) []*memberlist.Node {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*memberlist.Node
	for name, n := range m.nodes {
		if name != self && m.states[name] == "alive" && stateful(&n) {
			n := n
			out = append(out, &n)
		}
	}
	return out
}

// record copies n; called from memberlist's event callbacks (under its node lock).
func (m *membership) record(n *memberlist.Node, state string) {
	cp := memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port,
		Meta: append([]byte(nil), n.Meta...)}
	m.mu.Lock()
	if state == "alive" && m.states[n.Name] != "alive" {
		m.upAt[n.Name] = time.Now()
	}
	m.nodes[n.Name] = cp
	m.states[n.Name] = state
	m.mu.Unlock()
}

// upSince returns when each member last became alive.
func (m *membership) upSince() map[string]time.Time {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return maps.Clone(m.upAt)
}

// delegate and events are the memberlist callbacks, as distinct method sets on Cluster.
type delegate Cluster

func (d *delegate) NodeMeta(limit int) []byte {
	c := (*Cluster)(d)
	hasState := c.state.registered()
	meta := nodeMeta{Role: c.role.String(), Priority: c.cfg.Priority, PingOK: c.role == RoleProxy && c.lead.pingOK.Load(), State: hasState,
		VIP: c.hold.holding.Load()}
	if c.role == RoleService {
		meta = nodeMeta{Role: c.role.String(), Backend: c.mem.service.Backend, API: c.mem.service.API}
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
func (d *delegate) LocalState(join bool) []byte { return nil }

func (d *delegate) MergeRemoteState(buf []byte, join bool) {}

type events Cluster

func (e *events) NotifyJoin(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mem.record(n, "alive")
	c.memberCount(1)
	if n.Name == c.cfg.Name {
		return
	}
	c.log.Info("member up", zap.String("member", n.Name), zap.String("addr", n.Address()))
	c.events.Record(event.Event{At: time.Now(), Kind: event.Member, Subject: n.Name, Text: "member " + n.Name + " up"})
	c.lead.poke()
	if c.state.registered() && stateful(n) && !c.closed.Load() {
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
	c.mem.record(n, st)
	c.memberCount(-1)
	c.log.Warn("member down", zap.String("member", n.Name), zap.String("state", st))
	c.events.Record(event.Event{At: time.Now(), Kind: event.Member, Subject: n.Name, Text: "member " + n.Name + " " + st, Warn: true})
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mem.record(n, "alive")
	c.lead.poke()
}

// memberCount runs inside memberlist's event callbacks, which hold its node lock: it
// must not call back into memberlist (NumMembers would deadlock).
func (c *Cluster) memberCount(delta int64) {
	c.m.members.Set(float64(c.mem.alive.Add(delta)))
}
