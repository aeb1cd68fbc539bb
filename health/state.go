package health

import (
	"fmt"
	"time"
)

// State is the health of one backend.
type State int

// States. Suspect is an up backend that failed once (a probe or a request
// the proxy forwarded); it is still routable but is probed faster and
// tried last.
const (
	StateUnknown State = iota
	StateUp
	StateSuspect
	StateDown
)

var stateNames = [...]string{"unknown", "up", "suspect", "down"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int(s))
	}
	return stateNames[s]
}

// MarshalText makes State a JSON string.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a State name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("unknown health state %q", b)
}

// Routable reports whether new requests may be sent to a backend in s.
func (s State) Routable() bool { return s == StateUp || s == StateSuspect }

// Status is the current health of one backend, as /api/v1/status shows it.
type Status struct {
	Name      string    `json:"name"`
	Address   string    `json:"address"`
	Transport string    `json:"transport"`
	State     State     `json:"state"`
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"`
	// SIP and AMI describe the last result of each check ("" when not run).
	// AMI starts with "not configured" when require lists ami but the
	// backend has no AMI settings: only SIP is checked then.
	SIP string `json:"sip,omitempty"`
	AMI string `json:"ami,omitempty"`
}

// Change is one state transition of one backend. A subscriber first gets
// one Change per backend with From equal to To (the state at subscription),
// then every transition in order.
type Change struct {
	Name   string    `json:"name"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
	// Removed marks a backend dropped by SetTargets; To is then StateDown.
	Removed bool `json:"removed,omitempty"`
}
