package trunk

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// Sender sends one request to the destination set on it
// (Request.Destination, Request.Transport) and returns its final response.
// The daemon's is the proxy's sipgo client, so requests leave from the
// proxy's socket (the VIP) and its Via. A response that never comes is
// ctx's error.
type Sender interface {
	Do(ctx context.Context, req *sip.Request) (*sip.Response, error)
}

// TargetSource lists a trunk's provider hosts in the order to try them
// (Trunk: resolved, live ones first).
type TargetSource interface {
	Targets(ctx context.Context) ([]Target, error)
}

// RegistrationConfig tunes a Registration beyond the trunk's settings.
type RegistrationConfig struct {
	// Contact is where the provider sends the trunk's calls: the VIP, the
	// same on both proxies of a pair.
	Contact sip.Uri
	// Timeout bounds one REGISTER transaction to one host; a host that
	// does not answer in time is left for the next.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the wait between failed rounds (all
	// hosts tried), doubled after each failure.
	BackoffMin, BackoffMax time.Duration
}

// DefaultRegistrationConfig is Timeout 4 s, backoff 1 s to 60 s.
func DefaultRegistrationConfig() RegistrationConfig {
	return RegistrationConfig{Timeout: 4 * time.Second, BackoffMin: time.Second, BackoffMax: time.Minute}
}

// Validate checks the settings.
func (c RegistrationConfig) Validate() error {
	var errs []error
	if c.Contact.Host == "" {
		errs = append(errs, errors.New("contact: must name a host (the VIP)"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout: must be > 0, got %s", c.Timeout))
	}
	if c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("backoff: want 0 < min <= max, got %s and %s", c.BackoffMin, c.BackoffMax))
	}
	return errors.Join(errs...)
}

// Registration keeps the trunk's registration at its provider: REGISTER
// with the Contact given, the provider's 401/407 answered with the trunk's
// credentials (digest, github.com/icholy/digest), refreshed at half the
// expiry the provider granted, retried with backoff after a failure, the
// provider's hosts tried in order when one does not answer. The Call-ID
// stays for the registration's life and the CSeq grows by one per
// request, so a twin continuing from State sends what the provider
// expects of the same client.
type Registration struct {
	trunk    Config
	password string
	cfg      RegistrationConfig
	hosts    TargetSource
	send     Sender
	log      *zap.Logger
	m        *Metrics
	now      func() time.Time
	notify   func(State)
	sending  func(State)
	// active gates the REGISTERs: only the VIP holder registers.
	active func() bool

	mu sync.Mutex
	st State
	// wake makes Run re-plan (Continue changed the state).
	wake chan struct{}
}

// RegistrationOption changes a Registration from its defaults.
type RegistrationOption func(*Registration)

// WithNotify calls f with the state after every REGISTER round (tests,
// and the cluster's replication).
func WithNotify(f func(State)) RegistrationOption { return func(r *Registration) { r.notify = f } }

// WithSending calls f with the state just before each REGISTER leaves
// (its CSeq taken): a twin that continues from it never reuses a CSeq the
// provider may have seen, even when this node dies in mid-round.
func WithSending(f func(State)) RegistrationOption { return func(r *Registration) { r.sending = f } }

// WithActive makes the registration send only while active reports
// true (the VIP holder), looking again every activeCheck.
func WithActive(active func() bool) RegistrationOption {
	return func(r *Registration) { r.active = active }
}

// activeCheck is how often an inactive registration asks again.
const activeCheck = time.Second

// NewRegistration returns the registration of trunk t (t.Register set),
// sending through send to the hosts of hosts. m may be nil.
func NewRegistration(t Config, password string, cfg RegistrationConfig, hosts TargetSource, send Sender, m *Metrics, log *zap.Logger, opts ...RegistrationOption) (*Registration, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("trunk %s registration: %w", t.Name, err)
	}
	if m == nil {
		m, _ = NewMetrics(nil)
	}
	r := &Registration{
		trunk: t, password: password, cfg: cfg, hosts: hosts, send: send, m: m,
		log:  log.With(zap.String("trunk", t.Name)),
		now:  time.Now,
		wake: make(chan struct{}, 1),
		st: State{
			Trunk:   t.Name,
			Asked:   t.RegisterInterval,
			CallID:  sip.GenerateTagN(24) + "@" + cfg.Contact.Host,
			FromTag: sip.GenerateTagN(16),
		},
	}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// State returns the registration's state now.
