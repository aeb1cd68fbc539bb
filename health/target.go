package health

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Target is one backend to watch.
type Target struct {
	// Name identifies the backend in states, logs and metrics.
	Name string
	// Address is the SIP host:port of the backend.
	Address string
	// Transport is "udp" (default when empty) or "tcp".
	Transport string
	// AMI, when set, adds a manager session check.
	AMI *AMITarget
}

// AMITarget is where and how to log in to a backend's manager interface.
type AMITarget struct {
	Address  string // host:port
	Username string
	Secret   string
}

func (t Target) transport() string {
	if t.Transport == "" {
		return "udp"
	}
	return strings.ToLower(t.Transport)
}

func (t Target) equal(o Target) bool {
	if t.Name != o.Name || t.Address != o.Address || t.transport() != o.transport() {
		return false
	}
	if (t.AMI == nil) != (o.AMI == nil) {
		return false
	}
	return t.AMI == nil || *t.AMI == *o.AMI
}

func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q has no valid port", s)
	}
	return nil
}

// validateTargets returns all problems of ts joined, each wrapping
// ErrInvalidTarget.
func validateTargets(ts []Target) error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", key, fmt.Sprintf(format, args...), ErrInvalidTarget))
	}
	names := map[string]bool{}
	for i, t := range ts {
		k := fmt.Sprintf("targets[%d]", i)
		if t.Name == "" {
			bad(k+".name", "must not be empty")
		} else if names[t.Name] {
			bad(k+".name", "duplicate name %q", t.Name)
		}
		names[t.Name] = true
		if err := validHostPort(t.Address); err != nil {
			bad(k+".address", "%v", err)
		}
		if tr := t.transport(); tr != "udp" && tr != "tcp" {
			bad(k+".transport", "unknown transport %q (want udp or tcp)", t.Transport)
		}
		if t.AMI != nil {
			if err := validHostPort(t.AMI.Address); err != nil {
				bad(k+".ami.address", "%v", err)
			}
			if t.AMI.Username == "" {
				bad(k+".ami.username", "must not be empty")
			}
			if strings.ContainsAny(t.AMI.Username, "\r\n") {
				bad(k+".ami.username", "must not contain line breaks")
			}
			if strings.ContainsAny(t.AMI.Secret, "\r\n") {
				bad(k+".ami.secret", "must not contain line breaks (is the secret file's trailing newline trimmed?)")
			}
		}
	}
	return errors.Join(errs...)
}
