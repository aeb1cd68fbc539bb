package trunk

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// SetConfig is what every trunk of a Set shares.
type SetConfig struct {
	// Contact is the host (the VIP) and port the providers send to; the
	// registrations' Contact is sip:USER@Contact.
	Contact netip.AddrPort
	// Registration tunes the registrations (its Contact is filled in per
	// trunk).
	Registration RegistrationConfig
	// Active, when set, gates the registrations (see WithActive): only the
	// VIP holder registers. The keepalives run on every node.
	Active func() bool
}

// Validate checks the settings.
func (c SetConfig) Validate() error {
	if !c.Contact.IsValid() || c.Contact.Port() == 0 {
		return fmt.Errorf("contact: %s is not ip:port (the VIP and the SIP port)", c.Contact)
	}
	r := c.Registration
	r.Contact = sip.Uri{Host: c.Contact.Addr().String()}
	return r.Validate()
}

// Set is every configured trunk: which one a source address belongs to,
// each one's hosts in the order to try them, its credentials, and its
// keepalive and registration (run by Run).
type Set struct {
	acl    *ACL
	byName map[string]*member // the configured names only
	order  []*member
	log    *zap.Logger

	// out and holder come from the cluster (StateChanges), before Run.
	out    func(record []byte) error
	holder func() bool
}

type member struct {
	trunk    *Trunk
	password string
	ka       *Keepalive
	reg      *Registration // nil unless the trunk registers
}

// NewSet builds the trunks of cfgs (defaults applied, validated by
// config), with passwords by trunk name (read from each credentials file),
// resolving with res and sending through send.
func NewSet(cfgs []Config, passwords map[string]string, sc SetConfig, res *Resolver, send Sender, log *zap.Logger, reg prometheus.Registerer) (*Set, error) {
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("trunks: %w", err)
	}
	acl, err := NewACL(cfgs)
	if err != nil {
		return nil, fmt.Errorf("trunks: %w", err)
	}
	m, err := NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("trunk metrics: %w", err)
	}
	s := &Set{acl: acl, byName: map[string]*member{}, log: log}
	for _, c := range cfgs {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("trunk %s: %w", c.Name, err)
		}
		if _, dup := s.byName[c.Name]; dup {
			return nil, fmt.Errorf("trunk %s: %w", c.Name, ErrDuplicate)
		}
		t, err := NewTrunk(c, res)
		if err != nil {
			return nil, err
		}
		mb := &member{trunk: t, password: passwords[c.Name]}
		kc := DefaultKeepaliveConfig(c.Keepalive, sc.Contact.Addr().String())
		if mb.ka, err = NewKeepalive(t, kc, send, m, log.Named("keepalive")); err != nil {
			return nil, err
		}
		if c.Register {
			rc := sc.Registration
			rc.Contact = sip.Uri{Scheme: "sip", User: c.User, Host: sc.Contact.Addr().String(), Port: int(sc.Contact.Port())}
			if c.Transport != "udp" {
				rc.Contact.UriParams = sip.NewParams()
				rc.Contact.UriParams.Add("transport", c.Transport)
			}
			ro := []RegistrationOption{WithNotify(s.publish), WithSending(s.publish)}
			if sc.Active != nil {
				ro = append(ro, WithActive(sc.Active))
			}
			if mb.reg, err = NewRegistration(c, mb.password, rc, t, send, m, log.Named("register"), ro...); err != nil {
				return nil, err
			}
		}
		s.byName[c.Name] = mb
		s.order = append(s.order, mb)
	}
	return s, nil
}

// ErrDuplicate is the error of two trunks of one name.
var ErrDuplicate = errors.New("name used twice")

// Run keeps every trunk's keepalive and registration until ctx ends.
func (s *Set) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, mb := range s.order {
		g.Go(func() error { return mb.ka.Run(ctx) })
		if mb.reg != nil {
			g.Go(func() error { return mb.reg.Run(ctx) })
		}
	}
	return g.Wait()
}

// Match returns the trunk whose ACL holds src (the most specific one).
func (s *Set) Match(src netip.Addr) (name string, ok bool) { return s.acl.Match(src) }

// Targets returns trunk name's hosts in the order to try them (resolved,
// live ones first).
func (s *Set) Targets(ctx context.Context, name string) ([]Target, error) {
	mb, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("trunk %q: %w", name, ErrUnknown)
	}
	return mb.trunk.Targets(ctx)
}

// Errors of the Set's lookups.
var (
	// ErrUnknown is the error of a trunk name no trunk has.
	ErrUnknown = errors.New("no such trunk")
	// ErrNoCredentials is the error of a trunk without credentials_file.
	ErrNoCredentials = errors.New("no credentials")
)

// Credentials returns the user and password that answer trunk name's
// provider's 401/407.
func (s *Set) Credentials(name string) (user, password string, ok bool) {
	mb, ok := s.byName[name]
	if !ok || mb.password == "" {
		return "", "", false
	}
	return mb.trunk.cfg.User, mb.password, true
}

// Backends returns the backends that take trunk name's incoming calls
// (nil: all).
func (s *Set) Backends(name string) []string {
	if mb, ok := s.byName[name]; ok {
		return slices.Clone(mb.trunk.cfg.Backends)
	}
	return nil
}

// Registration returns trunk name's registration (nil when it does not
// register): its State to replicate, Continue to take one over.
func (s *Set) Registration(name string) *Registration {
	if mb, ok := s.byName[name]; ok {
		return mb.reg
	}
	return nil
}

// Status is one trunk as `hapbx status` shows it.
type Status struct {
	Name         string          `json:"name"`
	Registration *State          `json:"registration,omitempty"`
	Hosts        map[string]bool `json:"hosts"` // "udp:ip:port" -> up
}

// Status returns every trunk's registration and host health, in
// configured order.
func (s *Set) Status() []Status {
	out := make([]Status, 0, len(s.order))
	for _, mb := range s.order {
		st := Status{Name: mb.trunk.cfg.Name, Hosts: mb.ka.HostStates()}
		if mb.reg != nil {
			r := mb.reg.State()
			st.Registration = &r
		}
		out = append(out, st)
	}
	return out
}
