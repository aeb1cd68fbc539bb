package media

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is the `media:` section.
type Config struct {
	// Enabled turns RTP anchoring on; when false the proxy leaves SDP alone.
	Enabled bool `yaml:"enabled"`
	// Address is the IPv4 address the relay binds and advertises in SDP.
	// Empty means the SIP advertise address, which the caller fills in before New.
	Address string `yaml:"address"`
	// Ports is the inclusive UDP range "lo-hi"; each call leg takes an even RTP
	// port and the odd port above it for RTCP.
	Ports string `yaml:"ports"`
	// IdleTimeout ends a session that relayed no packet for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// RelatchAfter lets a new source take over a latched leg once the latched
	// source has been silent this long (phone changed NAT binding or roamed).
	RelatchAfter time.Duration `yaml:"relatch_after"`
	// LearnWindow is how long after a leg's first latched packet the exact
	// endpoint its SDP names still takes the latch over from another
	// source of the leg's allowed addresses that came first; 0 keeps the
	// first allowed source. Sources outside the allowed addresses (the SDP
	// address and the leg's signalling source) never latch, in the window
	// or after it.
	LearnWindow time.Duration `yaml:"learn_window"`
	// MaxSessions caps concurrent sessions; 0 means only the port range limits.
	MaxSessions int `yaml:"max_sessions"`
	// Workers is the number of data-path goroutines; 0 means GOMAXPROCS.
	Workers int `yaml:"workers"`
	// Datapath is where latched legs are relayed: "kernel" (by the
	// KernelEngine; the relay fails to start without a kernel path),
	// "user" (the relay's sockets) or "auto" (kernel when it can be set
	// up, else user space, logged once).
	Datapath string `yaml:"datapath"`
	// KernelEngine is what forwards latched legs in kernel mode: "ebpf"
	// (a TC program; nftables when it cannot be loaded, logged once) or
	// "nftables".
	KernelEngine string `yaml:"kernel_engine"`
}

// DefaultConfig returns the defaults: disabled, ports 20000-30000, idle 60s.
func DefaultConfig() Config {
	return Config{
		Enabled:      false,
		Ports:        "20000-30000",
		IdleTimeout:  60 * time.Second,
		RelatchAfter: 5 * time.Second,
		LearnWindow:  2 * time.Second,
		Datapath:     DatapathAuto,
		KernelEngine: EngineEBPF,
	}
}

// Validate reports every problem, each as "<key>: <reason>".
func (c Config) Validate() error {
	var errs []error
	if c.Address != "" {
		a, err := netip.ParseAddr(c.Address)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("address: %q is not an IP address", c.Address))
		case !a.Is4():
			errs = append(errs, fmt.Errorf("address: %q must be IPv4 (IPv6 relay not supported)", c.Address))
		case a.IsUnspecified():
			errs = append(errs, fmt.Errorf("address: %q must be a concrete address, it is advertised in SDP", c.Address))
		}
	}
	// An empty address is valid here: it defaults to the SIP advertise
	// address, which the caller puts in before New (New rejects it empty).
	if _, _, err := parsePorts(c.Ports); err != nil {
		errs = append(errs, fmt.Errorf("ports: %w", err))
	}
	if c.IdleTimeout <= 0 {
		errs = append(errs, errors.New("idle_timeout: must be > 0"))
	}
	if c.RelatchAfter <= 0 {
		errs = append(errs, errors.New("relatch_after: must be > 0"))
	}
	if c.LearnWindow < 0 {
		errs = append(errs, errors.New("learn_window: must be >= 0"))
	}
	if c.MaxSessions < 0 {
		errs = append(errs, errors.New("max_sessions: must be >= 0"))
	}
	if c.Workers < 0 {
		errs = append(errs, errors.New("workers: must be >= 0"))
	}
	switch c.Datapath {
	case DatapathAuto, DatapathKernel, DatapathUser, "":
	default:
		errs = append(errs, fmt.Errorf("datapath: %q: want kernel, user or auto", c.Datapath))
	}
	switch c.KernelEngine {
	case EngineEBPF, EngineNftables, "":
	default:
		errs = append(errs, fmt.Errorf("kernel_engine: %q: want ebpf or nftables", c.KernelEngine))
	}
	return errors.Join(errs...)
}

// parsePorts returns the first and last even RTP port usable in "lo-hi".
func parsePorts(s string) (first, last int, err error) {
	los, his, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want \"lo-hi\"", s)
	}
	lo, err1 := strconv.Atoi(strings.TrimSpace(los))
	hi, err2 := strconv.Atoi(strings.TrimSpace(his))
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("%q: want two port numbers \"lo-hi\"", s)
	}
	if lo < 1024 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("%q: want 1024 <= lo <= hi <= 65535", s)
	}
	if lo%2 == 1 {
		lo++
	}
	if hi%2 == 0 {
		hi-- // the last RTCP port
	}
	if hi-lo < 1 {
		return 0, 0, fmt.Errorf("%q: holds no even/odd RTP/RTCP pair", s)
	}
	return lo, hi - 1, nil
}