func (r *Registration) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// Continue takes over a registration another node kept (its State,
// replicated): the same Call-ID and From tag, the CSeq after its last,
// refreshed when it would have refreshed it.
func (r *Registration) Continue(s State) {
	r.mu.Lock()
	if s.CallID != "" {
		r.st = s
		r.st.Trunk = r.trunk.Name
		if r.st.Asked <= 0 {
			r.st.Asked = r.trunk.RegisterInterval
		}
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run keeps the registration until ctx ends. It returns nil then, and
// does not unregister: the twin that takes the VIP continues it.
func (r *Registration) Run(ctx context.Context) error {
	backoff := r.cfg.BackoffMin
	for {
		if r.active != nil && !r.active() {
			if !r.sleep(ctx, activeCheck) {
				return nil
			}
			continue
		}
		st := r.State()
		if st.Registered && !st.Refresh.IsZero() {
			if wait := st.Refresh.Sub(r.now()); wait > 0 {
				if !r.sleep(ctx, wait) {
					return nil
				}
				continue // re-plan: Continue may have changed the state
			}
		}
		err := r.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			backoff = r.cfg.BackoffMin
			continue
		}
		r.log.Warn("trunk registration failed", zap.Error(err), zap.Duration("retry_in", backoff))
		if !r.sleep(ctx, backoff) {
			return nil
		}
		backoff = min(2*backoff, r.cfg.BackoffMax)
	}
}

// sleep waits d, or less when Continue wakes it; false when ctx ended.
func (r *Registration) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-r.wake:
	case <-t.C:
	}
	return true
}

// errRejected marks a final error response: the next host would give the
// same (wrong credentials, unknown account).
var errRejected = errors.New("rejected")

// round registers once: through the host registered with last, then the
// others in order, until one grants it.
func (r *Registration) round(ctx context.Context) error {
	targets, err := r.hosts.Targets(ctx)
	if err == nil && len(targets) == 0 {
		err = ErrNoTarget
	}
	if err != nil {
		return r.failed(fmt.Errorf("provider hosts: %w", err))
	}
	last := r.State().Host
	for i, t := range targets {
		if t.Addr.String() == last && i > 0 {
			copy(targets[1:i+1], targets[:i])
			targets[0] = t
			break
		}
	}
	for _, t := range targets {
		granted, err := r.registerAt(ctx, t)
		if err == nil {
			r.m.registrations.WithLabelValues(r.trunk.Name, resultOK).Inc()
			r.succeeded(t, granted)
			return nil
		}
		if errors.Is(err, errRejected) {
			r.m.registrations.WithLabelValues(r.trunk.Name, resultRejected).Inc()
			return r.failed(err)
		}
		r.m.registrations.WithLabelValues(r.trunk.Name, resultTimeout).Inc()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.log.Info("trunk host did not answer the REGISTER, trying the next", zap.Stringer("host", t), zap.Error(err))
	}
	return r.failed(fmt.Errorf("no provider host answered (%d tried)", len(targets)))
}

