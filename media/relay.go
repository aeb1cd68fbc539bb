package media

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Leg names a side of a call: A is where the dialog's initial INVITE came
// from, B is the callee side.
type Leg int

const (
	// LegA is the caller side.
	LegA Leg = 0
	// LegB is the callee side.
	LegB Leg = 1
)

func (l Leg) String() string {
	if l == LegA {
		return "a"
	}
	return "b"
}

func (l Leg) other() Leg { return 1 - l }

// Session states, as reported by Snapshot and carried in SessionRecord.
const (
	StateOffered  = "offered"  // SDP seen from one leg only
	StateAnswered = "answered" // SDP seen from both legs
	// StateReleased marks a record that ends the session on a standby.
	StateReleased = "released"
)

// stream is one m= line: a port pair facing each leg.
type stream struct {
	ports [2]int      // relay RTP port facing leg A, leg B (RTCP = +1)
	socks [2][2]*sock // [leg][0 RTP, 1 RTCP]
	stats [2][2]dirStats
	hold  [2]bool
}

type session struct {
	callID  string
	w       *worker
	streams []*stream
	seen    [2]bool
	created time.Time
	touched int64 // nanotime of the last Anchor or of the adoption by Refresh; r.mu

	// Replication, all under r.mu.
	callerTag string        // From tag of leg A, so the twin's proxy can tell the legs apart
	version   uint64        // of the replicated content in last (see recordLocked)
	last      SessionRecord // content of the last record made, to detect changes
	reported  uint64        // version the last Refresh reported
	// replica: imported from the VIP holder and not relaying here yet. It
	// lives as long as the holder's records or keep-alives keep coming
	// (heard), not by idle_timeout: a standby receives no packets.
	replica      bool
	replicaSince int64 // nanotime replica was set
	heard        int64 // nanotime of the last record or keep-alive from the holder

	sdp [2][]byte // each leg's last SDP body, for Join; r.mu
	// sdpLast is the leg whose SDP came last: the answer of the last
	// offer/answer exchange; r.mu
	sdpLast Leg
}

// pendingTag is a caller tag set before the first Anchor of its call.
type pendingTag struct {
	tag string
	at  int64
}

// tombstone remembers a released session's version, so a stale record
// reordered behind the release cannot bring the session back.
type tombstone struct {
	version uint64
	at      int64
}

// maxIdleGone bounds the idle-ended sessions kept for the next Refresh (a
// proxy that never holds the VIP never calls it; replicas expire anyway).
const maxIdleGone = 100_000

// pendingTagTTL bounds a caller tag whose call never got anchored (bad SDP).
const pendingTagTTL = time.Minute

// maxPendingTags bounds pendingTags against a flood of unanchorable INVITEs.
const maxPendingTags = 100_000

// unansweredTimeout bounds a session that never saw SDP from both legs: a
// call may ring without any packet for longer than idle_timeout, and the
// proxy releases it on CANCEL or a final error anyway; this only stops leaks.
const unansweredTimeout = 5 * time.Minute

// Relay anchors RTP: it owns the port pool, the sessions and the data-path
// workers. Methods are safe for concurrent use.
type Relay struct {
	cfg  Config
	addr netip.Addr
	log  *zap.Logger
	m    *metrics
	now  func() time.Time // time.Now; a settable clock in tests

	openEBPF ebpfOpener // loads the eBPF engine (openEBPFKengine)

	mu       sync.Mutex
	pool     *portPool
	sessions map[string]*session
	workers  []*worker
	next     int
	closed   bool
	started  bool
	stop     chan struct{}
	wg       sync.WaitGroup

	pendingTags map[string]pendingTag // r.mu
	idleGone    []SessionRecord       // released records of sessions the sweep ended since the last Refresh; r.mu
	tombs       map[string]tombstone  // r.mu
	// refreshEvery is how often the VIP holder calls Refresh; replicaTTL
	// how long a replica lives without hearing from the holder.
	refreshEvery time.Duration
	replicaTTL   time.Duration
	out          *outlet // replication, set by StateChanges; r.mu
	joins        joinSet // joined calls (join.go); r.mu
	kern         *kernel // kernel data path (kernel_linux.go); nil: user space only
}

