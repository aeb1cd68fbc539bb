package trunk

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Config is one provider's trunk (an item of the config list `trunks`).
type Config struct {
	// Name identifies the trunk in logs, metrics and towards Asterisk.
	Name string `yaml:"name"`
	// Hosts are the provider's servers, in order: an IP address (with or
	// without a port) is used as is; a domain name is resolved as RFC 3263
	// says (with a port: its A/AAAA records; without: NAPTR, SRV, then
	// A/AAAA on the default port).
	Hosts []string `yaml:"hosts"`
	// Transport towards the provider: udp, tcp or tls.
	Transport string `yaml:"transport"`
	// ACL lists the addresses and networks (CIDR) the provider's requests
	// may come from. Empty: the provider's resolved IP literals in Hosts.
	ACL []string `yaml:"acl"`
	// CredentialsFile holds the password of User (the file's content, a
	// trailing newline removed): a secret file, owner-readable only.
	CredentialsFile string `yaml:"credentials_file"`
	// User is the provider account (the REGISTER's To/From user and the
	// digest username).
	User string `yaml:"user"`
	// Domain is the provider's SIP domain (Request-URI and To of a
	// REGISTER). Empty: the first of Hosts.
	Domain string `yaml:"domain"`
	// Register says hapbx keeps a registration at the provider.
	Register bool `yaml:"register"`
	// RegisterInterval is the expiry asked for in a REGISTER.
	RegisterInterval time.Duration `yaml:"register_interval"`
	// Keepalive is the interval of the OPTIONS sent to each provider host.
	Keepalive time.Duration `yaml:"keepalive"`
	// Backends take the trunk's incoming calls, in order. Empty: all.
	Backends []string `yaml:"backends"`
}

// Defaults of the settings a trunk may leave out.
const (
	DefaultTransport        = "udp"
	DefaultRegisterInterval = 600 * time.Second
	DefaultKeepalive        = 30 * time.Second
)

// WithDefaults returns c with the settings it leaves out (or sets to zero)
// given their defaults.
func (c Config) WithDefaults() Config {
	if c.Transport == "" {
		c.Transport = DefaultTransport
	}
	if c.RegisterInterval == 0 {
		c.RegisterInterval = DefaultRegisterInterval
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.Domain == "" && len(c.Hosts) > 0 {
		h, _ := splitHost(c.Hosts[0])
		c.Domain = h
	}
	return c
}

// Validate checks one trunk's settings; each error is "key: reason". The
// credentials file is read by the caller (config), which knows the rules
// of secret files.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if strings.TrimSpace(c.Name) == "" {
		bad("name", "must not be empty")
	} else if strings.ContainsAny(c.Name, " \t\r\n;,\"<>") {
		// It travels in a SIP header towards Asterisk.
		bad("name", "%q: only letters, digits and -_. please", c.Name)
	}
	if len(c.Hosts) == 0 {
		bad("hosts", "at least one provider host (address or domain) is required")
	}
	for i, h := range c.Hosts {
		if _, err := ParseHost(h); err != nil {
			bad(fmt.Sprintf("hosts[%d]", i), "%v", err)
		}
	}
	switch c.Transport {
	case "udp", "tcp", "tls":
	default:
		bad("transport", "%q is not udp, tcp or tls", c.Transport)
	}
	for i, a := range c.ACL {
		if _, err := ParsePrefix(a); err != nil {
			bad(fmt.Sprintf("acl[%d]", i), "%v", err)
		}
	}
	if len(c.ACL) == 0 && !c.literalHosts() {
		bad("acl", "required when hosts name a domain (calls are accepted by source address, never by name)")
	}
	if c.Register {
		if c.User == "" {
			bad("user", "required with register")
		}
		if c.CredentialsFile == "" {
			bad("credentials_file", "required with register")
		}
		if c.RegisterInterval < 60*time.Second {
			bad("register_interval", "must be at least 60s, got %s", c.RegisterInterval)
		}
	}
	if c.Keepalive < 0 {
		bad("keepalive", "must be > 0, got %s", c.Keepalive)
	}
	seen := map[string]bool{}
	for i, b := range c.Backends {
		if seen[b] {
			bad(fmt.Sprintf("backends[%d]", i), "%q listed twice", b)
		}
		seen[b] = true
	}
	return errors.Join(errs...)
}

// literalHosts reports whether every host is an IP address.
func (c Config) literalHosts() bool {
	for _, h := range c.Hosts {
		if p, err := ParseHost(h); err != nil || !p.Literal() {
			return false
		}
	}
	return true
}

// Host is one entry of Config.Hosts.
type Host struct {
	Name string // a domain name, or "" for a literal address
	Addr netip.Addr
	Port uint16 // 0: none given
}

// Literal reports whether h is an IP address (no DNS).
func (h Host) Literal() bool { return h.Name == "" }

// ParseHost reads "ip", "ip:port", "[v6]:port", "name" or "name:port".
func ParseHost(s string) (Host, error) {
	host, port := splitHost(s)
	if host == "" {
		return Host{}, fmt.Errorf("%q has no host", s)
	}
	var h Host
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return Host{}, fmt.Errorf("%q: port must be 1-65535", s)
		}
		h.Port = uint16(n)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		h.Addr = a.Unmap()
		return h, nil
	}
	if !validDomain(host) {
		return Host{}, fmt.Errorf("%q is neither an IP address nor a domain name", s)
	}
	h.Name = strings.TrimSuffix(strings.ToLower(host), ".")
	return h, nil
}

// splitHost splits an optional port off s.
func splitHost(s string) (host, port string) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return h, p
	}
	return strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), ""
}

func validDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// ParsePrefix reads an ACL entry: an address (a /32 or /128) or a network
// in CIDR notation with no host bits set.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or network: %w", s, err)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set (the network is %s)", s, p.Masked())
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or network: %w", s, err)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// unmapBits is what an IPv4-mapped IPv6 prefix loses in length when
// unmapped (::ffff:10.0.0.0/104 is 10.0.0.0/8).
func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

// Password reads the password out of the content of a credentials file.
func Password(content []byte) (string, error) {
	pw := strings.TrimRight(string(content), "\r\n")
	if pw == "" {
		return "", errors.New("empty (the file holds the provider account's password)")
	}
	if strings.ContainsAny(pw, "\r\n") {
		return "", errors.New("more than one line (the file holds the password only)")
	}
	return pw, nil
}
