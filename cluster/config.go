package cluster

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// Role says what a node does in the cluster.
type Role int

const (
	// RoleProxy is a full member: it votes and may hold the VIP.
	RoleProxy Role = iota
	// RoleWitness votes in raft but never holds the VIP and never stays raft leader.
	RoleWitness
	// RoleService is a member that announces a service (a PBX node's storage agent is
	// one): a memberlist member only (same gossip keyring), never a raft voter, never
	// the VIP holder, never sent shared state. Its metadata tells the proxies which
	// backend it serves and where its API answers.
	RoleService
)

// String returns "proxy", "witness" or "agent": RoleService keeps the name that
// storage agents and proxies of earlier versions announce and look for.
func (r Role) String() string {
	switch r {
	case RoleWitness:
		return "witness"
	case RoleService:
		return "agent"
	}
	return "proxy"
}

// Peer is one raft voter of the static cluster. Every voter lists every voter, itself
// included, identically: the list is the raft bootstrap configuration. A service member lists
// the voters it joins (name optional, raft ignored).
type Peer struct {
	// Name is the node name (memberlist name and raft server ID).
	Name string `yaml:"name"`
	// Gossip is the memberlist address host:port (UDP and TCP) used to join.
	Gossip string `yaml:"gossip"`
	// Raft is the raft TCP address host:port other voters dial.
	Raft string `yaml:"raft"`
}

