package registrar

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Registrar is the binding cache. All methods are safe for concurrent use.
type Registrar struct {
	cfg  Config
	node string
	log  *zap.Logger
	m    *metrics
	now  func() time.Time

	mu     sync.RWMutex
	tab    *table
	clock  hlc
	closed bool
	full   atomic.Bool // refusing for max_bindings; logged on each change

	store  *store // nil: memory only
	status StoreStatus

	subsMu sync.RWMutex
	subs   []func(Record)
}

// StoreStatus describes the persistent store for status output.
type StoreStatus struct {
	// Path is the bbolt file; empty when data_dir is empty (memory only).
	Path string `json:"path,omitempty"`
	// Error is the last store problem (path and reason), empty when healthy.
	Error string `json:"error,omitempty"`
	// MovedTo is where a damaged store file was moved at start.
	MovedTo string `json:"moved_to,omitempty"`
	// Errors counts store failures since start.
	Errors uint64 `json:"errors"`
	// Pending is the number of records waiting to be written.
	Pending int `json:"pending"`
}

// Status is a snapshot for the status command and JSON endpoint.
type Status struct {
	Node       string      `json:"node"`
	Bindings   int         `json:"bindings"`
	AORs       int         `json:"aors"`
	Tombstones int         `json:"tombstones"`
	Store      StoreStatus `json:"store"`
}

// Option configures a Registrar.
type Option func(*options)

type options struct {
	localHosts []string
}

// WithLocalHosts adds the proxy's own host names and addresses (advertised
// host, listen addresses, VIPs) to the local domains when cfg.Domains is
// set, so that "sip:201@<proxy address>", which Asterisk sends to reach a
// phone registered as "sip:201@pbx.example.com", finds it. IPv6 addresses
// may be given with or without brackets; unspecified addresses (0.0.0.0,
// ::) are ignored, so pass the addresses of the interfaces instead. Without
// cfg.Domains every domain is local already and the hosts change nothing.
// Hosts can be given more than once; they are merged.
func WithLocalHosts(hosts ...string) Option {
	return func(o *options) { o.localHosts = append(o.localHosts, hosts...) }
}

// New builds a registrar for node (the name used in record versions; must
// be unique in the cluster), loading bindings from cfg.DataDir. A damaged
// store file is logged, counted, moved aside and the registrar starts empty;
// only a store that cannot be opened at all (locked, no permission) fails.
func New(cfg Config, node string, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Registrar, error) {
	return newWithClock(cfg, node, log, reg, func() time.Time { return time.Now().UTC().Round(0) }, opts...)
}

