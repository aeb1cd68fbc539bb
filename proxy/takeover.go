package proxy

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// mediaJoiner is implemented by a MediaAnchor that can connect the phone
// legs of two calls when the PBX bridging them dies (media.Relay).
type mediaJoiner interface {
	// Join connects callID1's phone leg (the caller's when caller1) with
	// callID2's; an error when the calls cannot be joined (no anchored
	// media, codecs differ): they then end with BYEs.
	Join(callID1 string, caller1 bool, callID2 string, caller2 bool) error
	// AnswerJoined answers a joined phone's re-offer (nil: none, the 200
	// carries the offer) that came from signal; an error: answer 488.
	AnswerJoined(callID string, signal netip.Addr, offer []byte) ([]byte, error)
	// Joined is the call whose phone callID's phone is joined with, if
	// any: a join kept while this proxy did not hold the VIP.
	Joined(callID string) (partner string, ok bool)
}

// Reasons of hapbx_proxy_joined_calls_ended_total.
const (
	joinEndBye     = "bye"
	joinEndExpired = "session_expired"
)

// joinedCall is a two-party call whose PBX died: hapbx answers for it in
// both dialogs until one side hangs up, or until this proxy loses the VIP
// (parkJoined). The dialogs' expires, phoneRefreshes and lastSeen change
// under takeoverTable.mu and the dialog table's mutex, in that order.
type joinedCall struct {
	d      [2]*dialog
	timers [2]*time.Timer // RFC 4028 session timers, nil without one
	ended  bool           // under takeoverTable.mu: ended, or parked
	parked bool           // under takeoverTable.mu: left to the twin
}

// side is the index of the dialog of c with key, -1 if none.
func (c *joinedCall) side(key string) int {
	for i, d := range c.d {
		if dialogKey(d.callID, d.fromTag, d.toTag) == key {
			return i
		}
	}
	return -1
}

// takeoverTable holds the joined calls by the Call-ID of each leg.
type takeoverTable struct {
	mu     sync.Mutex
	byID   map[string]*joinedCall
	gauge  prometheus.Gauge
	joined prometheus.Counter
	refuse *prometheus.CounterVec
	ended  *prometheus.CounterVec
	bye    prometheus.Histogram // from one phone's BYE to the other's sent
}

func newTakeoverTable(reg prometheus.Registerer) *takeoverTable {
	t := &takeoverTable{
		byID: make(map[string]*joinedCall),
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_proxy_joined_calls",
			Help: "Two-party calls whose PBX died, kept up by hapbx (media joined in the relay).",
		}),
		joined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_calls_joined_total",
			Help: "Two-party calls kept up when their PBX died: the two phones' media joined in the relay.",
		}),
		refuse: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_calls_join_refused_total",
			Help: "Linked calls of a dead PBX that could not be joined and were hung up, by reason (codec: the phones' codecs differ; media: a leg without anchored media).",
		}, []string{"reason"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_proxy_joined_calls_ended_total",
			Help: "Joined calls ended, by reason (bye: one side hung up; session_expired: its RFC 4028 refresher stopped).",
		}, []string{"reason"}),
	}
	t.bye = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hapbx_proxy_joined_bye_seconds",
		Help:    "Joined calls: time from one phone's BYE reaching hapbx to the BYE for the other phone sent.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	})
	for _, r := range []string{"codec", "media"} {
		t.refuse.WithLabelValues(r)
	}
	for _, r := range []string{joinEndBye, joinEndExpired} {
		t.ended.WithLabelValues(r)
	}
	reg.MustRegister(t.gauge, t.joined, t.refuse, t.ended, t.bye)
	return t
}

func (t *takeoverTable) get(callID string) *joinedCall {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[callID]
}

// partner is the Call-ID of the call joined with callID's, "" if none.
func (t *takeoverTable) partner(callID string) string {
	c := t.get(callID)
	if c == nil {
		return ""
	}
	if c.d[0].callID == callID {
		return c.d[1].callID
	}
	return c.d[0].callID
}