// Timing holds the failure-detection knobs. The defaults are tuned for a 2–3 node LAN
// with sub-millisecond RTT; see leadership.go for why LeaderLease < HeartbeatTimeout matters.
type Timing struct {
	// HeartbeatTimeout: a follower that has not heard the leader for this long starts
	// an election (at once: see electionWatch in leadership.go).
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`
	// ElectionTimeout: a candidate that has not won within this long (randomised) retries.
	ElectionTimeout time.Duration `yaml:"election_timeout"`
	// LeaderLease: the holder keeps the VIP while a majority of voters (itself counted)
	// accepted a heartbeat sent less than this long ago. At most HeartbeatTimeout minus
	// a tenth of it, the lease tick (HeartbeatTimeout/20, at least 5ms) and 1ms
	// (leadership.go: timing argument).
	LeaderLease time.Duration `yaml:"leader_lease"`
	// ProbeInterval and ProbeTimeout drive memberlist's failure detector.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	ProbeTimeout  time.Duration `yaml:"probe_timeout"`
	// SuspicionMult scales how long a suspected member has to refute before it is dead.
	SuspicionMult int `yaml:"suspicion_mult"`
	// GossipInterval is how often queued broadcasts are gossiped.
	GossipInterval time.Duration `yaml:"gossip_interval"`
	// PushPullInterval is the period of the full memberlist state exchange.
	PushPullInterval time.Duration `yaml:"push_pull_interval"`
	// JoinRetryMax caps the exponential backoff between join attempts.
	JoinRetryMax time.Duration `yaml:"join_retry_max"`
}

// VIPConfig is the virtual address the leader holds.
type VIPConfig struct {
	// Address is the VIP with its prefix length, e.g. 192.168.1.13/24 or 2001:db8::13/64.
	Address string `yaml:"address"`
	// Interface is the link the VIP is added to, e.g. eth0.
	Interface string `yaml:"interface"`
	// GARPCount is how many gratuitous ARPs (or unsolicited NAs) are sent on takeover.
	GARPCount int `yaml:"garp_count"`
	// GARPInterval is the pause between two of them.
	GARPInterval time.Duration `yaml:"garp_interval"`
}

// Config is the `cluster:` section.
type Config struct {
	// Name of this node; must appear in Peers. Default: the host name.
	Name string `yaml:"name"`
	// Bind is the memberlist listen address host:port.
	Bind string `yaml:"bind"`
	// Advertise is the memberlist address others reach; default: this node's peers[].gossip.
	Advertise string `yaml:"advertise"`
	// RaftBind is the raft listen address; default: 0.0.0.0 with the port of peers[].raft.
	RaftBind string `yaml:"raft_bind"`
	// Peers lists every voter (proxies and witness), this node included.
	Peers []Peer `yaml:"peers"`
	// SecretFile holds base64 gossip keys (16, 24 or 32 bytes), one per line; the first
	// encrypts, all decrypt (for key rotation). Lines starting with # are ignored.
	SecretFile string `yaml:"secret_file"`
	// Priority: the highest-priority healthy proxy should hold the VIP.
	Priority int `yaml:"priority"`
	// Failback: hand the VIP back to a higher-priority proxy when it returns.
	Failback bool `yaml:"failback"`
	// FailbackDelay: how long a higher-priority proxy must have been up before the VIP
	// is handed back to it.
	FailbackDelay time.Duration `yaml:"failback_delay"`
	// DataDir keeps raft's term, vote, log and snapshots across restarts.
	DataDir string `yaml:"data_dir"`
	// PingTargets: host:port list; a node that reaches none of them must not hold the VIP.
	// A TCP connect that succeeds or is refused counts as reached. Empty: no check.
	PingTargets []string `yaml:"ping_targets"`
	// PingInterval and PingTimeout pace the ping target checks.
	PingInterval time.Duration `yaml:"ping_interval"`
	PingTimeout  time.Duration `yaml:"ping_timeout"`
	// Timing tunes failure detection.
	Timing Timing `yaml:"timing"`
	// VIP is the address the leader holds. A witness ignores it.
	VIP VIPConfig `yaml:"vip"`
}

// leaseTick is how often the leader re-evaluates its lease.
func (t Timing) leaseTick() time.Duration { return max(t.HeartbeatTimeout/20, 5*time.Millisecond) }

// maxLease is the longest leader_lease the timing argument in leadership.go allows.
func (t Timing) maxLease() time.Duration {
	return t.HeartbeatTimeout - t.HeartbeatTimeout/10 - t.leaseTick() - checkNudge
}

// DefaultConfig returns the defaults; Peers, SecretFile and VIP must still be set.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Name:          host,
		Bind:          "0.0.0.0:7946",
		Priority:      100,
		Failback:      false,
		FailbackDelay: 2 * time.Second,
		DataDir:       "/var/lib/hapbx/cluster",
		PingInterval:  1 * time.Second,
		PingTimeout:   500 * time.Millisecond,
		Timing: Timing{
			HeartbeatTimeout: 250 * time.Millisecond,
			ElectionTimeout:  250 * time.Millisecond,
			LeaderLease:      200 * time.Millisecond,
			ProbeInterval:    200 * time.Millisecond,
			ProbeTimeout:     100 * time.Millisecond,
			SuspicionMult:    3,
			GossipInterval:   50 * time.Millisecond,
			PushPullInterval: 15 * time.Second,
			JoinRetryMax:     5 * time.Second,
		},
		VIP: VIPConfig{
			Interface:    "eth0",
			GARPCount:    3,
			GARPInterval: 200 * time.Millisecond,
		},
	}
}

func checkHostPort(key, v string, needHost bool) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("%s: %q is not host:port: %w", key, v, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%s: port %q must be 1..65535", key, port)
	}
	if host == "" {
		if needHost {
			return fmt.Errorf("%s: %q needs a host", key, v)
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%s: host %q must be an IP address", key, host)
	}
	if needHost {
		if a, _ := netip.ParseAddr(host); a.IsUnspecified() {
			return fmt.Errorf("%s: %q must be a reachable address, not unspecified", key, v)
		}
	}
	return nil
}

// Validate reports every problem of the section, keys relative to `cluster:`.
func (c Config) Validate() error { return c.validate(RoleProxy) }

// ValidateWitness is Validate for a witness: the VIP and ping targets are not needed.
func (c Config) ValidateWitness() error { return c.validate(RoleWitness) }

// ValidateService is Validate for a service member: only name, bind, advertise, peers (the voters'
// gossip addresses to join), secret_file and the memberlist timing are used; raft,
// data_dir, priority, failback, ping and VIP keys are ignored.
func (c Config) ValidateService() error { return c.validate(RoleService) }

func (c Config) validate(role Role) error {
	if role == RoleService {
		return c.validateService()
	}
	errs := c.memberProblems()
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.RaftBind != "" {
		if err := checkHostPort("raft_bind", c.RaftBind, false); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Peers) < 3 {
		add("peers: need at least 3 voters (two proxies and a witness), got %d", len(c.Peers))
	}
	names := map[string]bool{}
	self := false
	for i, p := range c.Peers {
		k := fmt.Sprintf("peers[%d]", i)
		if p.Name == "" {
			add("%s.name: must not be empty", k)
		} else if names[p.Name] {
			add("%s.name: %q listed twice", k, p.Name)
		}
		names[p.Name] = true
		if p.Name == c.Name {
			self = true
		}
		if err := checkHostPort(k+".gossip", p.Gossip, true); err != nil {
			errs = append(errs, err)
		}
		if err := checkHostPort(k+".raft", p.Raft, true); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Name != "" && len(c.Peers) > 0 && !self {
		add("peers: this node %q is not listed", c.Name)
	}
	if c.DataDir == "" {
		add("data_dir: must be set (raft must remember its term and vote)")
	}
	if c.FailbackDelay < 0 {
		add("failback_delay: must be >= 0")
	}
	t := c.Timing
	for _, d := range []struct {
		k string
		v time.Duration
	}{{"timing.heartbeat_timeout", t.HeartbeatTimeout}, {"timing.election_timeout", t.ElectionTimeout},
		{"timing.leader_lease", t.LeaderLease}} {
		if d.v <= 0 {
			add("%s: must be > 0", d.k)
		}
	}
	if t.HeartbeatTimeout > 0 && t.HeartbeatTimeout < 10*time.Millisecond {
		add("timing.heartbeat_timeout: %s is below raft's 10ms minimum", t.HeartbeatTimeout)
	}
	if t.ElectionTimeout > 0 && t.ElectionTimeout < 10*time.Millisecond {
		add("timing.election_timeout: %s is below raft's 10ms minimum", t.ElectionTimeout)
	}
	if t.LeaderLease > 0 && t.LeaderLease < 5*time.Millisecond {
		add("timing.leader_lease: %s is below raft's 5ms minimum", t.LeaderLease)
	}
	// The safety argument (leadership.go): the old holder must drop the VIP before a new leader
	// can exist, i.e. lease + check slack must stay below the heartbeat timeout.
	if t.LeaderLease > 0 && t.HeartbeatTimeout > 0 && t.LeaderLease > t.maxLease() {
		add("timing.leader_lease: %s must be at most %s (timing.heartbeat_timeout %s less a tenth, the lease tick %s and 1ms) so a cut-off holder releases the VIP before a new leader can be elected",
			t.LeaderLease, t.maxLease(), t.HeartbeatTimeout, t.leaseTick())
	}
	if role == RoleProxy {
		if c.VIP.Address == "" {
			add("vip.address: must be set, e.g. 192.168.1.13/24")
		} else if _, err := netip.ParsePrefix(c.VIP.Address); err != nil {
			add("vip.address: %q is not address/prefix: %v", c.VIP.Address, err)
		}
		if c.VIP.Interface == "" {
			add("vip.interface: must be set")
		}
		if c.VIP.GARPCount < 1 {
			add("vip.garp_count: must be >= 1")
		}
		if c.VIP.GARPInterval <= 0 {
			add("vip.garp_interval: must be > 0")
		}
		for i, p := range c.PingTargets {
			if err := checkHostPort(fmt.Sprintf("ping_targets[%d]", i), p, true); err != nil {
				errs = append(errs, err)
			}
		}
		if len(c.PingTargets) > 0 {
			if c.PingInterval <= 0 {
				add("ping_interval: must be > 0")
			}
			if c.PingTimeout <= 0 {
				add("ping_timeout: must be > 0")
			}
		}
	}
	return errors.Join(errs...)
}

func (c Config) validateService() error {
	errs := c.memberProblems()
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Peers) == 0 {
		add("peers: list the voters' gossip addresses to join (the proxies and the witness)")
	}
	for i, p := range c.Peers {
		k := fmt.Sprintf("peers[%d]", i)
		if p.Name != "" && p.Name == c.Name {
			add("%s.name: %q is this member's own name: a service member is not a voter and needs a name no voter has", k, p.Name)
		}
		if err := checkHostPort(k+".gossip", p.Gossip, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// memberProblems checks what every member needs to gossip, voter or
// service member: its name and addresses, the key file, memberlist's timing.
func (c Config) memberProblems() []error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Name == "" {
		add("name: must not be empty")
	}
	if c.Bind == "" {
		add("bind: must not be empty")
	} else if err := checkHostPort("bind", c.Bind, false); err != nil {
		errs = append(errs, err)
	}
	if c.Advertise != "" {
		if err := checkHostPort("advertise", c.Advertise, true); err != nil {
			errs = append(errs, err)
		}
	}
	if c.SecretFile == "" {
		add("secret_file: must be set (gossip is always encrypted)")
	}
	t := c.Timing
	for _, d := range []struct {
		k string
		v time.Duration
	}{{"timing.probe_interval", t.ProbeInterval}, {"timing.probe_timeout", t.ProbeTimeout},
		{"timing.gossip_interval", t.GossipInterval}, {"timing.push_pull_interval", t.PushPullInterval},
		{"timing.join_retry_max", t.JoinRetryMax}} {
		if d.v <= 0 {
			add("%s: must be > 0", d.k)
		}
	}
	if t.ProbeTimeout > t.ProbeInterval && t.ProbeInterval > 0 {
		add("timing.probe_timeout: %s must not exceed timing.probe_interval %s", t.ProbeTimeout, t.ProbeInterval)
	}
	if t.SuspicionMult < 1 {
		add("timing.suspicion_mult: must be >= 1")
	}
	return errs
}

func (c Config) self() Peer {
	for _, p := range c.Peers {
		if p.Name == c.Name {
			return p
		}
	}
	return Peer{}
}

// LoadKeyring reads a secret file: base64 keys of 16, 24 or 32 bytes, one per line, the
// first one primary.
func LoadKeyring(path string) (*memberlist.Keyring, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err // names the file
	}
	return parseKeyring(path, string(b))
}

func parseKeyring(path, text string) (*memberlist.Keyring, error) {
	var keys [][]byte
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("secret_file %s line %d: not base64: %w", path, n+1, err)
		}
		if l := len(k); l != 16 && l != 24 && l != 32 {
			return nil, fmt.Errorf("secret_file %s line %d: key is %d bytes, want 16, 24 or 32: %w", path, n+1, l, ErrBadKey)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("secret_file %s: no key: %w", path, ErrBadKey)
	}
	kr, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, fmt.Errorf("secret_file %s: %w", path, err)
	}
	return kr, nil
}
