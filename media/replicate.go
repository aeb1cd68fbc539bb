package media

import (
	"encoding"
	"encoding/json"
	"slices"

	"go.uber.org/zap"
)

// outlet is where this relay's changes go, from StateChanges. A nil outlet
// (no cluster) sends nothing.
type outlet struct {
	send   func([]byte) error
	holder func() bool
	log    *zap.Logger
}

// keepAliveChunk bounds one keep-alive message (about 70 bytes a session).
const keepAliveChunk = 2000

// StateSnapshot returns every session's record, encoded: the full state for
// a proxy that joins.
func (r *Relay) StateSnapshot() [][]byte {
	recs := r.Export()
	out := make([][]byte, 0, len(recs))
	for _, rec := range recs {
		if b, err := rec.MarshalBinary(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// wireMessage is either a SessionRecord or a KeepAlive (its "alive" list is
// present): one channel, one decode; both proxies run the same release.
type wireMessage struct {
	SessionRecord
	Alive []AliveSession `json:"alive"`
}

// ApplyState imports records (Import) and applies keep-alives (KeepAlive)
// from the holder; undecodable ones are logged and skipped.
func (r *Relay) ApplyState(raw [][]byte) {
	for _, b := range raw {
		var m wireMessage
		if err := json.Unmarshal(b, &m); err != nil {
			r.log.Warn("bad media record from peer", zap.Error(err))
			continue
		}
		if m.Alive != nil {
			if stale := r.KeepAlive(KeepAlive{Sessions: m.Alive}); stale > 0 {
				r.log.Debug("media keep-alive names sessions missing or outdated here", zap.Int("sessions", stale))
			}
			continue
		}
		if err := r.Import(m.SessionRecord); err != nil {
			r.log.Warn("media session not imported", zap.String("call_id", m.CallID), zap.Error(err))
		}
	}
}

// StateChanges turns replication on: from now on Anchor and Release send
// the session's record, and every RefreshPeriod the VIP holder (holder())
// sends what Refresh returns. Call it once.
func (r *Relay) StateChanges(send func([]byte) error, holder func() bool) {
	out := &outlet{send: send, holder: holder, log: r.log}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.out = out
	r.wg.Add(1)
	// The VIP holder's periodic replication: records sent right after Anchor
	// carry no latched source yet, and a standby keeps a replica only while
	// it hears about it. Every proxy ticks; only the holder broadcasts (and,
	// by calling Refresh, adopts its replicas).
	go r.every(r.refreshEvery, func() {
		if out.holder() {
			r.refreshOnce(out)
		}
	})
}

// replicate sends callID's current record after a change by Anchor.
func (r *Relay) replicate(callID string) {
	r.mu.Lock()
	out := r.out
	r.mu.Unlock()
	if out == nil {
		return
	}
	if rec, ok := r.Record(callID); ok {
		_ = out.put(rec)
	}
}

// put sends a SessionRecord or a KeepAlive.
func (o *outlet) put(v encoding.BinaryMarshaler) error {
	if o == nil {
		return nil
	}
	b, err := v.MarshalBinary()
	if err == nil {
		err = o.send(b)
	}
	if err != nil {
		o.log.Debug("media state not broadcast", zap.Error(err))
	}
	return err
}

// refreshOnce sends the sessions changed since the last refresh and
// keep-alives for the rest; it stops at the first failed send (the cluster
// then resends the full state).
func (r *Relay) refreshOnce(out *outlet) (records, alive int) {
	changed, live := r.Refresh()
	for _, rec := range changed {
		if out.put(rec) != nil {
			return 0, 0
		}
	}
	for chunk := range slices.Chunk(live, keepAliveChunk) {
		if out.put(KeepAlive{Sessions: chunk}) != nil {
			return len(changed), 0
		}
	}
	return len(changed), len(live)
}