func newWithClock(cfg Config, node string, log *zap.Logger, reg prometheus.Registerer, now func() time.Time, opts ...Option) (*Registrar, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("registrar config: %w", err)
	}
	if node == "" {
		return nil, errors.New("registrar: node name is empty")
	}
	if log == nil {
		log = zap.NewNop()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("registrar metrics: %w", err)
	}
	r := &Registrar{
		cfg:  cfg,
		node: node,
		log:  log,
		m:    m,
		now:  now,
		tab:  newTable(cfg.Domains, o.localHosts),
	}
	if cfg.DataDir != "" {
		if err := r.openAndLoad(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *Registrar) storeError(err error, fields ...zap.Field) {
	r.m.storeErrors.Inc()
	r.mu.Lock()
	r.status.Errors++
	r.status.Error = err.Error()
	r.mu.Unlock()
	r.log.Error("registrar store error", append(fields, zap.Error(err))...)
}

func (r *Registrar) openAndLoad() error {
	now := r.now()
	st, cerr, err := openStore(r.cfg.DataDir, now)
	if err != nil {
		return err
	}
	r.status.Path = st.path
	if cerr != nil {
		r.status.MovedTo = cerr.movedTo
		r.storeError(cerr, zap.String("path", cerr.path), zap.String("moved_to", cerr.movedTo))
	}
	recs, bad, err := st.load()
	if err != nil {
		// Readable header, damaged pages: same treatment as an unreadable file.
		_ = st.db.Close()
		cerr, merr := moveAside(st.path, err, now)
		if merr != nil {
			return merr
		}
		r.status.MovedTo = cerr.movedTo
		r.storeError(cerr, zap.String("path", cerr.path), zap.String("moved_to", cerr.movedTo))
		if st, cerr, err = openStore(r.cfg.DataDir, now); err != nil {
			return err
		}
		if cerr != nil {
			return cerr
		}
		recs, bad = nil, nil
	}
	r.store = st
	fix := make(map[string]pendingOp)
	logged := 0
	for k, e := range bad {
		err := fmt.Errorf("registrar store %s: record %q dropped: %w", st.path, k, e)
		if logged < 10 {
			r.storeError(err, zap.String("path", st.path))
			logged++
		} else {
			// Count every one, log a few: a badly damaged file must not
			// flood the log.
			r.m.storeErrors.Inc()
			r.status.Errors++
		}
		fix[k] = pendingOp{del: true}
	}
	loaded, expired := 0, 0
	rekeyed := make(map[string][2]string)
	for _, sr := range recs {
		rec := sr.rec
		if !rec.Binding.Expires.After(now) {
			if !rec.Deleted {
				r.tab.markKnown(rec.Binding.AOR, now)
			}
			fix[sr.key] = pendingOp{del: true}
			expired++
			continue
		}
		ck := contactKeyString(rec.Binding.Contact)
		if k := r.storeKey(rec.Binding.AOR, ck); k != sr.key {
			// Keyed differently by an earlier configuration (domains):
			// move it under the current key.
			fix[sr.key] = pendingOp{del: true}
			rekeyed[k] = [2]string{rec.Binding.AOR, ck}
		}
		r.clock.observe(rec.Version.Time)
		if taken, _ := r.tab.apply(rec, ck, now); taken {
			loaded++
		}
	}
	for k, ac := range rekeyed {
		// Write whichever record won under the current key.
		ak, _ := r.tab.key(ac[0])
		if e := r.tab.aors[ak]; e != nil {
			if i := e.find(ac[1]); i >= 0 {
				fix[k] = pendingOp{rec: e.recs[i].rec}
			}
		}
	}
	st.enqueue(fix)
	r.setGauges()
	r.log.Info("registrar store loaded", zap.String("path", st.path),
		zap.Int("records", loaded), zap.Int("expired_dropped", expired), zap.Int("undecodable", len(bad)))
	return nil
}

func (r *Registrar) storeKey(aor, ckey string) string {
	k, _ := r.tab.key(aor)
	return k + "\x00" + ckey
}

func (r *Registrar) setGauges() {
	r.m.bindings.Set(float64(r.tab.bindings))
	r.m.aors.Set(float64(r.tab.liveAORs))
}

// Run purges expired bindings every purge_interval and writes queued
// changes to the store until ctx ends; it then closes the registrar.
func (r *Registrar) Run(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.PurgeInterval)
	defer tick.Stop()
	var kick chan struct{}
	if r.store != nil {
		kick = r.store.kick
	}
	for {
		select {
		case <-ctx.Done():
			return r.Close()
		case <-tick.C:
			r.Purge()
			// Also retries writes that failed earlier.
			r.flush()
		case <-kick:
			r.flush()
		}
	}
}

func (r *Registrar) flush() {
	if r.store == nil {
		return
	}
	// After Close the database is closed; Close did the last flush.
	r.mu.RLock()
	closed := r.closed
	r.mu.RUnlock()
	if closed {
		return
	}
	if _, err := r.store.flush(); err != nil {
		r.storeError(err, zap.String("path", r.store.path))
	}
}

// Close flushes queued writes and closes the store (Run does it on return;
// a registrar that never ran needs it). Later Save and Merge calls fail
// with ErrClosed.
func (r *Registrar) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	if r.store == nil {
		return nil
	}
	if err := r.store.close(); err != nil {
		r.storeError(err, zap.String("path", r.store.path))
		return err
	}
	return nil
}

