package statuspage

import (
	"time"

	"github.com/hapbx/hapbx/internal/event"
)

// Source gives the page what it shows, taken afresh for each request.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc is a function used as a Source.
type SourceFunc func() Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() Snapshot { return f() }

// TrunkSource lists the SIP trunks and their registration state. hapbx
// has no trunks yet: without one the page marks the place (WithTrunks).
type TrunkSource interface {
	Trunks() []Trunk
}

// Snapshot is everything the page shows, as of At.
type Snapshot struct {
	At      time.Time
	Node    string
	Version string
	Started time.Time
	// Routing is failover.routing (active-standby or balance).
	Routing string
	// Active is the backend this proxy sends new calls to ("" when none
	// is usable); LeaderActive the one the VIP holder decided.
	Active       string
	LeaderActive string
	// Cluster is nil for a proxy without a cluster (and without a VIP).
	Cluster  *Cluster
	Backends []Backend
	// Cold is nil in hot standby.
	Cold          *Cold
	Registrations Registrations
	Calls         Calls
	// Events are the last events, newest first.
	Events []event.Event
}

// Cluster is the proxies' pair (or more) and the VIP.
type Cluster struct {
	VIP string
	// Holders are the members that announce having the VIP: one normally,
	// none while it moves, two only if a removal failed.
	Holders []string
	// HeldHere: this proxy has the VIP on its interface.
	HeldHere bool
	Leader   string
	Quorum   bool
	Members  []Member
}

// Member is one cluster member as this proxy sees it.
type Member struct {
	Name    string
	Role    string
	State   string
	VIPHeld bool
}

// Backend is one Asterisk as health sees it.
type Backend struct {
	Name      string
	Address   string
	Transport string
	// State is unknown, up, suspect or down; Reason why, since Since.
	State  string
	Reason string
	Since  time.Time
	// SIP and AMI are the last result of each check ("" when not run).
	SIP string
	AMI string
}

// Cold is the cold standby coordinator's view.
type Cold struct {
	// Holder is the node that holds (or is being given) the resource
	// group; Phase what the coordinator does; Blocked why automatic
	// promotion does not happen ("" when it is not blocked).
	Holder  string
	Phase   string
	Blocked string
	Nodes   []ColdNode
	// LastMove is the last move (nil when none yet).
	LastMove *Move
}

// Move is one move of the resource group.
type Move struct {
	From, To string
	// Manual: an operator's switchover, not a failover.
	Manual bool
	Reason string
	// At is when the old holder went down (or the operator asked); Took
	// the time from then until the group was started (0: not started).
	At     time.Time
	Took   time.Duration
	Fenced bool
	Error  string
}

// ColdNode is one PBX node as its agent last reported it.
type ColdNode struct {
	Name      string
	Health    string
	Reachable bool
	Error     string
	// Group is the resource group's state: stopped, starting, started,
	// stopping or failed.
	Group      string
	DRBDRole   string
	Disk       string
	PeerRole   string
	PeerDisk   string
	Connection string
	Mounted    string
	Service    string
	SplitBrain bool
}

// Registrations are the phones' bindings this proxy holds.
type Registrations struct {
	Bindings int
	AORs     int
	// StoreError is the persistent store's last problem ("" when healthy).
	StoreError string
}

// Calls are the calls in progress through this proxy.
type Calls struct {
	Dialogs int
	// MediaSessions is -1 when the media relay is off.
	MediaSessions int
}

// Trunk is one SIP trunk towards a provider.
type Trunk struct {
	Name     string
	Provider string
	// State is the registration's state (registered, failed, ...), with
	// its reason, since Since.
	State  string
	Reason string
	Since  time.Time
}
