package health

import (
	"time"

	"go.uber.org/zap"
)

// LocalLoad tells whether this host itself was overloaded (package limits'
// Budget): short of memory, CPU or UDP receive buffer at any moment since
// t.
type LocalLoad interface {
	StrainedSince(t time.Time) bool
}

// Option adds an optional collaborator to a Checker.
type Option func(*Checker)

// WithLocalLoad makes a SIP probe that got no answer while l reports strain
// (at any moment since the probe was sent) count neither for nor against its backend: the answer may have waited in
// this host's own queues. A refusal (ICMP, RST) or a bad answer still
// counts, and so does silence once it has been excused for excuseFor in a
// row, so a backend that hangs during a long overload is still declared
// down, late.
func WithLocalLoad(l LocalLoad) Option { return func(c *Checker) { c.load = l } }

const excuseFor = 10 * time.Second

// excuse reports whether an unanswered probe of b sent at sent is not held
// against it; it logs and counts the ones it excuses.
func (c *Checker) excuse(b *backend, sent time.Time, reason string) bool {
	if c.load == nil || !c.load.StrainedSince(sent) {
		return false
	}
	now := time.Now()
	c.mu.Lock()
	if c.backends[b.t.Name] != b {
		c.mu.Unlock()
		return true // removed meanwhile: nothing to record
	}
	if b.excusedSince.IsZero() {
		b.excusedSince = now
	}
	ok := now.Sub(b.excusedSince) < excuseFor
	c.mu.Unlock()
	if ok {
		c.m.excused.Inc()
		c.log.Debug("probe unanswered while hapbx itself is strained: not counted", zap.String("backend", b.t.Name), zap.String("reason", reason))
	}
	return ok
}
