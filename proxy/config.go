package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// Config is the `sip:` section: listeners and forwarding behaviour.
type Config struct {
	// Listen holds transport URLs: udp://host:port, tcp://host:port, tls://host:port.
	Listen []string `yaml:"listen"`
	// Advertise is the host written into Via and Record-Route: the VIP in production.
	Advertise string `yaml:"advertise"`
	// TLS holds the certificate and key for tls:// listeners.
	TLS TLSConfig `yaml:"tls"`
	// HopTimeout is how long an initial request to a backend may go without any
	// response (Asterisk sends 100 Trying at once) before the next backend is tried.
	HopTimeout time.Duration `yaml:"hop_timeout"`
	// RetryAfter is sent in the 503 given when no backend can take a request.
	RetryAfter time.Duration `yaml:"retry_after"`
	// NoBackendWait holds a new request that finds no healthy backend for up
	// to this long, in case one comes up (a cold standby being started, a
	// backend passing its rise probes) before answering 503. 0 answers at once.
	NoBackendWait time.Duration `yaml:"no_backend_wait"`
	// DrainTimeout bounds how long a stop waits for transactions in flight;
	// those still pending then get 503 (and their downstream INVITE a CANCEL).
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// TimerC bounds how long a proxied INVITE may ring (RFC 3261 §16.6 step
	// 11): reset by every provisional response; when it fires the INVITE is
	// cancelled downstream, and the caller gets the 487 (or 408 when the
	// callee no longer answers at all). RFC 3261 wants more than 3 minutes.
	TimerC time.Duration `yaml:"timer_c"`
	// MaxMessageSize is the largest SIP message accepted; larger ones are dropped and counted.
	MaxMessageSize int `yaml:"max_message_size"`
	// MaxDialogs bounds the confirmed calls tracked for hang-up when their
	// backend dies; DialogTTL forgets one with no in-dialog request for so long.
	MaxDialogs int           `yaml:"max_dialogs"`
	DialogTTL  time.Duration `yaml:"dialog_ttl"`
	// DialogSecretFile holds the key of the tokens hapbx writes into its
	// Record-Route (at least 16 bytes): an in-dialog request from a phone is
	// forwarded only with a valid one. Both proxies of a pair need the same
	// file (required with a cluster); without it the key is kept in
	// registrar.data_dir/dialog.secret.
	DialogSecretFile string `yaml:"dialog_secret_file"`
	// TCP bounds the TCP and TLS connections phones and trunks open.
	TCP TCPConfig `yaml:"tcp"`
}

// TCPConfig is `sip.tcp`: limits and timeouts of accepted TCP and TLS
// connections (conns.go). Connections hapbx opens itself are not counted.
type TCPConfig struct {
	// ReadTimeout is how long a message (or a TLS handshake) may take from
	// its first byte to its last: a slow or stalled sender is disconnected.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// IdleTimeout closes a connection on which nothing arrived for so long,
	// unless a dialog reaches a phone over it. It must exceed the longest
	// registration interval hapbx grants (registrar.max_expires): a
	// registered phone receives its calls over its connection and only
	// refreshes its registration that often.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnections bounds accepted connections in all (each costs a
	// goroutine and a 64 KB read buffer); MaxPerSource those from one IP
	// address (raise it when many TCP phones share one NAT address).
	MaxConnections int `yaml:"max_connections"`
	MaxPerSource   int `yaml:"max_per_source"`
}

// DefaultTCPConfig returns the defaults of `sip.tcp`.
func DefaultTCPConfig() TCPConfig {
	return TCPConfig{ReadTimeout: 10 * time.Second, IdleTimeout: 65 * time.Minute, MaxConnections: 1024, MaxPerSource: 128}
}

// Validate reports every problem, each as "key: reason".
func (c TCPConfig) Validate() error {
	var errs []error
	c.check(func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) })
	return errors.Join(errs...)
}

func (c TCPConfig) check(bad func(format string, a ...any)) {
	if c.ReadTimeout <= 0 {
		bad("read_timeout: %v must be > 0", c.ReadTimeout)
	}
	if c.IdleTimeout <= c.ReadTimeout {
		bad("idle_timeout: %v must exceed read_timeout (%v)", c.IdleTimeout, c.ReadTimeout)
	}
	if c.MaxConnections < 1 {
		bad("max_connections: %d must be at least 1", c.MaxConnections)
	}
	if c.MaxPerSource < 1 || c.MaxPerSource > c.MaxConnections {
		bad("max_per_source: %d must be between 1 and max_connections (%d)", c.MaxPerSource, c.MaxConnections)
	}
}