// RefreshPeriod derives the replication refresh period from idle_timeout:
// a third of it, within [1s, 20s].
func RefreshPeriod(idle time.Duration) time.Duration {
	return min(max(idle/3, time.Second), 20*time.Second)
}

// replicaRefreshes is how many refresh periods a replica survives without
// any record or keep-alive from the holder.
const replicaRefreshes = 4

// New validates cfg (cfg.Address must already hold the address to use),
// registers the metrics on reg and returns a Relay; Run relays.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) (*Relay, error) {
	return newRelay(cfg, log, reg, time.Now, openEBPFKengine)
}

// newWithClock is New reading the time from now (the relay's timers and
// the data path's packet times).
func newWithClock(cfg Config, log *zap.Logger, reg prometheus.Registerer, now func() time.Time) (*Relay, error) {
	return newRelay(cfg, log, reg, now, openEBPFKengine)
}

// newRelay is New with the clock and the eBPF engine's loader given (a
// test's loader makes loading fail).
func newRelay(cfg Config, log *zap.Logger, reg prometheus.Registerer, now func() time.Time, openEBPF ebpfOpener) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Address == "" {
		return nil, errors.New("address: empty; pass the SIP advertise address when the config leaves it unset")
	}
	addr := netip.MustParseAddr(cfg.Address)
	first, last, _ := parsePorts(cfg.Ports)
	if log == nil {
		log = zap.NewNop()
	}
	r := &Relay{
		cfg: cfg, addr: addr, log: log, now: now, openEBPF: openEBPF,
		pool:        newPortPool(first, last),
		sessions:    make(map[string]*session),
		stop:        make(chan struct{}),
		pendingTags: make(map[string]pendingTag),
		tombs:       make(map[string]tombstone),
	}
	r.refreshEvery = RefreshPeriod(cfg.IdleTimeout)
	r.replicaTTL = replicaRefreshes * r.refreshEvery
	n := cfg.Workers
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	budget := newConnBudget(last - first + 1)
	for i := range n {
		w, err := newWorker(i, budget, now)
		if err != nil {
			for _, w := range r.workers {
				w.close(false)
			}
			return nil, err
		}
		r.workers = append(r.workers, w)
	}
	if err := r.openKernel(); err != nil {
		for _, w := range r.workers {
			w.close(false)
		}
		return nil, err
	}
	r.m = newMetrics(r)
	if reg != nil {
		if err := reg.Register(r.m); err != nil {
			return nil, fmt.Errorf("register media metrics: %w", err)
		}
	}
	return r, nil
}

// nanotime is the relay's clock in Unix nanoseconds, the unit of its
// session times.
func (r *Relay) nanotime() int64 { return r.now().UnixNano() }

// Address is the relay address advertised in SDP.
func (r *Relay) Address() netip.Addr { return r.addr }

// Run starts the data-path workers and the idle sweeper, and closes the
// relay when ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	r.start()
	<-ctx.Done()
	r.Close()
	return nil
}

func (r *Relay) start() {
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	for _, w := range r.workers {
		go w.run()
	}
	r.kern.start()
	r.wg.Add(1)
	go r.every(min(r.cfg.IdleTimeout/4, time.Second), r.sweepOnce)
}

// Close ends every session, closes all sockets and stops the workers: Run
// does it on return, a relay that never ran needs it.
func (r *Relay) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	started := r.started
	close(r.stop)
	// Remove the whole table first rather than each session's elements.
	r.kern.close()
	for id, s := range r.sessions {
		r.releaseLocked(s, "shutdown")
		delete(r.sessions, id)
	}
	r.mu.Unlock()
	r.wg.Wait()
	for _, w := range r.workers {
		w.close(started)
	}
}

