package proxy

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// dialog is what the proxy must know to hang up a confirmed call towards
// the phone side when its backend dies: the phone's target and route set as
// the backend would have used them, and the backend's CSeq space.
type dialog struct {
	callID  string
	fromTag string // caller's (phone side) tag
	toTag   string // backend side's tag
	backend string
	// backendTag is the backend side's tag: the 2xx To tag for a call from
	// a phone, the INVITE From tag for a call from the backend to a phone.
	backendTag string
	from       *sip.FromHeader // the BYE's From: the backend side
	to         *sip.ToHeader   // the BYE's To: the phone side
	target     sip.Uri         // the phone's Contact
	routes     []sip.Uri       // Record-Route entries between the proxy and the phone
	dest       string          // the phone's NATed address or connection
	network    string
	cseq       uint32 // highest CSeq the backend side has used
	// expires is the RFC 4028 session interval (0: no session timer): a
	// call kept up after its backend died ends when it is not refreshed.
	expires time.Duration
	// phoneRefreshes: the phone, not the backend, is the session's RFC
	// 4028 refresher.
	phoneRefreshes bool
	lastSeen       time.Time
	ending         bool   // a BYE is under way: never hang it up a second time
	version        uint64 // of its last replicated record (replicate.go)
	// confirmed is when the 2xx came (on the twin: as the holder said).
	confirmed time.Time
}

// dialogTable is bounded: at most max dialogs, each forgotten after ttl
// without an in-dialog request (calls without session timers can outlive
// any BYE we miss).
type dialogTable struct {
	mu   sync.Mutex
	max  int
	ttl  time.Duration
	byID map[string]*dialog
	// byCall finds a dialog by Call-ID alone (AMI names calls so,
	// amibridge.go): the last one confirmed of that Call-ID.
	byCall map[string]*dialog
	gauge  prometheus.Gauge
	ended  *prometheus.CounterVec
	full   prometheus.Counter
	sweepT time.Time
	// changed is told of each dialog confirmed, changed or ended here
	// (replication to the twin); nil: nobody.
	changed func(d *dialog, released bool)
}

func newDialogTable(max int, ttl time.Duration, reg prometheus.Registerer) *dialogTable {
	t := &dialogTable{
		max:    max,
		ttl:    ttl,
		byID:   make(map[string]*dialog),
		byCall: make(map[string]*dialog),
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hapbx_proxy_dialogs",
			Help: "Confirmed dialogs tracked per backend, for hang-up when a backend dies.",
		}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hapbx_dialogs_terminated_total",
			Help: "Dialogs the proxy hung up itself, by reason.",
		}, []string{"reason"}),
		full: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_dialogs_untracked_total",
			Help: "Confirmed dialogs not tracked because sip.max_dialogs was reached: they are not hung up when their backend dies.",
		}),
	}
	// The known reason's series exists from the start at 0, so a dashboard
	// reads "none hung up" rather than "no data" until a backend dies.
	t.ended.WithLabelValues(HangUpReasonBackendDown)
	reg.MustRegister(t.gauge, t.ended, t.full)
	return t
}

func dialogKey(callID, a, b string) string {
	if a > b {
		a, b = b, a
	}
	return callID + "\x00" + a + "\x00" + b
}

// newDialog is the part of a dialog confirmed by a 2xx to inv that does not
// depend on who is the phone; nil without both tags.
func newDialog(inv *sip.Request, res *sip.Response, backend string) *dialog {
	fromTag, _ := inv.From().Params.Get("tag")
	toTag, _ := res.To().Params.Get("tag")
	if fromTag == "" || toTag == "" {
		return nil
	}
	now := time.Now()
	d := &dialog{callID: inv.CallID().Value(), fromTag: fromTag, toTag: toTag, backend: backend, lastSeen: now, confirmed: now}
	d.expires = sessionInterval(res)
	// The 2xx names the refresher relative to the INVITE: uac is its sender.
	refresher := sessionRefresher(res)
	d.phoneRefreshes = refresher != "uas"
	return d
}

