package registrar

import (
	"errors"
	"fmt"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// admit checks that the AOR entry e (nil: none yet) can take the contacts
// keyed in add (new or renewed) while losing those in drop. max_bindings
// counts only the records the table does not hold yet, net of the ones
// dropped; max_bindings_per_aor the unexpired bindings the AOR would have.
// Only a new binding is refused (RFC 3261 10.3 lets a registrar refuse
// one): a renewal or a removal always passes, even over a limit lowered
// since, or a table filled by merges. Callers hold r.mu (read is enough).
func (r *Registrar) admit(aor string, e *aorEntry, add, drop map[string]bool, now time.Time) error {
	fresh, freed := 0, 0 // table records added and dropped
	newLive, after := 0, 0
	if e != nil {
		for i := range e.recs {
			en := &e.recs[i]
			switch {
			case en.rec.Deleted || add[en.ckey]:
			case drop[en.ckey]:
				freed++
			case en.rec.Binding.Expires.After(now):
				after++
			}
		}
	}
	for k := range add {
		after++
		i := -1
		if e != nil {
			i = e.find(k)
		}
		switch {
		case i < 0 || e.recs[i].rec.Deleted:
			fresh++
			newLive++
		case !e.recs[i].rec.Binding.Expires.After(now):
			newLive++ // held until purged, but reaches no one: new to the AOR
		}
	}
	if fresh > 0 && r.tab.bindings+fresh-freed > r.cfg.MaxBindings {
		return fmt.Errorf("%w: %d bindings held, max_bindings %d, refusing %d new for %s",
			ErrFull, r.tab.bindings, r.cfg.MaxBindings, fresh, aor)
	}
	if newLive > 0 && after > r.cfg.MaxBindingsPerAOR {
		return fmt.Errorf("%w: %s would have %d bindings, max_bindings_per_aor %d",
			ErrAORFull, aor, after, r.cfg.MaxBindingsPerAOR)
	}
	return nil
}

// Fits reports, before a REGISTER goes to a backend, whether the bindings
// it asks for could be kept: ErrFull or ErrAORFull when it would add a
// binding beyond max_bindings or max_bindings_per_aor, so the phone gets
// 503 without the backend ever holding a binding hapbx cannot. Refreshes,
// removals, queries and requests it cannot read pass (the backend answers
// those); Save checks again on the 2xx, which may differ.
func (r *Registrar) Fits(req *sip.Request) error {
	if req == nil || req.Method != sip.REGISTER || req.To() == nil {
		return nil
	}
	aor, err := aorFromURI(&req.To().Address)
	if err != nil {
		return nil
	}
	cts := contacts(req)
	hdr, hasHdr := headerExpires(req)
	add := make(map[string]bool, len(cts))
	drop := make(map[string]bool)
	for _, c := range cts {
		if c.Address.Wildcard {
			return nil // Contact: * removes every binding
		}
		k := contactKey(&c.Address)
		if requestExpires(&r.cfg, c, hdr, hasHdr) == 0 {
			drop[k] = true
		} else {
			add[k] = true
		}
	}
	if len(add) == 0 {
		return nil
	}
	key, _ := r.tab.key(aor)
	now := r.now()
	r.mu.RLock()
	err = r.admit(aor, r.tab.aors[key], add, drop, now)
	r.mu.RUnlock()
	if err != nil {
		r.refuse(err)
	}
	return err
}

// refuse counts and logs a REGISTER whose bindings are not kept. A full
// table is logged when it starts refusing and when it has room again
// (noteRoom), not once per REGISTER: a storm of phones must not flood the
// log; the count is in hapbx_registrar_refused_total.
func (r *Registrar) refuse(err error) {
	switch {
	case errors.Is(err, ErrFull):
		r.m.refused.WithLabelValues(refusedFull).Inc()
		if !r.full.Swap(true) {
			r.log.Warn("binding table full: new registrations get 503 until bindings expire or are removed",
				zap.Int("max_bindings", r.cfg.MaxBindings), zap.Error(err))
		}
	case errors.Is(err, ErrAORFull):
		r.m.refused.WithLabelValues(refusedAOR).Inc()
		r.log.Debug("registration refused", zap.Error(err))
	case errors.Is(err, ErrClosed):
		r.m.refused.WithLabelValues(refusedClosed).Inc()
	default:
		r.m.refused.WithLabelValues(refusedInvalid).Inc()
		r.log.Debug("registration refused", zap.Error(err))
	}
}

// noteRoom logs the end of a full table. Callers hold r.mu.
func (r *Registrar) noteRoom() {
	if r.tab.bindings < r.cfg.MaxBindings && r.full.Load() && r.full.CompareAndSwap(true, false) {
		r.log.Info("binding table has room again", zap.Int("bindings", r.tab.bindings),
			zap.Int("max_bindings", r.cfg.MaxBindings))
	}
}