// Anchor creates or updates the session of callID with an SDP body sent by
// the caller (leg A, fromCaller) or the callee (leg B), and returns the body
// rewritten for the other leg: relay address and the relay ports facing
// that other leg. Use it for every SDP in either
// direction: INVITE, 18x, 200, ACK (late offer), UPDATE, re-INVITE. A changed
// endpoint (new address or port) updates where the relay sends and allows
// that leg to be latched again; held streams keep their ports.
// Errors: ErrBadSDP (pass the call un-anchored or answer 488), ErrNoPorts (503);
// either also matches ErrSessionKept when callID already has a session, which
// is then left unchanged (answer 488 so the call keeps its relayed media).
// The leg's media is then accepted only from the address its SDP names and
// any signalling source an AnchorFrom gave it before.
func (r *Relay) Anchor(callID string, fromCaller bool, body []byte) ([]byte, error) {
	return r.AnchorFrom(callID, fromCaller, netip.Addr{}, body)
}

// AnchorFrom is Anchor for an SDP body whose SIP message came from signal
// (the IP the INVITE, response, ACK or UPDATE arrived from; invalid if
// unknown). The leg's media is accepted only from the address its SDP names
// or from signal, any port (a phone behind NAT names its private address in
// SDP and sends RTP from the public address its SIP comes from); every other
// source is a stranger. An invalid signal keeps the leg's previous one.
func (r *Relay) AnchorFrom(callID string, fromCaller bool, signal netip.Addr, body []byte) ([]byte, error) {
	from := LegB
	if fromCaller {
		from = LegA
	}
	out, err := r.anchor(callID, from, signal.Unmap(), body)
	if err == nil {
		r.replicate(callID)
	}
	return out, err
}