// sessionRefresher is the refresher parameter of m's Session-Expires.
func sessionRefresher(m interface{ GetHeader(string) sip.Header }) string {
	h := m.GetHeader("Session-Expires")
	if h == nil {
		return ""
	}
	_, params, _ := strings.Cut(strings.ToLower(strings.ReplaceAll(h.Value(), " ", "")), ";")
	for kv := range strings.SplitSeq(params, ";") {
		if v, ok := strings.CutPrefix(kv, "refresher="); ok {
			return v
		}
	}
	return ""
}

// sessionInterval is m's RFC 4028 Session-Expires, 0 without one.
func sessionInterval(m interface{ GetHeader(string) sip.Header }) time.Duration {
	h := m.GetHeader("Session-Expires")
	if h == nil {
		return 0
	}
	delta, _, _ := strings.Cut(h.Value(), ";")
	s, err := strconv.Atoi(strings.TrimSpace(delta))
	if err != nil || s <= 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// confirm records the dialog set up by a 2xx to an initial INVITE.
func (t *dialogTable) confirm(inv *sip.Request, res *sip.Response, backend string, isLocal func(*sip.Uri) bool) {
	d := newDialog(inv, res, backend)
	if d == nil {
		return
	}
	d.backendTag = d.toTag
	d.from = &sip.FromHeader{DisplayName: res.To().DisplayName, Address: *res.To().Address.Clone(), Params: res.To().Params.Clone()}
	d.to = &sip.ToHeader{DisplayName: inv.From().DisplayName, Address: *inv.From().Address.Clone(), Params: inv.From().Params.Clone()}
	d.dest, d.network = inv.Source(), inv.Transport()
	if c := inv.Contact(); c != nil {
		d.target = *c.Address.Clone()
	} else {
		d.target = *inv.From().Address.Clone()
	}
	// Record-Route lists, top to bottom, the hops from the callee to the
	// caller; the entries below the proxy's own lead to the phone.
	below := false
	for _, h := range res.GetHeaders("Record-Route") {
		rr, ok := h.(*sip.RecordRouteHeader)
		if !ok {
			continue
		}
		if isLocal(&rr.Address) {
			below = true
			continue
		}
		if below {
			d.routes = append(d.routes, *rr.Address.Clone())
		}
	}
	t.addNotify(d)
}

// confirmInbound records the dialog set up by a 2xx to an INVITE that
// backend sent to a phone (Asterisk dialling PJSIP/201@hapbx): the phone is
// the callee, reached at dest over network.
func (t *dialogTable) confirmInbound(inv *sip.Request, res *sip.Response, backend, dest, network string, isLocal func(*sip.Uri) bool) {
	d := newDialog(inv, res, backend)
	if d == nil {
		return
	}
	d.backendTag = d.fromTag
	d.phoneRefreshes = sessionRefresher(res) == "uas"
	d.from = &sip.FromHeader{DisplayName: inv.From().DisplayName, Address: *inv.From().Address.Clone(), Params: inv.From().Params.Clone()}
	d.to = &sip.ToHeader{DisplayName: res.To().DisplayName, Address: *res.To().Address.Clone(), Params: res.To().Params.Clone()}
	d.dest, d.network = dest, network
	d.cseq = inv.CSeq().SeqNo
	if c := res.Contact(); c != nil {
		d.target = *c.Address.Clone()
	} else {
		d.target = *res.To().Address.Clone()
	}
	// The entries above the proxy's own lead from it to the phone; the
	// caller's route set lists them in reverse (RFC 3261 §12.1.2).
	var above []sip.Uri
	for _, h := range res.GetHeaders("Record-Route") {
		rr, ok := h.(*sip.RecordRouteHeader)
		if !ok {
			continue
		}
		if isLocal(&rr.Address) {
			break
		}
		above = append(above, *rr.Address.Clone())
	}
	for i := len(above) - 1; i >= 0; i-- {
		d.routes = append(d.routes, above[i])
	}
	t.addNotify(d)
}

// addNotify adds d and tells the replication.
func (t *dialogTable) addNotify(d *dialog) {
	if t.add(d) && t.changed != nil {
		t.changed(d, false)
	}
}

// add keeps d; false when the table is full.
func (t *dialogTable) add(d *dialog) bool {
	key := dialogKey(d.callID, d.fromTag, d.toTag)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(time.Now())
	if _, exists := t.byID[key]; !exists && len(t.byID) >= t.max {
		t.full.Inc()
		return false // bounded: the dialog still works, it just is not hung up for us
	}
	if old := t.byID[key]; old != nil && t.byCall[old.callID] == old {
		delete(t.byCall, old.callID)
	}
	t.byID[key] = d
	t.byCall[d.callID] = d
	t.gauge.Set(float64(len(t.byID)))
	return true
}

// seen notes an in-dialog request: it keeps the dialog alive, tracks the
// backend side's CSeq, and forgets the dialog on BYE.
func (t *dialogTable) seen(req *sip.Request) {
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	key := dialogKey(req.CallID().Value(), fromTag, toTag)
	t.mu.Lock()
	d, ok := t.byID[key]
	if !ok {
		t.mu.Unlock()
		return
	}
	if req.Method == sip.BYE {
		t.delLocked(key)
		t.gauge.Set(float64(len(t.byID)))
		t.mu.Unlock()
		if t.changed != nil {
			t.changed(d, true)
		}
		return
	}
	d.lastSeen = time.Now()
	changed := false
	if fromTag == d.backendTag && req.CSeq().SeqNo > d.cseq {
		d.cseq, changed = req.CSeq().SeqNo, true
	}
	if iv := sessionInterval(req); iv > 0 && iv != d.expires {
		d.expires, changed = iv, true
	}
	t.mu.Unlock()
	if changed && t.changed != nil {
		t.changed(d, false)
	}
}

// ending marks the dialog of a BYE that is being forwarded, so a hang-up
// racing with it does not send the phone a second BYE.
func (t *dialogTable) ending(req *sip.Request) {
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	t.mu.Lock()
	if d, ok := t.byID[dialogKey(req.CallID().Value(), fromTag, toTag)]; ok {
		d.ending = true
	}
	t.mu.Unlock()
}

// backendOf returns the backend of a dialog known by Call-ID and tags.
func (t *dialogTable) backendOf(req *sip.Request) string {
	fromTag, _ := req.From().Params.Get("tag")
	toTag, _ := req.To().Params.Get("tag")
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.byID[dialogKey(req.CallID().Value(), fromTag, toTag)]; ok {
		return d.backend
	}
	return ""
}

// take removes and returns every dialog on backend confirmed before
// before (zero: all).
func (t *dialogTable) take(backend string, before time.Time) []*dialog {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*dialog
	for k, d := range t.byID {
		if d.backend == backend && (before.IsZero() || d.confirmed.Before(before)) {
			if !d.ending {
				out = append(out, d)
			}
			t.delLocked(k)
		}
	}
	t.gauge.Set(float64(len(t.byID)))
	return out
}

// delLocked forgets the dialog of key.
func (t *dialogTable) delLocked(key string) {
	if d := t.byID[key]; d != nil && t.byCall[d.callID] == d {
		delete(t.byCall, d.callID)
	}
	delete(t.byID, key)
}

// onBackend is the dialog of callID when backend is its backend.
func (t *dialogTable) onBackend(callID, backend string) *dialog {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d := t.byCall[callID]; d != nil && d.backend == backend {
		return d
	}
	return nil
}

func (t *dialogTable) sweepLocked(now time.Time) {
	if now.Before(t.sweepT) {
		return
	}
	t.sweepT = now.Add(time.Minute)
	for k, d := range t.byID {
		if now.Sub(d.lastSeen) > t.ttl {
			t.delLocked(k)
		}
	}
}

func (t *dialogTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

// reaches reports whether a tracked dialog reaches its phone over the
// stream connection from dest. It scans the table: it is asked only when a
// connection has been silent for sip.tcp.idle_timeout.
func (t *dialogTable) reaches(dest string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range t.byID {
		if d.dest == dest && !strings.EqualFold(d.network, "udp") {
			return true
		}
	}
	return false
}

// HangUpReasonBackendDown is HangUpBackend's reason when the health checks
// declared the backend down.
const HangUpReasonBackendDown = "backend down"

// HangUpBackend sends a BYE towards the phone side of every confirmed
// dialog on backend (declared down), so phones do not sit in silent calls.
// It returns how many dialogs it hung up; the BYEs are sent in parallel and
// it returns once all are sent, without waiting for their answers.
//
// On a proxy of a pair that does not hold the VIP it does nothing but note
// the death: the holder acts, and should this proxy take the VIP later, it
// acts then on the dialogs confirmed before (DialogReplica.Run).
func (p *Proxy) HangUpBackend(backend, reason string) int {
	if !p.replica.holds() {
		p.replica.deadWhileStandby(backend)
		return 0
	}
	return p.hangUp(backend, time.Time{}, reason)
}

// hangUp is HangUpBackend on the dialogs of backend confirmed before
// before (zero: all).
func (p *Proxy) hangUp(backend string, before time.Time, reason string) int {
	ds := p.takeOver(p.dialogs.take(backend, before))
	for _, d := range ds {
		p.replica.changed(d, true) // joined ones are released when they end
	}
	if len(ds) == 0 {
		return 0
	}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Add(1)
		sem <- struct{}{}
		go func(d *dialog) {
			defer wg.Done()
			defer func() { <-sem }()
			p.sendBye(d, reason)
		}(d)
	}
	wg.Wait()
	p.dialogs.ended.WithLabelValues(reason).Add(float64(len(ds)))
	p.log.Warn("hung up calls of a dead backend", zap.String("backend", backend), zap.Int("dialogs", len(ds)), zap.String("reason", reason))
	return len(ds)
}

func (p *Proxy) sendBye(d *dialog, reason string) {
	var hdrs []sip.Header
	if reason != "" {
		hdrs = append(hdrs, sip.NewHeader("Reason", `SIP;cause=503;text="`+reason+`"`))
	}
	p.toPhone(d, sip.BYE, nil, hdrs...)
}

// toPhone sends a request without body in d towards the phone, as the
// backend side (CSeq raised), with hdrs, and hands its final response (nil:
// none came) to done when done is not nil.
func (p *Proxy) toPhone(d *dialog, method sip.RequestMethod, done func(*sip.Response), hdrs ...sip.Header) {
	req := sip.NewRequest(method, *d.target.Clone())
	network := strings.ToLower(d.network)
	req.AppendHeader(p.via(network, "b"+sip.GenerateTagN(12)))
	for _, r := range d.routes {
		req.AppendHeader(&sip.RouteHeader{Address: r})
	}
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(d.from)
	req.AppendHeader(d.to)
	cid := sip.CallIDHeader(d.callID)
	req.AppendHeader(&cid)
	p.dialogs.mu.Lock()
	d.cseq++
	cseq := d.cseq
	p.dialogs.mu.Unlock()
	if method != sip.BYE {
		p.replica.changed(d, false) // the twin's BYE must come after it
	}
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	for _, h := range hdrs {
		req.AppendHeader(h)
	}
	req.SetBody(nil)
	t := target{addr: d.dest, transport: network}
	if len(d.routes) > 0 {
		if rt, ok := uriTarget(&d.routes[0], network); ok {
			t = rt
		}
	}
	p.address(req, t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	clTx, err := p.wire.TransactionRequest(ctx, req, sipgo.ClientRequestOption(keepHeaders))
	if err != nil {
		p.log.Warn("request to phone not sent", zap.String("method", string(method)), zap.String("call_id", d.callID), zap.Error(err))
		if done != nil {
			done(nil)
		}
		return
	}
	go func() {
		defer clTx.Terminate()
		for {
			select {
			case res := <-clTx.Responses():
				if res.StatusCode < 200 {
					continue
				}
				p.log.Debug("request to phone answered", zap.String("method", string(method)), zap.String("call_id", d.callID), zap.String("code", strconv.Itoa(res.StatusCode)))
				if done != nil {
					done(res)
				}
			case <-clTx.Done():
				if done != nil {
					done(nil)
				}
			}
			return
		}
	}()
}
