package media

import (
	"encoding/json"
	"fmt"
)

// Decoders for the tests; production decodes in ApplyState (wireMessage).

func (k *KeepAlive) UnmarshalBinary(b []byte) error {
	if err := json.Unmarshal(b, k); err != nil {
		return fmt.Errorf("decode media keep-alive: %w", err)
	}
	return nil
}

func (r *SessionRecord) UnmarshalBinary(b []byte) error {
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("decode media session record: %w", err)
	}
	return nil
}

// free counts the port pairs not in use.
func (p *portPool) free() int {
	f := 0
	for _, u := range p.used {
		if !u {
			f++
		}
	}
	return f
}
