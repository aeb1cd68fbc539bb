package proxy

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// dialogRecord is a confirmed dialog as it travels to the twin proxy: what
// the twin needs to hang the call up, or keep it up with its linked call,
// when the backend dies after a proxy failover.
type dialogRecord struct {
	CallID     string   `json:"call_id"`
	FromTag    string   `json:"from_tag"`
	ToTag      string   `json:"to_tag"`
	Backend    string   `json:"backend,omitempty"`
	BackendTag string   `json:"backend_tag,omitempty"`
	From       string   `json:"from,omitempty"` // header values, as the BYE's
	To         string   `json:"to,omitempty"`
	Target     string   `json:"target,omitempty"`
	Routes     []string `json:"routes,omitempty"`
	Dest       string   `json:"dest,omitempty"`
	Network    string   `json:"network,omitempty"`
	CSeq       uint32   `json:"cseq,omitempty"`
	Expires    int64    `json:"expires,omitempty"` // RFC 4028 interval, ns
	PhoneRefr  bool     `json:"phone_refreshes,omitempty"`
	Confirmed  int64    `json:"confirmed,omitempty"` // Unix ns
	Partner    string   `json:"partner,omitempty"`   // the linked call's Call-ID
	Released   bool     `json:"released,omitempty"`
	Version    uint64   `json:"version"`
}

// DialogReplica carries the proxy's confirmed dialogs and the links between
// bridged legs to the twin proxy: it is a state channel of package cluster
// (StateSnapshot, ApplyState, StateChanges). Only the VIP holder hangs up
// or keeps up the calls of a dead backend and answers for joined calls; a
// standby keeps them and acts only if it takes the VIP, and a holder that
// loses it parks its joined calls (Run).
type DialogReplica struct {
	p *Proxy

	mu     sync.Mutex
	send   func([]byte) error
	holder func() bool
	tombs  *ttlSet // Call-ID+tags -> version of a released record
	// dead: backends declared down while this proxy did not hold the VIP,
	// and when; acted upon if it takes the VIP (Run).
	dead map[string]time.Time
}

// DialogReplica returns the proxy's dialog state channel.
func (p *Proxy) DialogReplica() *DialogReplica { return p.replica }

func newDialogReplica(p *Proxy) *DialogReplica {
	return &DialogReplica{p: p, tombs: newTTLSet(time.Minute, 100000), dead: map[string]time.Time{}}
}

// deadWhileStandby notes that backend was declared down while this proxy
// did not hold the VIP: every dialog confirmed before its latest death is
// over on it.
func (r *DialogReplica) deadWhileStandby(backend string) {
	r.deadBefore(backend, time.Now())
}

// deadBefore notes that every dialog of backend confirmed before at is
// over (a later note covers an earlier one).
func (r *DialogReplica) deadBefore(backend string, at time.Time) {
	r.mu.Lock()
	if at.After(r.dead[backend]) {
		r.dead[backend] = at
	}
	r.mu.Unlock()
}

// holderPoll is how often Run checks whether this proxy holds the VIP.
const holderPoll = 100 * time.Millisecond

// Run follows the VIP. Holding it, it hangs up (or keeps up) the calls of
// the backends that died while the twin held it, among the dialogs
// confirmed before the death (the holder replicates a joined call's
// dialogs until the call ends, so a joined call is joined again here when
// the holder died or lost the VIP). Without it, it parks the joined calls
// (parkJoined): exactly one proxy, the VIP holder, answers for a joined
// call. It returns when ctx ends.
func (r *DialogReplica) Run(ctx context.Context) error {
	t := time.NewTicker(holderPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if !r.holds() {
			r.p.parkJoined()
			continue
		}
		r.mu.Lock()
		dead := r.dead
		if len(dead) == 0 {
			r.mu.Unlock()
			continue // the empty map stays shared: not read without the lock
		}
		r.dead = map[string]time.Time{}
		r.mu.Unlock()
		for b, at := range dead {
			if n := r.p.hangUp(b, at, HangUpReasonBackendDown); n > 0 {
				r.p.log.Warn("took the VIP: hung up calls of a backend that died meanwhile", zap.String("backend", b), zap.Int("dialogs", n))
			}
		}
	}
}

// holds reports whether this proxy acts on its dialogs: the VIP holder, or
// a proxy without a cluster.
func (r *DialogReplica) holds() bool {
	r.mu.Lock()
	h := r.holder
	r.mu.Unlock()
	return h == nil || h()
}

// StateChanges turns replication on: every confirmed, changed or ended
// dialog is sent from now on.
func (r *DialogReplica) StateChanges(send func([]byte) error, holder func() bool) {
	r.mu.Lock()
	r.send, r.holder = send, holder
	r.mu.Unlock()
}

