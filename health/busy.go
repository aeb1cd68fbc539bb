package health

import (
	"maps"
	"time"

	"go.uber.org/zap"
)

// Heard is the passive evidence of life: the proxy calls it when backend
// answered a request it forwarded (any response but 100, 408 and 503, which
// prove nothing or are failures of their own). A SIP probe left unanswered
// while the backend was answering calls says it is busy, not dead (a
// freshly cold-started Asterisk taking the burst of held calls answers
// them before its OPTIONS): such a probe counts neither for nor against
// it. A killed, frozen or powered-off backend answers nothing, so its
// detection is unchanged; a hung one that still answers calls is not down.
func (c *Checker) Heard(backend string) {
	if m := c.heardBy.Load(); m != nil {
		if b := (*m)[backend]; b != nil {
			b.heard.Store(time.Now().UnixNano())
		}
	}
}

// publishLocked gives Heard a copy of the backends (c.mu held).
func (c *Checker) publishLocked() {
	m := maps.Clone(c.backends)
	c.heardBy.Store(&m)
}

// busy reports whether b answered a forwarded request after the unanswered
// probe sent at sent left; it logs and counts the ones it excuses.
func (c *Checker) busy(b *backend, sent time.Time, reason string) bool {
	if b.heard.Load() <= sent.UnixNano() {
		return false
	}
	c.m.busy.Inc()
	c.log.Debug("probe unanswered while the backend answered calls: not counted", zap.String("backend", b.t.Name), zap.String("reason", reason))
	return true
}