func (r *Relay) anchor(callID string, from Leg, signal netip.Addr, body []byte) ([]byte, error) {
	sd, infos, err := parseSDP(body)
	if err != nil {
		r.m.sdpErrors.Inc()
		r.mu.Lock()
		kept := r.sessions[callID] != nil
		r.mu.Unlock()
		if kept {
			r.m.updateRefused.WithLabelValues("bad_sdp").Inc()
			return nil, fmt.Errorf("anchor %q from leg %s: %w (%w)", callID, from, err, ErrSessionKept)
		}
		return nil, fmt.Errorf("anchor %q from leg %s: %w", callID, from, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	s := r.sessions[callID]
	created := false
	if s == nil {
		if r.cfg.MaxSessions > 0 && len(r.sessions) >= r.cfg.MaxSessions {
			r.m.portExhausted.Inc()
			return nil, fmt.Errorf("anchor %q: %w: max_sessions %d reached", callID, ErrNoPorts, r.cfg.MaxSessions)
		}
		s = &session{callID: callID, w: r.workers[r.next%len(r.workers)], created: r.now()}
		r.next++
		created = true
		if p, ok := r.pendingTags[callID]; ok {
			s.callerTag = p.tag
			delete(r.pendingTags, callID)
		}
	}
	for len(s.streams) < len(infos) {
		st, err := r.newStream(s, [2]int{})
		if err != nil {
			if errors.Is(err, ErrNoPorts) {
				r.m.portExhausted.Inc()
			}
			if created {
				r.releaseLocked(s, "no_ports")
				return nil, fmt.Errorf("anchor %q: %w", callID, err)
			}
			// Streams added so far stay with the session until it ends;
			// what it relays is unchanged.
			r.m.updateRefused.WithLabelValues("no_ports").Inc()
			return nil, fmt.Errorf("anchor %q: %w (%w)", callID, err, ErrSessionKept)
		}
		s.streams = append(s.streams, st)
	}
	if created {
		r.sessions[callID] = s
	}
	s.seen[from] = true
	s.touched = r.nanotime()
	s.sdp[from], s.sdpLast = compactSDP(body), from
	ports := make([]int, len(infos))
	s.w.mu.Lock()
	if signal.Is4() {
		for _, st := range s.streams {
			st.socks[from][0].signal, st.socks[from][0].hasSig = signal.As4(), true
			st.socks[from][1].signal, st.socks[from][1].hasSig = signal.As4(), true
		}
	}
	for i, in := range infos {
		st := s.streams[i]
		ports[i] = st.ports[from.other()]
		st.hold[from] = in.hold
		if in.disabled || in.hold {
			continue
		}
		setHint(st.socks[from][0], in.rtp)
		setHint(st.socks[from][1], in.rtcp)
		st.stats[from][0].clock = in.clock
	}
	s.w.mu.Unlock()
	r.kern.syncSession(s)
	out, err := rewriteSDP(sd, infos, r.addr, ports)
	if err != nil {
		r.m.sdpErrors.Inc()
		return nil, fmt.Errorf("anchor %q from leg %s: %w", callID, from, err)
	}
	return out, nil
}

// setHint records the SDP endpoint of a socket's leg; a change clears the
// latch so the next valid packet latches again. w.mu must be held.
func setHint(k *sock, ap netip.AddrPort) {
	raw := rawFromAddrPort(ap)
	if k.hasHint && sameAddr(&k.hint, &raw) {
		return
	}
	k.hint, k.hasHint = raw, true
	k.latched = false
}

// newStream allocates (or, for Import, takes the given) two port pairs and
// binds their four sockets on s's worker. r.mu must be held.
func (r *Relay) newStream(s *session, want [2]int) (*stream, error) {
	st := &stream{}
	var got []int
	undo := func() {
		for _, l := range []Leg{LegA, LegB} {
			for k := range 2 {
				if so := st.socks[l][k]; so != nil {
					s.w.mu.Lock()
					s.w.removeLocked(so)
					s.w.mu.Unlock()
				}
			}
		}
		for _, p := range got {
			r.pool.put(p)
		}
	}
	for _, l := range []Leg{LegA, LegB} {
		port, err := r.bindPair(s, st, l, want[l])
		if err != nil {
			undo()
			return nil, err
		}
		got = append(got, port)
		st.ports[l] = port
	}
	for _, l := range []Leg{LegA, LegB} {
		for k := range 2 {
			st.socks[l][k].peer = st.socks[l.other()][k]
			st.socks[l][k].stats = &st.stats[l][k]
		}
		st.socks[l][1].rtp = st.socks[l][0]
	}
	for _, l := range []Leg{LegA, LegB} {
		for k := range 2 {
			if err := s.w.add(st.socks[l][k]); err != nil {
				undo()
				return nil, err
			}
		}
	}
	return st, nil
}

// bindPair takes a port pair from the pool (or the wanted one) and binds RTP
// and RTCP sockets; ports some other process holds are skipped.
func (r *Relay) bindPair(s *session, st *stream, l Leg, want int) (int, error) {
	tries := r.pool.size()
	for {
		port := want
		if want == 0 {
			var ok bool
			if port, ok = r.pool.get(); !ok || tries == 0 {
				if ok {
					r.pool.put(port)
				}
				return 0, fmt.Errorf("%w: range %s exhausted", ErrNoPorts, r.cfg.Ports)
			}
			tries--
		} else if err := r.pool.take(want); err != nil {
			return 0, err
		}
		fd1, err1 := openSock(r.addr, port)
		fd2 := -1
		var err2 error
		if err1 == nil {
			fd2, err2 = openSock(r.addr, port+1)
		}
		if err1 == nil && err2 == nil {
			mk := func(fd, p int, rtcp bool) *sock {
				return &sock{fd: fd, cfd: -1, port: p, leg: l, rtcp: rtcp, w: s.w, relatch: int64(r.cfg.RelatchAfter), learn: int64(r.cfg.LearnWindow)}
			}
			st.socks[l][0], st.socks[l][1] = mk(fd1, port, false), mk(fd2, port+1, true)
			return port, nil
		}
		if fd1 >= 0 && err1 == nil {
			closeFD(fd1)
		}
		err := err1
		if err == nil {
			err = err2
		}
		r.pool.put(port)
		switch {
		case errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM):
			// Out of descriptors or memory: as good as out of ports (503).
			return 0, fmt.Errorf("%w: bind port pair %d: %w", ErrNoPorts, port, err)
		case want != 0 || !errors.Is(err, unix.EADDRINUSE):
			return 0, fmt.Errorf("bind port pair %d: %w", port, err)
		}
		// Another process holds it: it went back to the end of the FIFO; try
		// the next pair.
		r.log.Warn("relay port pair in use by another process", zap.Int("port", port), zap.Error(err))
	}
}

// Release ends the session of callID (BYE, CANCEL, final error response) and
// frees its ports. Releasing an unknown Call-ID returns ErrNoSession.
// With replication on (StateChanges), the twin is told in any case.
func (r *Relay) Release(callID, reason string) error {
	r.mu.Lock()
	s := r.sessions[callID]
	rel, out := releasedRecord(callID, 0), r.out
	if s != nil {
		rel = releasedRecord(callID, s.version)
		delete(r.sessions, callID)
		r.releaseLocked(s, reason)
	}
	r.mu.Unlock()
	_ = out.put(rel)
	if s == nil {
		return fmt.Errorf("release %q: %w", callID, ErrNoSession)
	}
	return nil
}

func (r *Relay) releaseLocked(s *session, reason string) {
	r.unjoinLocked(s)
	r.kern.remove(s) // before the sockets close: the ports may be reused at once
	s.w.mu.Lock()
	for _, st := range s.streams {
		for l := range 2 {
			for k := range 2 {
				s.w.removeLocked(st.socks[l][k])
			}
		}
	}
	s.w.mu.Unlock()
	for _, st := range s.streams {
		r.pool.put(st.ports[LegA])
		r.pool.put(st.ports[LegB])
	}
	r.log.Debug("media session released", zap.String("call_id", s.callID), zap.String("reason", reason))
}

// every runs fn every d until the relay stops (sweepOnce, the refresh).
func (r *Relay) every(d time.Duration, fn func()) {
	defer r.wg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// sweepOnce ends sessions that relayed no packet for idle_timeout.
func (r *Relay) sweepOnce() {
	now := r.nanotime()
	r.mu.Lock()
	for id, s := range r.sessions {
		rx := int64(0)
		s.w.mu.Lock()
		for _, st := range s.streams {
			for l := range 2 {
				for k := range 2 {
					rx = max(rx, st.socks[l][k].lastRx)
				}
			}
		}
		s.w.mu.Unlock()
		if s.replica && rx > s.replicaSince {
			// Packets reach this replica: this proxy holds the VIP now.
			s.replica = false
		}
		if s.replica {
			if now-s.heard > int64(r.replicaTTL) {
				delete(r.sessions, id)
				r.releaseLocked(s, "replica_expired")
				r.log.Info("replicated media session not refreshed by the VIP holder, released",
					zap.String("call_id", id), zap.Duration("silent", time.Duration(now-s.heard)))
			}
			continue
		}
		limit := int64(r.cfg.IdleTimeout)
		if !s.seen[LegA] || !s.seen[LegB] {
			limit = int64(max(r.cfg.IdleTimeout, unansweredTimeout))
		}
		last := max(s.created.UnixNano(), s.touched, s.heard, rx)
		if now-last > limit {
			delete(r.sessions, id)
			r.releaseLocked(s, "idle")
			if len(r.idleGone) < maxIdleGone {
				r.idleGone = append(r.idleGone, releasedRecord(id, s.version))
			}
			r.m.idleEnded.Inc()
			r.log.Info("media session idle, released", zap.String("call_id", id), zap.Duration("idle", time.Duration(now-last)))
		}
	}
	for id, p := range r.pendingTags {
		if now-p.at > int64(pendingTagTTL) {
			delete(r.pendingTags, id)
		}
	}
	for id, tb := range r.tombs {
		if now-tb.at > int64(max(r.replicaTTL, pendingTagTTL)) {
			delete(r.tombs, id)
		}
	}
	r.mu.Unlock()
}
