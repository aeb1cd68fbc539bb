package registrar

import "go.uber.org/zap"

// StateSnapshot returns every unexpired record, encoded: the full state for a
// proxy that joins.
func (r *Registrar) StateSnapshot() [][]byte {
	recs := r.Records()
	out := make([][]byte, 0, len(recs))
	for _, rec := range recs {
		if b, err := rec.MarshalBinary(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// ApplyState merges encoded records from a peer; undecodable ones are logged
// and skipped.
func (r *Registrar) ApplyState(raw [][]byte) {
	recs := make([]Record, 0, len(raw))
	for _, b := range raw {
		rec, err := DecodeRecord(b)
		if err != nil {
			r.log.Warn("bad registrar record from peer", zap.Error(err))
			continue
		}
		recs = append(recs, rec)
	}
	if _, err := r.Merge(recs); err != nil {
		r.log.Warn("registrar merge", zap.Error(err))
	}
}

// StateChanges passes every local change (OnChange), encoded, to send. Every
// proxy sends its own changes, holder or not.
func (r *Registrar) StateChanges(send func([]byte) error, _ func() bool) {
	r.OnChange(func(rec Record) {
		b, err := rec.MarshalBinary()
		if err != nil {
			return
		}
		if err := send(b); err != nil {
			r.log.Debug("registrar record not broadcast", zap.Error(err))
		}
	})
}