// registerAt sends REGISTER to t, answers one challenge, and returns the
// expiry the provider granted. errRejected wraps a final error response
// other than 408 and 5xx (those, and silence, let the next host try).
func (r *Registration) registerAt(ctx context.Context, t Target) (time.Duration, error) {
	var auth sip.Header
	challenged := false
	for attempt := 0; ; attempt++ {
		req := r.request(t, auth)
		tctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		res, err := r.send.Do(tctx, req)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("REGISTER to %s: %w", t, err)
		}
		switch {
		case res.IsSuccess():
			return r.granted(res), nil
		case (res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired) && !challenged:
			challenged = true
			if auth, err = r.answer(req, res); err != nil {
				return 0, fmt.Errorf("REGISTER to %s: %w: %w", t, errRejected, err)
			}
		case res.StatusCode == sip.StatusIntervalToBrief && attempt < 2 && r.raiseExpiry(res):
			// 423: asked again with the provider's Min-Expires (RFC 3261 §10.3).
		case res.StatusCode == sip.StatusRequestTimeout || res.StatusCode >= 500:
			return 0, fmt.Errorf("REGISTER to %s: %d %s", t, res.StatusCode, res.Reason)
		default:
			return 0, fmt.Errorf("REGISTER to %s: %w: %d %s", t, errRejected, res.StatusCode, res.Reason)
		}
	}
}

// request builds the next REGISTER (the CSeq after the last one sent).
func (r *Registration) request(t Target, auth sip.Header) *sip.Request {
	r.mu.Lock()
	r.st.CSeq++
	st := r.st
	r.mu.Unlock()
	if r.sending != nil {
		r.sending(st)
	}
	aor := sip.Uri{Scheme: "sip", User: r.trunk.User, Host: r.trunk.Domain}
	req := newRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: r.trunk.Domain}, aor, aor, st.FromTag, st.CallID, st.CSeq, t)
	req.AppendHeader(&sip.ContactHeader{Address: r.cfg.Contact, Params: sip.NewParams()})
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(st.Asked/time.Second))))
	if auth != nil {
		req.AppendHeader(auth)
	}
	return req
}

// raiseExpiry takes the Min-Expires of a 423 as the expiry to ask for
// from now on; false when it names none larger than the one asked.
func (r *Registration) raiseExpiry(res *sip.Response) bool {
	h := res.GetHeader("Min-Expires")
	if h == nil {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(h.Value()))
	if err != nil || n <= 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := time.Duration(n) * time.Second; d > r.st.Asked {
		r.st.Asked = d
		return true
	}
	return false
}

// answer computes the Authorization (401) or Proxy-Authorization (407) for
// the challenge in res to req, with the trunk's credentials.
func (r *Registration) answer(req *sip.Request, res *sip.Response) (sip.Header, error) {
	return authorize(r.trunk.User, r.password, req, res)
}

// granted returns the expiry of a 2xx: the expires parameter of our
// Contact, else the Expires header, else what was asked.
func (r *Registration) granted(res *sip.Response) time.Duration {
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.Host != r.cfg.Contact.Host || c.Address.Port != r.cfg.Contact.Port {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return time.Duration(n) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return r.trunk.RegisterInterval
}

func (r *Registration) succeeded(t Target, granted time.Duration) {
	now := r.now()
	r.mu.Lock()
	r.st.Registered = true
	r.st.Granted = granted
	r.st.Expires = now.Add(granted)
	r.st.Refresh = now.Add(granted / 2)
	r.st.Host = t.Addr.String()
	r.st.LastError = ""
	st := r.st
	r.mu.Unlock()
	r.m.registered.WithLabelValues(r.trunk.Name).Set(1)
	r.m.expiry.WithLabelValues(r.trunk.Name).Set(float64(st.Expires.Unix()))
	r.log.Info("trunk registered", zap.Stringer("host", t), zap.Duration("expires", granted), zap.Uint32("cseq", st.CSeq))
	if r.notify != nil {
		r.notify(st)
	}
}

// failed records err; the registration stays in force until its expiry.
func (r *Registration) failed(err error) error {
	now := r.now()
	r.mu.Lock()
	r.st.LastError = err.Error()
	if r.st.Registered && !now.Before(r.st.Expires) {
		r.st.Registered = false
	}
	st := r.st
	r.mu.Unlock()
	if !st.Registered {
		r.m.registered.WithLabelValues(r.trunk.Name).Set(0)
	}
	if r.notify != nil {
		r.notify(st)
	}
	return err
}