// TLSConfig names the PEM files of the TLS listeners.
type TLSConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// DefaultConfig returns the defaults documented in deploy/hapbx.example.yaml.
func DefaultConfig() Config {
	return Config{
		Listen:         []string{"udp://0.0.0.0:5060", "tcp://0.0.0.0:5060"},
		HopTimeout:     500 * time.Millisecond,
		RetryAfter:     5 * time.Second,
		NoBackendWait:  3 * time.Second,
		DrainTimeout:   5 * time.Second,
		TimerC:         181 * time.Second,
		MaxMessageSize: 65535,
		MaxDialogs:     100000,
		DialogTTL:      12 * time.Hour,
		TCP:            DefaultTCPConfig(),
	}
}

// Listener is one parsed entry of Config.Listen.
type Listener struct {
	Transport string // udp, tcp or tls
	Addr      netip.AddrPort
}

// Network returns the transport name as sipgo spells it.
func (l Listener) Network() string { return l.Transport }

func (l Listener) String() string { return l.Transport + "://" + l.Addr.String() }

// ParseListen parses one transport URL such as "udp://127.0.0.1:5060".
func ParseListen(s string) (Listener, error) {
	scheme, hostport, ok := strings.Cut(s, "://")
	if !ok {
		return Listener{}, fmt.Errorf("%q: want udp://, tcp:// or tls:// followed by host:port", s)
	}
	switch scheme {
	case "udp", "tcp", "tls":
	default:
		return Listener{}, fmt.Errorf("%q: transport %q is not udp, tcp or tls", s, scheme)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return Listener{}, fmt.Errorf("%q: %w", s, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return Listener{}, fmt.Errorf("%q: host must be an IP address: %w", s, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return Listener{}, fmt.Errorf("%q: port must be 1-65535", s)
	}
	return Listener{Transport: scheme, Addr: netip.AddrPortFrom(ip, uint16(n))}, nil
}

// Listeners parses Listen; call Validate first.
func (c Config) Listeners() ([]Listener, error) {
	out := make([]Listener, 0, len(c.Listen))
	for _, s := range c.Listen {
		l, err := ParseListen(s)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// Validate reports every problem, each as "key: reason".
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Listen) == 0 {
		bad("listen: at least one listener is required")
	}
	hasTLS := false
	seen := map[string]bool{}
	for i, s := range c.Listen {
		l, err := ParseListen(s)
		if err != nil {
			bad("listen[%d]: %v", i, err)
			continue
		}
		if seen[l.String()] {
			bad("listen[%d]: %q listed twice", i, s)
		}
		seen[l.String()] = true
		hasTLS = hasTLS || l.Transport == "tls"
	}
	if c.Advertise == "" {
		bad("advertise: must name the host written into Via and Record-Route (the VIP)")
	} else if strings.ContainsAny(c.Advertise, ":/ ") && net.ParseIP(c.Advertise) == nil {
		bad("advertise: %q must be an IP address or host name without a port", c.Advertise)
	}
	if hasTLS {
		if c.TLS.Cert == "" {
			bad("tls.cert: required by the tls:// listener")
		} else if _, err := os.Stat(c.TLS.Cert); err != nil {
			bad("tls.cert: %v", err)
		}
		if c.TLS.Key == "" {
			bad("tls.key: required by the tls:// listener")
		} else if _, err := secretfile.Read(c.TLS.Key); err != nil {
			bad("tls.key: %v", err)
		}
	}
	if c.HopTimeout <= 0 || c.HopTimeout > 32*time.Second {
		bad("hop_timeout: %v must be between 1ms and 32s", c.HopTimeout)
	}
	if c.RetryAfter < time.Second {
		bad("retry_after: %v must be at least 1s", c.RetryAfter)
	}
	if c.NoBackendWait < 0 || c.NoBackendWait > 32*time.Second {
		bad("no_backend_wait: %v must be between 0 and 32s", c.NoBackendWait)
	}
	if c.DrainTimeout <= 0 {
		bad("drain_timeout: %v must be > 0", c.DrainTimeout)
	}
	if c.TimerC <= 0 {
		bad("timer_c: %v must be > 0", c.TimerC)
	}
	if c.MaxMessageSize < 1024 || c.MaxMessageSize > 65535 {
		bad("max_message_size: %d must be between 1024 and 65535", c.MaxMessageSize)
	}
	if c.MaxDialogs < 1 {
		bad("max_dialogs: %d must be at least 1", c.MaxDialogs)
	}
	if c.DialogTTL < time.Minute {
		bad("dialog_ttl: %v must be at least 1m", c.DialogTTL)
	}
	if c.DialogSecretFile != "" {
		if _, err := readSecret(c.DialogSecretFile); err != nil {
			bad("dialog_secret_file: %v", err)
		}
	}
	c.TCP.check(func(format string, a ...any) { bad("tcp."+format, a...) })
	return errors.Join(errs...)
}
