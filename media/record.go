package media

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// SessionRecord is what a standby needs to recreate a session with the same
// ports: the cluster carries it (MarshalBinary) and the standby calls Import.
type SessionRecord struct {
	CallID  string         `json:"call_id"`
	State   string         `json:"state"`
	Address netip.Addr     `json:"address"`
	Created time.Time      `json:"created"`
	Streams []StreamRecord `json:"streams"`
}

// StreamRecord is one m= line; index 0 of each array is leg A, 1 is leg B.
type StreamRecord struct {
	// Ports are the relay RTP ports facing each leg (RTCP = port+1).
	Ports [2]int `json:"ports"`
	// SDP and SDPRTCP are the endpoints the legs' SDP named (invalid if none yet).
	SDP     [2]netip.AddrPort `json:"sdp"`
	SDPRTCP [2]netip.AddrPort `json:"sdp_rtcp"`
	// Latched and LatchedRTCP are the sources the relay latched (invalid if none).
	Latched     [2]netip.AddrPort `json:"latched"`
	LatchedRTCP [2]netip.AddrPort `json:"latched_rtcp"`
	Hold        [2]bool           `json:"hold"`
	Clock       [2]uint32         `json:"clock"`
}

// MarshalBinary encodes the record (JSON, so it stays readable in logs and dumps).
func (r SessionRecord) MarshalBinary() ([]byte, error) { return json.Marshal(r) }

// UnmarshalBinary decodes a record produced by MarshalBinary.
func (r *SessionRecord) UnmarshalBinary(b []byte) error {
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("decode media session record: %w", err)
	}
	return nil
}

func (s *session) state() string {
	if s.seen[LegA] && s.seen[LegB] {
		return StateAnswered
	}
	return StateOffered
}

// Record returns the record of one session, to replicate a change.
func (r *Relay) Record(callID string) (SessionRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[callID]
	if s == nil {
		return SessionRecord{}, false
	}
	return r.recordLocked(s), true
}

// Export returns a record of every session, for replication to a standby.
func (r *Relay) Export() []SessionRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]SessionRecord, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, r.recordLocked(s))
	}
	slices.SortFunc(out, func(a, b SessionRecord) int { return strings.Compare(a.CallID, b.CallID) })
	return out
}

func (r *Relay) recordLocked(s *session) SessionRecord {
	rec := SessionRecord{CallID: s.callID, State: s.state(), Address: r.addr, Created: s.created}
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	for _, st := range s.streams {
		var sr StreamRecord
		sr.Ports = st.ports
		sr.Hold = st.hold
		for l := range 2 {
			rtp, rtcp := st.socks[l][0], st.socks[l][1]
			sr.SDP[l], sr.Latched[l] = endpoints(rtp)
			sr.SDPRTCP[l], sr.LatchedRTCP[l] = endpoints(rtcp)
			sr.Clock[l] = st.stats[l][0].clock
		}
		rec.Streams = append(rec.Streams, sr)
	}
	return rec
}

func endpoints(k *sock) (hint, latched netip.AddrPort) {
	if k.hasHint {
		hint = addrPortFromRaw(&k.hint)
	}
	if k.latched {
		latched = addrPortFromRaw(&k.latch)
	}
	return hint, latched
}

// Import recreates a session from a record with the same relay ports, bound
// on this relay's address (the VIP; IP_FREEBIND lets a standby bind it before
// the address is local). An existing session of the same Call-ID is replaced.
// Latched sources are restored so media resumes without waiting for a packet.
func (r *Relay) Import(rec SessionRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if rec.State == StateReleased {
		if old := r.sessions[rec.CallID]; old != nil {
			delete(r.sessions, rec.CallID)
			r.releaseLocked(old, "released_by_peer")
		}
		return nil
	}
	if old := r.sessions[rec.CallID]; old != nil {
		delete(r.sessions, rec.CallID)
		r.releaseLocked(old, "replaced_by_import")
	}
	if r.cfg.MaxSessions > 0 && len(r.sessions) >= r.cfg.MaxSessions {
		r.m.portExhausted.Inc()
		return fmt.Errorf("import %q: %w: max_sessions %d reached", rec.CallID, ErrNoPorts, r.cfg.MaxSessions)
	}
	s := &session{callID: rec.CallID, w: r.workers[r.next%len(r.workers)], created: rec.Created}
	r.next++
	if s.created.IsZero() {
		s.created = time.Now()
	}
	switch rec.State {
	case StateAnswered:
		s.seen = [2]bool{true, true}
	default:
		s.seen[LegA] = true
	}
	for i, sr := range rec.Streams {
		st, err := r.newStream(s, sr.Ports)
		if err != nil {
			r.releaseLocked(s, "import_failed")
			return fmt.Errorf("import %q stream %d ports %v: %w", rec.CallID, i, sr.Ports, err)
		}
		s.streams = append(s.streams, st)
		s.w.mu.Lock()
		st.hold = sr.Hold
		for l := range 2 {
			restore(st.socks[l][0], sr.SDP[l], sr.Latched[l])
			restore(st.socks[l][1], sr.SDPRTCP[l], sr.LatchedRTCP[l])
			st.stats[l][0].clock = sr.Clock[l]
		}
		s.w.mu.Unlock()
	}
	r.sessions[rec.CallID] = s
	return nil
}

func restore(k *sock, hint, latched netip.AddrPort) {
	if hint.IsValid() && hint.Addr().Is4() {
		k.hint, k.hasHint = rawFromAddrPort(hint), true
	}
	if latched.IsValid() && latched.Addr().Is4() {
		k.latch, k.latched = rawFromAddrPort(latched), true
		// Treat the restored source as just heard from so a stranger cannot
		// take the leg over right after failover.
		k.lastLatc = nanotime()
	}
}
