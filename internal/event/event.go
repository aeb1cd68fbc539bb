package event

import "time"

// Kind says what an Event is about.
type Kind string

// Kinds.
const (
	// Backend: a backend's health state changed (Subject: the backend).
	Backend Kind = "backend"
	// Failover: the active backend changed (Subject: the new one, "" when
	// none is usable).
	Failover Kind = "failover"
	// Cold: a cold standby move started, fenced, ended or was blocked
	// (Subject: the node taking the group, or the one concerned).
	Cold Kind = "cold"
	// VIP: this proxy added or removed the VIP (Subject: this node).
	VIP Kind = "vip"
	// Leader: the raft leader changed (Subject: the new leader).
	Leader Kind = "leader"
	// Member: a cluster member joined or was lost (Subject: the member).
	Member Kind = "member"
)

// Event is one change an operator wants to see.
type Event struct {
	At      time.Time `json:"at"`
	Kind    Kind      `json:"kind"`
	Subject string    `json:"subject,omitempty"`
	Text    string    `json:"text"`
	// Warn marks changes for the worse (a backend down, a failover, a
	// blocked move).
	Warn bool `json:"warn,omitempty"`
}

// Sink receives events. Components call Record with their own locks held,
// in the order of their changes: it must return at once and never call
// back into the component.
type Sink interface {
	Record(Event)
}

// Discard is the Sink of a component nobody listens to.
type Discard struct{}

// Record drops e.
func (Discard) Record(Event) {}
