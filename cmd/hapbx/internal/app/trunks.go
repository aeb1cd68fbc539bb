package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/proxy"
	"github.com/hapbx/hapbx/proxy/trunk"
)

// The trunks' own requests (REGISTER, keepalives) leave by the proxy.
var _ trunk.Sender = (*proxy.Proxy)(nil)

// setupTrunks builds the providers' trunks (none: d.trunks stays nil):
// each password from its credentials file, the VIP (without a cluster,
// sip.advertise) and the SIP port as the registrations' Contact. Only the
// VIP holder registers, and its registration state is replicated to the
// other proxies; every node probes the providers' hosts. Call after the
// proxy is made (it sends through it) and before the cluster runs.
func (d *daemon) setupTrunks() error {
	if len(d.cfg.Trunks) == 0 {
		return nil
	}
	passwords := map[string]string{}
	for i, t := range d.cfg.Trunks {
		if t.CredentialsFile == "" {
			continue
		}
		b, err := secretfile.Read(t.CredentialsFile)
		if err == nil {
			passwords[t.Name], err = trunk.Password(b)
		}
		if err != nil {
			return fmt.Errorf("trunks[%d].credentials_file: %w", i, err)
		}
	}
	contact, err := d.trunkContact()
	if err != nil {
		return err
	}
	res, err := trunk.NewResolver()
	if err != nil {
		return fmt.Errorf("trunks: %w", err)
	}
	sc := trunk.SetConfig{Contact: contact, Registration: trunk.DefaultRegistrationConfig(), Active: d.isLeader}
	if d.trunks, err = trunk.NewSet(d.cfg.Trunks, passwords, sc, res, d.proxy, d.log.Named("trunk"), d.reg); err != nil {
		return err
	}
	if d.cluster != nil {
		// The twin that takes the VIP refreshes the same registration.
		if err := d.cluster.RegisterState(chanTrunks, d.trunks); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	return nil
}

// chanTrunks is the state channel of the trunks' registrations.
const chanTrunks = "trunks"

// The trunks' registrations are replicated to the twin.
var _ cluster.StateSource = (*trunk.Set)(nil)

// trunkContact is where providers send: the VIP, or sip.advertise without
// a cluster, on the port of the first UDP listener (else the first one).
func (d *daemon) trunkContact() (netip.AddrPort, error) {
	host := d.cfg.SIP.Advertise
	if d.cfg.ClusterEnabled() {
		if p, err := netip.ParsePrefix(d.cfg.ClusterConfig().VIP.Address); err == nil {
			host = p.Addr().String()
		}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("trunks: the registrations' Contact needs an IP address (the VIP or sip.advertise), got %q", host)
	}
	ls, err := d.cfg.SIP.Listeners()
	if err != nil || len(ls) == 0 {
		return netip.AddrPort{}, fmt.Errorf("trunks: no SIP listener for the registrations' Contact")
	}
	port := ls[0].Addr.Port()
	for _, l := range ls {
		if l.Transport == "udp" {
			port = l.Addr.Port()
			break
		}
	}
	return netip.AddrPortFrom(ip, port), nil
}

// trunkLine is one trunk in `hapbx status`: its registration and how many
// of its provider's addresses answer the keepalive.
func trunkLine(t trunk.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "trunk %s: ", t.Name)
	switch r := t.Registration; {
	case r == nil:
		b.WriteString("does not register")
	case r.Registered:
		fmt.Fprintf(&b, "registered at %s until %s", r.Host, r.Expires.Local().Format(time.TimeOnly))
	default:
		b.WriteString("NOT registered")
	}
	if r := t.Registration; r != nil && r.LastError != "" {
		fmt.Fprintf(&b, " (last error: %s)", r.LastError)
	}
	up := 0
	for _, ok := range t.Hosts {
		if ok {
			up++
		}
	}
	fmt.Fprintf(&b, "  hosts up %d/%d", up, len(t.Hosts))
	return b.String()
}

// trunkRoutes is the proxy's view of the trunks (proxy.Trunks): made
// before the proxy, set (before it listens) once the trunks, which send
// through the proxy, are made.
type trunkRoutes struct{ set *trunk.Set }

var _ proxy.Trunks = (*trunkRoutes)(nil)

func (r *trunkRoutes) Match(src netip.Addr) (string, bool) {
	if r.set == nil {
		return "", false
	}
	return r.set.Match(src)
}

func (r *trunkRoutes) Targets(ctx context.Context, name string) ([]proxy.TrunkHost, error) {
	if r.set == nil {
		return nil, fmt.Errorf("trunk %q: %w", name, proxy.ErrUnknownTrunk)
	}
	ts, err := r.set.Targets(ctx, name)
	if errors.Is(err, trunk.ErrUnknown) {
		return nil, fmt.Errorf("%w: %w", proxy.ErrUnknownTrunk, err)
	}
	if err != nil {
		return nil, err
	}
	out := make([]proxy.TrunkHost, 0, len(ts))
	for _, t := range ts {
		out = append(out, proxy.TrunkHost{Addr: t.Addr, Transport: t.Transport})
	}
	return out, nil
}

func (r *trunkRoutes) Authorize(name string, req *sip.Request, res *sip.Response) (sip.Header, error) {
	if r.set == nil {
		return nil, fmt.Errorf("trunk %q: %w", name, trunk.ErrUnknown)
	}
	return r.set.Authorize(name, req, res)
}

func (r *trunkRoutes) Backends(name string) []string {
	if r.set == nil {
		return nil
	}
	return r.set.Backends(name)
}