// OnChange registers fn to be called with every local change (Save,
// RefreshFromStore), for broadcast to peers. Merged records are not passed
// back. fn runs on the caller's goroutine after the lock is released: it
// must not block.
func (r *Registrar) OnChange(fn func(Record)) {
	r.subsMu.Lock()
	r.subs = append(r.subs, fn)
	r.subsMu.Unlock()
}

func (r *Registrar) notify(recs []Record) {
	if len(recs) == 0 {
		return
	}
	r.subsMu.RLock()
	subs := r.subs
	r.subsMu.RUnlock()
	for _, fn := range subs {
		for _, rec := range recs {
			fn(rec)
		}
	}
}

// commit applies local records under r.mu, queues them for the store and
// counts them; callers notify after unlocking.
func (r *Registrar) commit(recs []Record, now time.Time, op string) []Record {
	var taken []Record
	ops := make(map[string]pendingOp, len(recs))
	for _, rec := range recs {
		ck := contactKeyString(rec.Binding.Contact)
		ok, prevLive := r.tab.apply(rec, ck, now)
		if !ok {
			continue
		}
		taken = append(taken, rec)
		ops[r.storeKey(rec.Binding.AOR, ck)] = pendingOp{rec: rec}
		o := op
		if o == "" {
			switch {
			case rec.Deleted:
				o = opRemove
			case prevLive:
				o = opRefresh
			default:
				o = opAdd
			}
		}
		r.m.changes.WithLabelValues(o).Inc()
	}
	r.setGauges()
	if r.store != nil {
		r.store.enqueue(ops)
	}
	return taken
}

func (r *Registrar) tombstone(aor, contact string, now time.Time) Record {
	return Record{
		Binding: Binding{AOR: aor, Contact: contact, Expires: now.Add(r.cfg.MaxExpires), Updated: now},
		Deleted: true,
		Version: Version{Time: r.clock.next(now), Node: r.node},
	}
}

// listLag is how long after a binding was stored a backend's 2xx may still
// arrive that was made before it (64*T1, the longest a REGISTER
// transaction lives): two devices of one AOR registering at once get 2xx
// lists of the AOR's contacts taken in one order and handled in the other.
// A binding that recent is not dropped for missing from such a list; the
// phone was told it is registered.
const listLag = 32 * time.Second

// Save stores the bindings a backend's 2xx to a REGISTER establishes and
// returns the AOR's live bindings afterwards. The 2xx's Contact list is
// authoritative: a Contact of the REGISTER it does not list is removed, as
// is a binding the same backend accepted before (listLag or more ago) and
// no longer lists. Each
// expiry comes from the 2xx (Contact expires param, then its Expires
// header), capped at max_expires. Expires: 0 and Contact: * remove.
// ErrFull refuses new bindings beyond max_bindings, ErrAORFull beyond
// max_bindings_per_aor (the whole REGISTER: RFC 3261 10.3 commits all of
// its updates or none); ErrInvalid a pair that is not a REGISTER and a 2xx.
func (r *Registrar) Save(req *sip.Request, res *sip.Response, src Source, backend string) ([]Binding, error) {
	live, _, err := r.save(req, res, src, backend)
	return live, err
}