// StateSnapshot returns every dialog's record, joined calls' included, for
// a proxy that joins.
func (r *DialogReplica) StateSnapshot() [][]byte {
	var ds []*dialog
	if j := r.p.takeovers; j != nil {
		j.mu.Lock()
		for id, c := range j.byID {
			if c.d[0].callID == id {
				ds = append(ds, c.d[:]...)
			}
		}
		j.mu.Unlock()
	}
	t := r.p.dialogs
	t.mu.Lock()
	for _, d := range t.byID {
		ds = append(ds, d)
	}
	t.mu.Unlock()
	out := make([][]byte, 0, len(ds))
	for _, d := range ds {
		if b, err := json.Marshal(r.record(d, false)); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// changed sends d's record (released: d ended).
func (r *DialogReplica) changed(d *dialog, released bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	send := r.send
	r.mu.Unlock()
	if send == nil {
		return
	}
	b, err := json.Marshal(r.record(d, released))
	if err == nil {
		err = send(b)
	}
	if err != nil {
		r.p.log.Debug("dialog not replicated", zap.String("call_id", d.callID), zap.Error(err))
	}
}

func (r *DialogReplica) record(d *dialog, released bool) dialogRecord {
	var partner string
	if !released {
		// A joined call's link went from the table at the join: the record
		// still names its other leg, so the twin joins it again.
		if partner, _ = r.p.links.partner(d.callID); partner == "" {
			partner = r.p.takeovers.partner(d.callID)
		}
	}
	t := r.p.dialogs
	t.mu.Lock()
	defer t.mu.Unlock()
	d.version = max(d.version+1, uint64(time.Now().UnixNano()))
	if released {
		return dialogRecord{CallID: d.callID, FromTag: d.fromTag, ToTag: d.toTag, Released: true, Version: d.version}
	}
	rec := dialogRecord{CallID: d.callID, FromTag: d.fromTag, ToTag: d.toTag, Backend: d.backend, BackendTag: d.backendTag,
		Target: d.target.String(), Dest: d.dest, Network: d.network, CSeq: d.cseq, Expires: int64(d.expires), PhoneRefr: d.phoneRefreshes, Confirmed: d.confirmed.UnixNano(), Version: d.version}
	if d.from != nil {
		rec.From = d.from.Value()
	}
	if d.to != nil {
		rec.To = d.to.Value()
	}
	for _, u := range d.routes {
		rec.Routes = append(rec.Routes, u.String())
	}
	rec.Partner = partner
	return rec
}

// ApplyState takes the holder's dialog records: a newer record replaces
// the dialog, a released one removes it; undecodable ones are skipped. A
// record of a call joined here updates the joined dialog; a released one
// ends the call here without a word to the phones (the holder sent the
// BYEs) and releases the relay's join of its media, also of a call parked
// when this proxy lost the VIP, so taking the VIP back does not revive it.
func (r *DialogReplica) ApplyState(raw [][]byte) {
	for _, b := range raw {
		var rec dialogRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			r.p.log.Warn("bad dialog record from peer", zap.Error(err))
			continue
		}
		if err := r.apply(rec); err != nil {
			r.p.log.Warn("dialog record from peer not applied", zap.String("call_id", rec.CallID), zap.Error(err))
		}
	}
}

func (r *DialogReplica) apply(rec dialogRecord) error {
	key := dialogKey(rec.CallID, rec.FromTag, rec.ToTag)
	if v, ok := r.tombs.get(key); ok {
		if gone, _ := strconv.ParseUint(v, 10, 64); gone >= rec.Version {
			return nil
		}
	}
	t := r.p.dialogs
	if rec.Released {
		r.tombs.put(key, strconv.FormatUint(rec.Version, 10))
		t.mu.Lock()
		if d := t.byID[key]; d != nil && d.version <= rec.Version {
			t.delLocked(key)
			t.gauge.Set(float64(len(t.byID)))
		}
		t.mu.Unlock()
		r.p.links.drop(rec.CallID)
		r.p.joinedReleased(rec.CallID, key)
		return nil
	}
	if r.p.joinedRecord(&rec) {
		return nil
	}
	d := &dialog{callID: rec.CallID, fromTag: rec.FromTag, toTag: rec.ToTag, backend: rec.Backend, backendTag: rec.BackendTag,
		dest: rec.Dest, network: rec.Network, cseq: rec.CSeq, expires: time.Duration(rec.Expires), phoneRefreshes: rec.PhoneRefr, version: rec.Version, lastSeen: time.Now(), confirmed: time.Now()}
	if rec.Confirmed > 0 {
		d.confirmed = time.Unix(0, rec.Confirmed)
	}
	var from sip.FromHeader
	var to sip.ToHeader
	var err error
	if from.DisplayName, err = sip.ParseAddressValue(rec.From, &from.Address, &from.Params); err != nil {
		return err
	}
	if to.DisplayName, err = sip.ParseAddressValue(rec.To, &to.Address, &to.Params); err != nil {
		return err
	}
	d.from, d.to = &from, &to
	if err := sip.ParseUri(rec.Target, &d.target); err != nil {
		return err
	}
	for _, s := range rec.Routes {
		var u sip.Uri
		if err := sip.ParseUri(s, &u); err != nil {
			return err
		}
		d.routes = append(d.routes, u)
	}
	t.mu.Lock()
	if old := t.byID[key]; old != nil && old.version >= rec.Version {
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	t.add(d)
	if rec.Partner != "" {
		r.p.links.link(rec.CallID, rec.Partner)
	} else {
		// The holder's link went (a bridge broke, a transfer): so does ours.
		r.p.links.drop(rec.CallID)
	}
	return nil
}
