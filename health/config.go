package health

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Check names accepted in Config.Require.
const (
	CheckSIP = "sip"
	CheckAMI = "ami"
)

// Config is the `health:` section.
type Config struct {
	// Interval between the starts of two SIP probes of one backend. A probe
	// does not wait for the previous one to end, so it may be shorter than
	// Timeout.
	Interval time.Duration `yaml:"interval"`
	// SuspectInterval is the probe interval while a backend is suspect (it
	// failed once, or the proxy reported a failed request).
	SuspectInterval time.Duration `yaml:"suspect_interval"`
	// Timeout of one SIP probe: how long its OPTIONS waits for an answer.
	Timeout time.Duration `yaml:"timeout"`
	// Rise is the number of consecutive good probes that make a backend up.
	Rise int `yaml:"rise"`
	// Fall is the number of consecutive bad probes that make a backend down.
	Fall int `yaml:"fall"`
	// AliveCodes lists the SIP final response codes that prove a backend
	// alive: "404", a class "2xx", or a range "200-499".
	AliveCodes []string `yaml:"alive_codes"`
	// Require lists the checks that must all pass: "sip", "ami". A backend
	// without AMI settings needs only "sip".
	Require []string `yaml:"require"`
	// AMIInterval is the period of the AMI session's Ping.
	AMIInterval time.Duration `yaml:"ami_interval"`
	// AMITimeout bounds each AMI step: connect, banner, login, Ping answer.
	AMITimeout time.Duration `yaml:"ami_timeout"`
	// AMIBackoffMax bounds the exponential reconnect backoff of AMI sessions.
	AMIBackoffMax time.Duration `yaml:"ami_backoff_max"`
}

// DefaultConfig returns the defaults: a SIP probe every 100ms (50ms while
// suspect), each waiting 250ms for its answer, rise 2, fall 2, so a silent
// backend is down at most 2*100+250 = 450ms after its last answer while
// each answer may take up to 250ms; alive codes 200-499 (Asterisk answers
// 404 to an OPTIONS for an unknown user), both checks required, an AMI Ping
// every 500ms answered within 400ms, AMI backoff at most 2s.
func DefaultConfig() Config {
	return Config{
		Interval:        100 * time.Millisecond,
		SuspectInterval: 50 * time.Millisecond,
		Timeout:         250 * time.Millisecond,
		AMIInterval:     500 * time.Millisecond,
		AMITimeout:      400 * time.Millisecond,
		Rise:            2,
		Fall:            2,
		AliveCodes:      []string{"200-499"},
		Require:         []string{CheckSIP, CheckAMI},
		AMIBackoffMax:   2 * time.Second,
	}
}

// Validate returns every problem of c, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Interval <= 0 {
		bad("interval", "must be > 0, got %s", c.Interval)
	}
	if c.SuspectInterval <= 0 {
		bad("suspect_interval", "must be > 0, got %s", c.SuspectInterval)
	}
	if c.Timeout <= 0 {
		bad("timeout", "must be > 0, got %s", c.Timeout)
	}
	if c.Rise < 1 {
		bad("rise", "must be >= 1, got %d", c.Rise)
	}
	if c.Fall < 1 {
		bad("fall", "must be >= 1, got %d", c.Fall)
	}
	if c.AMIInterval <= 0 {
		bad("ami_interval", "must be > 0, got %s", c.AMIInterval)
	}
	if c.AMITimeout <= 0 {
		bad("ami_timeout", "must be > 0, got %s", c.AMITimeout)
	}
	if c.AMIBackoffMax <= 0 {
		bad("ami_backoff_max", "must be > 0, got %s", c.AMIBackoffMax)
	}
	if len(c.AliveCodes) == 0 {
		bad("alive_codes", "must list at least one code, class or range")
	}
	for i, s := range c.AliveCodes {
		if _, err := parseCodeRange(s); err != nil {
			bad(fmt.Sprintf("alive_codes[%d]", i), "%v", err)
		}
	}
	if len(c.Require) == 0 {
		bad("require", "must list at least one of sip, ami")
	}
	seen := map[string]bool{}
	for i, r := range c.Require {
		switch {
		case r != CheckSIP && r != CheckAMI:
			bad(fmt.Sprintf("require[%d]", i), "unknown check %q (want sip or ami)", r)
		case seen[r]:
			bad(fmt.Sprintf("require[%d]", i), "duplicate check %q", r)
		}
		seen[r] = true
	}
	return errors.Join(errs...)
}

type codeRange struct{ lo, hi int }

// parseCodeRange accepts "404", "2xx" and "200-499".
func parseCodeRange(s string) (codeRange, error) {
	s = strings.TrimSpace(s)
	code := func(v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 699 {
			return 0, fmt.Errorf("%q is not a SIP status code (100-699)", v)
		}
		return n, nil
	}
	switch {
	case len(s) == 3 && strings.HasSuffix(strings.ToLower(s), "xx"):
		n, err := code(s[:1] + "00")
		if err != nil {
			return codeRange{}, fmt.Errorf("%q is not a status class like 2xx", s)
		}
		return codeRange{n, n + 99}, nil
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		lo, err := code(strings.TrimSpace(a))
		if err != nil {
			return codeRange{}, err
		}
		hi, err := code(strings.TrimSpace(b))
		if err != nil {
			return codeRange{}, err
		}
		if lo > hi {
			return codeRange{}, fmt.Errorf("range %q is empty", s)
		}
		return codeRange{lo, hi}, nil
	default:
		n, err := code(s)
		if err != nil {
			return codeRange{}, err
		}
		return codeRange{n, n}, nil
	}
}

// codeSet answers whether a final response code counts as alive.
type codeSet []codeRange

func newCodeSet(specs []string) (codeSet, error) {
	var cs codeSet
	for _, s := range specs {
		r, err := parseCodeRange(s)
		if err != nil {
			return nil, err
		}
		cs = append(cs, r)
	}
	return cs, nil
}

func (cs codeSet) alive(code int) bool {
	for _, r := range cs {
		if code >= r.lo && code <= r.hi {
			return true
		}
	}
	return false
}
