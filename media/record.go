package media

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// SessionRecord is what a standby needs to recreate a session with the same
// ports: the cluster carries it (MarshalBinary) and the standby calls Import.
type SessionRecord struct {
	CallID  string         `json:"call_id"`
	State   string         `json:"state"`
	Address netip.Addr     `json:"address"`
	Created time.Time      `json:"created"`
	Streams []StreamRecord `json:"streams"`
	// CallerTag is the From tag of the caller (leg A), so the twin's proxy
	// can tell the legs of in-dialog requests apart after a failover.
	CallerTag string `json:"caller_tag,omitempty"`
	// Bodies are each leg's last SDP and Answer the leg whose came last,
	// so the twin can join the call with another (Join) after a failover.
	Bodies [2]string `json:"bodies,omitzero"`
	Answer Leg       `json:"answer,omitempty"`
	// Version grows with every change of the session's replicated content on
	// the holder (max(previous+1, Unix nanoseconds), so it keeps growing on a
	// new holder). Import ignores a record not newer than what it has; 0 is a
	// record from a peer without versions and always applies.
	Version uint64 `json:"version,omitempty"`
}

// AliveSession names a session the VIP holder still has, unchanged since
// the record of Version.
type AliveSession struct {
	CallID  string `json:"c"`
	Version uint64 `json:"v"`
}

// KeepAlive is the holder's periodic "still there" for sessions whose
// content did not change since the last Refresh: a standby keeps a replica
// only while it hears about it (see Relay.Refresh, Relay.KeepAlive).
type KeepAlive struct {
	Sessions []AliveSession `json:"alive"`
}

// MarshalBinary encodes the keep-alive as JSON.
func (k KeepAlive) MarshalBinary() ([]byte, error) { return json.Marshal(k) }

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
	// Signal is the IP each leg's SDP-carrying SIP came from (invalid if
	// unknown), so the twin accepts media from the same addresses after a
	// failover. A record without it (a peer of an earlier build) allows the
	// latched source's IP instead.
	Signal [2]netip.Addr `json:"signal,omitzero"`
}

// MarshalBinary encodes the record (JSON, so it stays readable in logs and dumps).
func (r SessionRecord) MarshalBinary() ([]byte, error) { return json.Marshal(r) }

func (s *session) state() string {
	if s.seen[LegA] && s.seen[LegB] {
		return StateAnswered
	}
	return StateOffered
}

// nextVersion keeps versions growing on one holder and, with clocks in
// sync, across a takeover.
func nextVersion(prev uint64) uint64 {
	return max(prev+1, uint64(time.Now().UnixNano()))
}

