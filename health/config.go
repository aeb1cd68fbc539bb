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
	// Interval between two probes of one backend.
	Interval time.Duration `yaml:"interval"`
	// SuspectInterval is the probe interval while a backend is suspect (it
	// failed once, or the proxy reported a failed request), so that a dead
	// backend reaches "down" well within a second.
	SuspectInterval time.Duration `yaml:"suspect_interval"`
	// Timeout of one probe (SIP OPTIONS answer, AMI connect/login/ping answer).
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
	// AMIBackoffMax bounds the exponential reconnect backoff of AMI sessions.
	AMIBackoffMax time.Duration `yaml:"ami_backoff_max"`
}

// DefaultConfig returns the defaults: 500ms interval, 100ms suspect interval,
// 400ms timeout, rise 2, fall 2, alive codes 200-499 (Asterisk answers 404
// to an OPTIONS for an unknown user), both checks required, AMI backoff at
// most 2s.
func DefaultConfig() Config {
	return Config{
		Interval:        500 * time.Millisecond,
		SuspectInterval: 100 * time.Millisecond,
		Timeout:         400 * time.Millisecond,
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