// finish removes c; false when it was already ended.
func (t *takeoverTable) finish(c *joinedCall) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.finishLocked(c) {
		return false
	}
	t.gauge.Set(float64(len(t.byID)))
	return true
}

// finishLocked is finish without the gauge; t.mu must be held.
func (t *takeoverTable) finishLocked(c *joinedCall) bool {
	if c.ended {
		return false
	}
	c.ended = true
	for _, d := range c.d {
		delete(t.byID, d.callID)
	}
	for _, tm := range c.timers {
		if tm != nil {
			tm.Stop()
		}
	}
	return true
}

func (t *takeoverTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

// phoneCalled tells whether the phone of d is its callee (the backend
// placed the call).
func (d *dialog) phoneCalled() bool { return d.backendTag == d.fromTag }

// takeOver joins the linked pairs among ds, the dialogs of a dead backend,
// and returns the dialogs left to hang up.
func (p *Proxy) takeOver(ds []*dialog) []*dialog {
	j, ok := p.media.(mediaJoiner)
	if !ok || len(ds) < 2 {
		return ds
	}
	byID := make(map[string]*dialog, len(ds))
	for _, d := range ds {
		byID[d.callID] = d
	}
	rest := ds[:0:0]
	done := make(map[string]bool, len(ds))
	for _, d := range ds {
		if done[d.callID] {
			continue
		}
		other, linked := p.links.partner(d.callID)
		o := byID[other]
		if !linked || o == nil || done[other] {
			rest = append(rest, d)
			continue
		}
		done[d.callID], done[other] = true, true
		// The relay may still join them: this proxy joined the call, lost
		// the VIP (parkJoined) and has taken it back.
		if partner, joined := j.Joined(d.callID); !joined || partner != o.callID {
			if err := j.Join(d.callID, !d.phoneCalled(), o.callID, !o.phoneCalled()); err != nil {
				why := "media"
				if is[CodecMismatchError](err) {
					why = "codec"
				}
				p.takeovers.refuse.WithLabelValues(why).Inc()
				p.log.Info("bridged call not joined: hung up", zap.String("call_id", d.callID), zap.String("other_call_id", other), zap.Error(err))
				rest = append(rest, d, o)
				continue
			}
		}
		p.links.drop(d.callID)
		c := &joinedCall{d: [2]*dialog{d, o}}
		p.takeovers.mu.Lock()
		p.takeovers.byID[d.callID], p.takeovers.byID[o.callID] = c, c
		for i := range c.d {
			p.armTimer(c, i, true)
		}
		p.takeovers.gauge.Set(float64(len(p.takeovers.byID)))
		p.takeovers.mu.Unlock()
		p.takeovers.joined.Inc()
		p.log.Warn("backend died: bridged call kept up, its phones' media joined", zap.String("backend", d.backend),
			zap.String("call_id", d.callID), zap.String("other_call_id", o.callID))
	}
	return rest
}

// answerJoined answers req if it belongs to a joined call, in place of the
// dead backend; false when it does not.
func (p *Proxy) answerJoined(tx sip.ServerTransaction, req *sip.Request) bool {
	if !inDialog(req) || p.takeovers == nil {
		return false
	}
	c := p.takeovers.get(req.CallID().Value())
	if c == nil {
		return false
	}
	side := 0
	if c.d[1].callID == req.CallID().Value() {
		side = 1
	}
	d := c.d[side]
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	if dialogKey(d.callID, d.fromTag, d.toTag) != dialogKey(d.callID, fromTag, toTag) {
		return false
	}
	switch req.Method {
	case sip.ACK:
		// The ACK of our 2xx to a re-INVITE: absorbed.
	case sip.BYE:
		start := time.Now()
		p.replyJoined(tx, req, 200, "OK", nil)
		p.endJoined(c, side, joinEndBye)
		p.takeovers.bye.Observe(time.Since(start).Seconds())
	case sip.INVITE, sip.UPDATE:
		var offer []byte
		if hasSDP(req) {
			offer = req.Body()
		}
		var body []byte
		if offer != nil || req.IsInvite() {
			var err error
			body, err = p.media.(mediaJoiner).AnswerJoined(d.callID, sourceIP(req.Source()), offer)
			if err != nil {
				p.log.Info("re-offer of a joined call refused", zap.String("call_id", d.callID), zap.Error(err))
				p.replyJoined(tx, req, 488, "Not Acceptable Here", nil)
				return true
			}
		}
		p.refreshed(c, side, req)
		p.replyJoined(tx, req, 200, "OK", body, sessionTimerHeaders(req)...)
	case sip.OPTIONS, sip.INFO:
		p.replyJoined(tx, req, 200, "OK", nil)
	default:
		p.replyJoined(tx, req, 501, "Not Implemented", nil)
	}
	return true
}

// replyJoined answers req for the dead backend, with an SDP body when body
// is not nil and a Contact on a 2xx to an INVITE.
func (p *Proxy) replyJoined(tx sip.ServerTransaction, req *sip.Request, code int, reason string, body []byte, hdrs ...sip.Header) {
	if body != nil {
		hdrs = append(hdrs, sip.NewHeader("Content-Type", "application/sdp"))
	}
	if code/100 == 2 && (req.IsInvite() || req.Method == sip.UPDATE) {
		tr := strings.ToLower(req.Transport())
		hdrs = append(hdrs, &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", Host: p.cfg.Advertise, Port: p.portFor[tr], UriParams: params("transport", tr)}})
	}
	p.replyBody(tx, req, code, reason, body, hdrs...)
}

// sessionTimerHeaders answer a session refresh (RFC 4028 §9): the interval
// the phone asked for, the phone kept as the refresher unless it named us.
func sessionTimerHeaders(req *sip.Request) []sip.Header {
	h := req.GetHeader("Session-Expires")
	if h == nil {
		return nil
	}
	delta, params, _ := strings.Cut(h.Value(), ";")
	refresher := "uac"
	if strings.Contains(strings.ReplaceAll(strings.ToLower(params), " ", ""), "refresher=uas") {
		refresher = "uas"
	}
	out := []sip.Header{sip.NewHeader("Session-Expires", strings.TrimSpace(delta)+";refresher="+refresher)}
	for _, s := range req.GetHeaders("Supported") {
		if strings.Contains(strings.ToLower(s.Value()), "timer") {
			out = append(out, sip.NewHeader("Require", "timer"))
			break
		}
	}
	return out
}

// refreshed restarts the session timer of side after the phone refreshed
// the session: it is the refresher from now on unless it named hapbx
// (refresher=uas). A new interval or refresher is replicated, so the twin
// arms the same timer should it answer for the call.
func (p *Proxy) refreshed(c *joinedCall, side int, req *sip.Request) {
	p.takeovers.mu.Lock()
	if c.ended {
		p.takeovers.mu.Unlock()
		return
	}
	d := c.d[side]
	changed := false
	p.dialogs.mu.Lock()
	if iv := sessionInterval(req); iv > 0 {
		refr := sessionRefresher(req) != "uas"
		changed = iv != d.expires || refr != d.phoneRefreshes
		d.expires, d.phoneRefreshes = iv, refr
	}
	d.lastSeen = time.Now()
	p.dialogs.mu.Unlock()
	p.armTimer(c, side, false)
	p.takeovers.mu.Unlock()
	if changed {
		p.replica.changed(d, false)
	}
}

// armTimer sets the RFC 4028 timer of side i: when the phone refreshes,
// the call ends with BYEs if no refresh came within the interval; when the
// dead backend was the refresher, hapbx refreshes the phone's session
// itself (an UPDATE at half the interval). first counts hapbx's refresh
// from the dialog's last request (the backend's last refresh, replicated
// with its CSeq) rather than from now; a refreshing phone always gets a
// whole interval from now, as its last refresh may have been answered by
// the twin, unknown here. The timer does nothing on a proxy that has lost
// the VIP but park the calls. p.takeovers.mu must be held.
func (p *Proxy) armTimer(c *joinedCall, i int, first bool) {
	d := c.d[i]
	if c.ended {
		return
	}
	if c.timers[i] != nil {
		c.timers[i].Stop()
	}
	if d.expires <= 0 {
		return
	}
	wait, fire := d.expires, func() { p.endJoined(c, -1, joinEndExpired) }
	if !d.phoneRefreshes {
		wait, fire = d.expires/2, func() { p.refreshPhone(c, i) }
		if first {
			wait = max(time.Until(d.lastSeen.Add(wait)), 0)
		}
	}
	c.timers[i] = time.AfterFunc(wait, func() {
		// The VIP may have moved since the last check of Run: the twin
		// answers for the call now.
		if !p.replica.holds() {
			p.parkJoined()
			return
		}
		fire()
	})
}

// refreshPhone refreshes side i's session for the dead backend, which was
// its refresher: an UPDATE with the same interval, hapbx the refresher. A
// phone that does not accept it ends the call (it would at the interval's
// end anyway).
func (p *Proxy) refreshPhone(c *joinedCall, i int) {
	p.takeovers.mu.Lock()
	d := c.d[i]
	ended, secs := c.ended, int(d.expires/time.Second)
	p.takeovers.mu.Unlock()
	if ended {
		return
	}
	tr := strings.ToLower(d.network)
	contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", Host: p.cfg.Advertise, Port: p.portFor[tr], UriParams: params("transport", tr)}}
	p.toPhone(d, sip.UPDATE, func(res *sip.Response) {
		if res == nil || !res.IsSuccess() {
			p.log.Info("session refresh of a joined call refused: ended", zap.String("call_id", d.callID))
			p.endJoined(c, -1, joinEndExpired)
			return
		}
		p.takeovers.mu.Lock()
		defer p.takeovers.mu.Unlock()
		if c.ended {
			return
		}
		p.dialogs.mu.Lock()
		d.lastSeen = time.Now()
		p.dialogs.mu.Unlock()
		p.armTimer(c, i, false)
	}, sip.NewHeader("Session-Expires", strconv.Itoa(secs)+";refresher=uac"), sip.NewHeader("Supported", "timer"), contact)
}

// endJoined ends a joined call: a BYE to each side but from (-1: both),
// the relay sessions released.
func (p *Proxy) endJoined(c *joinedCall, from int, reason string) {
	if !p.takeovers.finish(c) {
		return
	}
	bye := ""
	if reason == joinEndExpired {
		bye = "session expired"
	}
	for i, d := range c.d {
		if i != from {
			p.sendBye(d, bye)
		}
	}
	for _, d := range c.d {
		_ = p.media.Release(d.callID, "joined call "+reason)
		p.callers.del(d.callID)
		p.replica.changed(d, true)
	}
	p.takeovers.ended.WithLabelValues(reason).Inc()
	p.log.Info("joined call ended", zap.String("call_id", c.d[0].callID), zap.String("other_call_id", c.d[1].callID), zap.String("reason", reason))
}

// parkJoined stops answering for the joined calls, without a word to the
// phones: this proxy no longer holds the VIP, the twin answers for them
// now (it has their dialogs, replicated until they end). Their timers stop
// and their dialogs go back to the dialog table, linked, with their backend
// noted dead (as by a standby): the twin's records update or release them
// and, should this proxy take the VIP back, it joins again those still up
// (DialogReplica.Run). The relay keeps their media joined: no media
// reaches a proxy without the VIP, and takeOver finds the join again.
func (p *Proxy) parkJoined() {
	t := p.takeovers
	if t == nil {
		return
	}
	t.mu.Lock()
	var calls []*joinedCall
	for _, c := range t.byID {
		if !t.finishLocked(c) {
			continue
		}
		c.parked = true
		calls = append(calls, c)
		// Under t.mu: a twin's record of the dialog waits (joinedRecord),
		// then updates the table's.
		for _, d := range c.d {
			if !p.dialogs.add(d) {
				p.log.Warn("parked joined call not kept: sip.max_dialogs reached", zap.String("call_id", d.callID))
			}
		}
	}
	t.gauge.Set(float64(len(t.byID)))
	t.mu.Unlock()
	for _, c := range calls {
		// Every dialog of its backend confirmed before then is over.
		last := c.d[0].confirmed
		if c.d[1].confirmed.After(last) {
			last = c.d[1].confirmed
		}
		p.links.link(c.d[0].callID, c.d[1].callID)
		p.replica.deadBefore(c.d[0].backend, last.Add(time.Nanosecond))
		p.log.Warn("VIP lost: joined call left to the twin", zap.String("call_id", c.d[0].callID), zap.String("other_call_id", c.d[1].callID))
	}
}

// joinedReleased takes the twin's word that the dialog of callID and key
// ended: the call it answered for after this proxy lost the VIP, or joined
// again here since, is over (a BYE it answered, its session expired). The
// phones had their BYEs from the twin: this proxy only stops answering for
// the call and releases the relay's join of its media.
func (p *Proxy) joinedReleased(callID, key string) {
	j, ok := p.media.(mediaJoiner)
	if !ok {
		return
	}
	if c := p.takeovers.get(callID); c != nil && c.side(key) >= 0 {
		if p.takeovers.finish(c) {
			for _, d := range c.d {
				_ = p.media.Release(d.callID, "joined call ended on the twin")
				p.callers.del(d.callID)
			}
			p.log.Info("joined call ended on the twin", zap.String("call_id", c.d[0].callID), zap.String("other_call_id", c.d[1].callID))
		}
		return
	}
	// Parked here: its dialogs are in the table, its media still joined.
	if other, joined := j.Joined(callID); joined {
		for _, id := range []string{callID, other} {
			_ = p.media.Release(id, "joined call ended on the twin")
			p.callers.del(id)
		}
		p.log.Info("parked joined call ended on the twin", zap.String("call_id", callID), zap.String("other_call_id", other))
	}
}

// joinedRecord applies the twin's record of a dialog of a call joined here
// (both proxies held the VIP for a moment, or a record the twin sent while
// it held the VIP came after this proxy took it back): the dialog stays
// answered here, with the twin's CSeq (never lowered) and session
// interval, instead of being tracked a second time. False when no joined
// call has the dialog.
func (p *Proxy) joinedRecord(rec *dialogRecord) bool {
	c := p.takeovers.get(rec.CallID)
	if c == nil {
		return false
	}
	i := c.side(dialogKey(rec.CallID, rec.FromTag, rec.ToTag))
	if i < 0 {
		return false
	}
	p.takeovers.mu.Lock()
	defer p.takeovers.mu.Unlock()
	if c.ended {
		// Parked since: the record updates the table's dialog. Ended
		// here: the twin has or will have the released record.
		return !c.parked
	}
	d := c.d[i]
	p.dialogs.mu.Lock()
	if d.version >= rec.Version {
		p.dialogs.mu.Unlock()
		return true
	}
	d.version, d.cseq = rec.Version, max(d.cseq, rec.CSeq)
	changed := d.expires != time.Duration(rec.Expires) || d.phoneRefreshes != rec.PhoneRefr
	d.expires, d.phoneRefreshes, d.lastSeen = time.Duration(rec.Expires), rec.PhoneRefr, time.Now()
	p.dialogs.mu.Unlock()
	if changed {
		p.armTimer(c, i, false)
	}
	return true
}
