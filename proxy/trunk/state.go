package trunk

import (
	"encoding/json"
	"fmt"
	"time"
)

// State is a registration at a provider as the cluster replicates it: the
// twin that takes the VIP continues it from here (Registration.Continue),
// with the same Call-ID and the next CSeq, so the provider sees one
// registration refreshed, not a new one.
type State struct {
	Trunk      string        `json:"trunk"`
	Registered bool          `json:"registered"`
	Expires    time.Time     `json:"expires,omitzero"` // when the provider's binding runs out
	Granted    time.Duration `json:"granted,omitempty"`
	Asked      time.Duration `json:"asked,omitempty"`  // the expiry asked for (raised by a 423)
	Refresh    time.Time     `json:"refresh,omitzero"` // when the next REGISTER is due
	CallID     string        `json:"call_id"`
	FromTag    string        `json:"from_tag"`
	CSeq       uint32        `json:"cseq"`
	Host       string        `json:"host,omitempty"` // the provider host it is registered through
	LastError  string        `json:"last_error,omitempty"`
}

// Marshal encodes s for replication.
func (s State) Marshal() ([]byte, error) { return json.Marshal(s) }

// UnmarshalState decodes what State.Marshal encoded.
func UnmarshalState(b []byte) (State, error) {
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("trunk registration state: %w", err)
	}
	return s, nil
}