// releasedRecord is the record that ends callID on a standby. Its version
// outranks every record of the session made before (after is the session's
// last version, 0 if none), even one made by a holder whose clock ran ahead,
// so a stale record reordered behind it cannot bring the session back.
func releasedRecord(callID string, after uint64) SessionRecord {
	return SessionRecord{CallID: callID, State: StateReleased, Version: nextVersion(after)}
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

// Refresh is the VIP holder's periodic replication step. It returns the
// records of the sessions whose replicated content (endpoints, latches,
// hold, state, caller tag; not counters) changed since the previous Refresh,
// typically a latch learned from the first packets, plus a released record
// for each session idle_timeout ended since, and a keep-alive for all
// others. It also adopts replicas as this relay's own sessions: only the
// holder calls Refresh, so from now on idle_timeout applies to them,
// counted from now. r.mu is held while the records are built.
func (r *Relay) Refresh() (changed []SessionRecord, alive []AliveSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.nanotime()
	for _, s := range r.sessions {
		if s.replica {
			s.replica = false
			s.touched = now
		}
		rec := r.recordLocked(s)
		if rec.Version != s.reported {
			s.reported = rec.Version
			changed = append(changed, rec)
			continue
		}
		alive = append(alive, AliveSession{CallID: s.callID, Version: s.version})
	}
	for _, rel := range r.idleGone {
		if r.sessions[rel.CallID] == nil {
			changed = append(changed, rel)
		}
	}
	r.idleGone = nil
	slices.SortFunc(changed, func(a, b SessionRecord) int { return strings.Compare(a.CallID, b.CallID) })
	slices.SortFunc(alive, func(a, b AliveSession) int { return strings.Compare(a.CallID, b.CallID) })
	return changed, alive
}

// KeepAlive applies the holder's keep-alive on a standby: each named replica
// lives on for another replica lifetime. It returns how many named sessions
// this relay lacks or has at an older version (a record was lost; the next
// change or full sync repairs it).
func (r *Relay) KeepAlive(ka KeepAlive) (stale int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.nanotime()
	for _, a := range ka.Sessions {
		s := r.sessions[a.CallID]
		if s == nil {
			stale++
			continue
		}
		s.heard = now
		if s.version < a.Version {
			stale++
		}
	}
	return stale
}

// SetCallerTag remembers the From tag of callID's caller (leg A); it is
// replicated with the session (SessionRecord.CallerTag). It may come before
// the call's first Anchor.
func (r *Relay) SetCallerTag(callID, tag string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.sessions[callID]; s != nil {
		s.callerTag = tag
		return
	}
	if len(r.pendingTags) < maxPendingTags {
		r.pendingTags[callID] = pendingTag{tag: tag, at: r.nanotime()}
	}
}

// CallerTag returns the caller's From tag of callID's session, set locally
// or carried by a replicated record.
func (r *Relay) CallerTag(callID string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.sessions[callID]; s != nil && s.callerTag != "" {
		return s.callerTag, true
	}
	return "", false
}

// recordLocked returns s's record; it bumps s's version when the content
// differs from the last record made. r.mu must be held.
func (r *Relay) recordLocked(s *session) SessionRecord {
	rec := r.contentLocked(s)
	if !sameContent(rec, s.last) {
		s.version = nextVersion(s.version)
		s.last = rec
	}
	rec.Version = s.version
	return rec
}

func sameContent(a, b SessionRecord) bool {
	return a.CallID == b.CallID && a.State == b.State && a.Address == b.Address &&
		a.CallerTag == b.CallerTag && a.Bodies == b.Bodies && a.Answer == b.Answer && slices.Equal(a.Streams, b.Streams)
}

func (r *Relay) contentLocked(s *session) SessionRecord {
	rec := SessionRecord{CallID: s.callID, State: s.state(), Address: r.addr, Created: s.created, CallerTag: s.callerTag,
		Bodies: [2]string{string(s.sdp[LegA]), string(s.sdp[LegB])}, Answer: s.sdpLast}
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
			if rtp.hasSig {
				sr.Signal[l] = netip.AddrFrom4(rtp.signal)
			}
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

// Import applies a record from the VIP holder: it recreates the session
// with the same relay ports, bound on this relay's address (the VIP;
// IP_FREEBIND lets a standby bind it before the address is local), or
// updates an existing one in place when its ports are unchanged, keeping its
// sockets and counters. A record not newer (Version) than the session's is
// ignored; so is one older than a released record of the same Call-ID.
// Latched sources are restored so media resumes without waiting for a packet.
// The session is a replica: it lives as long as records or keep-alives keep
// coming, not by idle_timeout, until packets arrive (this relay holds the
// VIP) or Refresh adopts it.
func (r *Relay) Import(rec SessionRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	now := r.nanotime()
	old := r.sessions[rec.CallID]
	if rec.State == StateReleased {
		if rec.Version != 0 {
			if tb, ok := r.tombs[rec.CallID]; !ok || tb.version < rec.Version {
				r.tombs[rec.CallID] = tombstone{version: rec.Version, at: now}
			}
		}
		if old != nil && (rec.Version == 0 || old.version <= rec.Version) {
			delete(r.sessions, rec.CallID)
			r.releaseLocked(old, "released_by_peer")
		}
		return nil
	}
	if rec.Version != 0 {
		if tb, ok := r.tombs[rec.CallID]; ok && rec.Version <= tb.version {
			return nil
		}
	}
	if old != nil {
		if rec.Version != 0 && rec.Version <= old.version {
			old.heard = now
			return nil
		}
		if samePorts(old, rec) {
			r.updateLocked(old, rec, now)
			return nil
		}
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
		s.created = r.now()
	}
	for i, sr := range rec.Streams {
		st, err := r.newStream(s, sr.Ports)
		if err != nil {
			r.releaseLocked(s, "import_failed")
			return fmt.Errorf("import %q stream %d ports %v: %w", rec.CallID, i, sr.Ports, err)
		}
		s.streams = append(s.streams, st)
	}
	r.updateLocked(s, rec, now)
	r.sessions[rec.CallID] = s
	return nil
}

// samePorts: rec keeps every stream of s on the same ports (it may add
// streams), so s can be updated without rebinding.
func samePorts(s *session, rec SessionRecord) bool {
	if len(rec.Streams) < len(s.streams) {
		return false
	}
	for i, st := range s.streams {
		if st.ports != rec.Streams[i].Ports {
			return false
		}
	}
	return true
}

// updateLocked sets s's replicated content from rec, binding the streams rec
// adds, and makes s a replica heard from now. r.mu must be held.
func (r *Relay) updateLocked(s *session, rec SessionRecord, now int64) {
	switch rec.State {
	case StateAnswered:
		s.seen = [2]bool{true, true}
	default:
		s.seen[LegA] = true
	}
	if rec.CallerTag != "" {
		s.callerTag = rec.CallerTag
	}
	for l, b := range rec.Bodies {
		if b != "" {
			s.sdp[l], s.sdpLast = []byte(b), rec.Answer
		}
	}
	for i := len(s.streams); i < len(rec.Streams); i++ {
		st, err := r.newStream(s, rec.Streams[i].Ports)
		if err != nil {
			r.log.Warn("replicated stream not bound", zap.String("call_id", rec.CallID), zap.Int("stream", i),
				zap.Ints("ports", rec.Streams[i].Ports[:]), zap.Error(err))
			break
		}
		s.streams = append(s.streams, st)
	}
	s.w.mu.Lock()
	for i, st := range s.streams {
		sr := rec.Streams[i]
		st.hold = sr.Hold
		for l := range 2 {
			restore(st.socks[l][0], sr.SDP[l], sr.Latched[l], sr.Signal[l])
			restore(st.socks[l][1], sr.SDPRTCP[l], sr.LatchedRTCP[l], sr.Signal[l])
			st.stats[l][0].clock = sr.Clock[l]
		}
	}
	s.w.mu.Unlock()
	// The restored latches go to the kernel at once: the rules match only
	// packets to the relay address, which reach this proxy once it holds
	// the VIP, and then need no user-space step.
	r.kern.syncSession(s)
	// The content as this relay sees it, so a later Export or Refresh
	// carries the holder's version unless something changes here.
	s.last = r.contentLocked(s)
	s.version = rec.Version
	if !s.replica {
		s.replica, s.replicaSince = true, now
	}
	s.heard = now
}

// restore sets a socket's SDP endpoint, latched source and signalling
// source to the holder's: an invalid address clears them (the holder's latch
// was reset by a new SDP). Without a signalling source (a record from an
// earlier build) the latched source's IP is allowed, as the holder accepted
// it. w.mu must be held.
func restore(k *sock, hint, latched netip.AddrPort, signal netip.Addr) {
	if hint.IsValid() && hint.Addr().Is4() {
		k.hint, k.hasHint = rawFromAddrPort(hint), true
	} else {
		k.hasHint = false
	}
	switch signal = signal.Unmap(); {
	case signal.Is4():
		k.signal, k.hasSig = signal.As4(), true
	case latched.IsValid() && latched.Addr().Is4():
		k.signal, k.hasSig = latched.Addr().As4(), true
	default:
		k.hasSig = false
	}
	if latched.IsValid() && latched.Addr().Is4() {
		raw := rawFromAddrPort(latched)
		if !k.latched || !sameAddr(&k.latch, &raw) {
			k.latch, k.latched = raw, true
			// Treat the restored source as just heard from so a stranger
			// cannot take the leg over right after failover; the holder's
			// learning window is over.
			k.lastLatc, k.learnEnd = k.w.nanotime(), 0
		}
	} else {
		k.latched = false
	}
}