// save is Save; it also returns the bindings the pair set, whose lifetime
// granted is Expires-Updated.
func (r *Registrar) save(req *sip.Request, res *sip.Response, src Source, backend string) (live, set []Binding, err error) {
	defer func() {
		if err != nil {
			r.refuse(err)
		}
	}()
	now := r.now()
	u, err := extract(&r.cfg, req, res, src, backend, now)
	if err != nil {
		return nil, nil, err
	}
	key, _ := r.tab.key(u.aor)

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, nil, ErrClosed
	}
	e := r.tab.aors[key]
	var recs []Record
	switch {
	case u.isQuery:
	case u.removeAll:
		if e != nil {
			for _, en := range e.recs {
				if !en.rec.Deleted {
					recs = append(recs, r.tombstone(en.rec.Binding.AOR, en.rec.Binding.Contact, now))
				}
			}
		}
	default:
		add := make(map[string]bool, len(u.set))
		for _, b := range u.set {
			add[contactKeyString(b.Contact)] = true
		}
		drop := make(map[string]bool, len(u.remove))
		for _, c := range u.remove {
			drop[contactKeyString(c)] = true
		}
		var stale []Binding
		if u.hasList && e != nil {
			for _, en := range e.recs {
				b := en.rec.Binding
				if !en.rec.Deleted && b.Backend == backend && !u.listed[en.ckey] && !add[en.ckey] &&
					now.Sub(b.Updated) >= listLag {
					drop[en.ckey] = true
					stale = append(stale, b)
				}
			}
		}
		if err := r.admit(u.aor, e, add, drop, now); err != nil {
			r.mu.Unlock()
			return nil, nil, err
		}
		for _, b := range u.set {
			recs = append(recs, Record{Binding: b, Version: Version{Time: r.clock.next(now), Node: r.node}})
		}
		for _, c := range u.remove {
			recs = append(recs, r.tombstone(u.aor, c, now))
		}
		for _, b := range stale {
			recs = append(recs, r.tombstone(b.AOR, b.Contact, now))
		}
		set = u.set
	}
	taken := r.commit(recs, now, "")
	r.noteRoom()
	if e = r.tab.aors[key]; e != nil {
		live = liveBindings(nil, e, now)
	}
	r.mu.Unlock()
	r.notify(taken)
	return live, set, nil
}

// Store saves the bindings of a REGISTER a backend accepted with the 2xx
// res (see Save), from the source the proxy's transport received req on,
// and returns the 2xx to relay to the phone: a copy of res stating in each
// Contact hapbx holds the lifetime hapbx grants and will honour (see
// grant). An error means the bindings were not kept: the phone must not
// be told it is registered.
func (r *Registrar) Store(req *sip.Request, res *sip.Response, backend string) (*sip.Response, error) {
	src, err := sourceOf(req)
	if err != nil {
		r.refuse(err)
		return nil, err
	}
	live, set, err := r.save(req, res, src, backend)
	if err != nil {
		return nil, err
	}
	return grant(res, set, live, r.now()), nil
}

// Lookup returns the live bindings of aor (any spelling: "sip:201@host",
// "sips:…", "<sip:201@host:5060;transport=udp>", or a bare user), best
// first (highest q, then most recent). ErrUnknownAOR: never registered
// (404); ErrNoBinding: registered before, nothing live now (480). A user
// part that is no AOR but a registered Contact's user (Asterisk dialling
// the contact it stored, e.g. baresip's "203-0x55d8c1e0") yields the
// bindings with that Contact user.
func (r *Registrar) Lookup(aor string) ([]Binding, error) {
	key, ok := r.tab.key(aor)
	if !ok {
		return nil, ErrUnknownAOR
	}
	now := r.now()
	r.mu.RLock()
	e := r.tab.aors[key]
	if e == nil {
		out, err := r.lookupContactUser(aor, now)
		r.mu.RUnlock()
		return out, err
	}
	var out []Binding
	if e.live > 0 {
		out = liveBindings(make([]Binding, 0, e.live), e, now)
	}
	r.mu.RUnlock()
	if len(out) == 0 {
		return nil, ErrNoBinding
	}
	return out, nil
}

// Reach calls each with the Contact, received address and transport of
// every live binding of uri, best first (see Lookup). registered is false
// for a uri never registered (ErrUnknownAOR), true with no call of each
// for one with no live binding (ErrNoBinding).
func (r *Registrar) Reach(uri string, each func(contact string, from netip.AddrPort, transport string)) (registered bool, err error) {
	bs, err := r.Lookup(uri)
	for _, b := range bs {
		each(b.Contact, b.Source.Addr, b.Source.Transport)
	}
	switch {
	case errors.Is(err, ErrUnknownAOR):
		return false, nil
	case errors.Is(err, ErrNoBinding):
		return true, nil
	}
	return true, err
}

// lookupContactUser serves a request URI carrying a Contact's user part
// rather than the AOR's (Asterisk dialling a stored contact): only the
// bindings with that Contact user are returned. Callers hold r.mu.
func (r *Registrar) lookupContactUser(uri string, now time.Time) ([]Binding, error) {
	user, _, ok := splitAOR(uri)
	if !ok {
		return nil, ErrUnknownAOR
	}
	e := r.tab.byContact(user)
	if e == nil {
		return nil, ErrUnknownAOR
	}
	var out []Binding
	for _, en := range e.recs {
		if en.cuser == user && !en.rec.Deleted && en.rec.Binding.Expires.After(now) {
			out = append(out, en.rec.Binding)
		}
	}
	if len(out) == 0 {
		return nil, ErrNoBinding
	}
	return out, nil
}

// Purge drops expired bindings and tombstones now; Run calls it every
// purge_interval. It returns the number of expired bindings dropped.
func (r *Registrar) Purge() int {
	now := r.now()
	r.mu.Lock()
	gone := r.tab.purge(now)
	n := 0
	ops := make(map[string]pendingOp, len(gone))
	for _, rec := range gone {
		if !rec.Deleted {
			n++
		}
		ops[r.storeKey(rec.Binding.AOR, contactKeyString(rec.Binding.Contact))] = pendingOp{del: true}
	}
	r.setGauges()
	r.noteRoom()
	r.mu.Unlock()
	r.m.purged.Add(float64(n))
	if r.store != nil {
		r.store.enqueue(ops)
	}
	return n
}

// Records returns every unexpired record, tombstones included: the full
// state for a push/pull exchange with a peer.
func (r *Registrar) Records() []Record {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Record, 0, r.tab.bindings+r.tab.tombs)
	for _, e := range r.tab.aors {
		for _, en := range e.recs {
			if en.rec.Binding.Expires.After(now) {
				out = append(out, en.rec)
			}
		}
	}
	return out
}

// Merge takes records from a peer: for each AOR and Contact the highest
// version wins, whatever the order or repetition of the input. Records
// failing their checks are skipped. It returns how many were taken.
// max_bindings does not apply: every proxy must converge to the same state.
func (r *Registrar) Merge(recs []Record) (int, error) {
	now := r.now()
	valid := make([]Record, 0, len(recs))
	for _, rec := range recs {
		if err := rec.check(); err != nil {
			r.log.Warn("registrar: merge skips bad record", zap.Error(err))
			continue
		}
		valid = append(valid, rec)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrClosed
	}
	for _, rec := range valid {
		r.clock.observe(rec.Version.Time)
	}
	taken := r.commit(valid, now, opMerge)
	r.mu.Unlock()
	return len(taken), nil
}

// Count returns the number of bindings and of AORs having one.
func (r *Registrar) Count() (bindings, aors int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.tab.bindings, r.tab.liveAORs
}

// Bindings returns every live binding, for operators.
func (r *Registrar) Bindings() []Binding {
	now := r.now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Binding, 0, r.tab.bindings)
	for _, e := range r.tab.aors {
		out = liveBindings(out, e, now)
	}
	return out
}

// Snapshot returns counts and store health for status output.
func (r *Registrar) Snapshot() Status {
	r.mu.RLock()
	s := Status{
		Node:       r.node,
		Bindings:   r.tab.bindings,
		AORs:       r.tab.liveAORs,
		Tombstones: r.tab.tombs,
		Store:      r.status,
	}
	r.mu.RUnlock()
	if r.store != nil {
		s.Store.Pending = r.store.pendingLen()
	}
	return s
}

// TooBrief reports whether a REGISTER asks for an interval shorter than
// min_expires (a non-zero Contact expires param or Expires header); the
// proxy then answers 423 Interval Too Brief with Min-Expires: min.
func (r *Registrar) TooBrief(req *sip.Request) (min time.Duration, tooBrief bool) {
	min = r.cfg.MinExpires
	short := func(s uint32) bool { return s != 0 && time.Duration(s)*time.Second < min }
	hdr, hasHdr := headerExpires(req)
	for _, c := range contacts(req) {
		if c.Address.Wildcard {
			continue
		}
		if s, ok := paramExpires(c.Params); ok {
			if short(s) {
				return min, true
			}
		} else if hasHdr && short(hdr) {
			return min, true
		}
	}
	return min, false
}
