package cluster

import (
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/internal/event"
	"github.com/hapbx/hapbx/internal/testkit"
)

type sink struct {
	mu sync.Mutex
	es []event.Event
}

func (s *sink) Record(e event.Event) { s.mu.Lock(); s.es = append(s.es, e); s.mu.Unlock() }

// has reports whether an event "kind subject: text" (with " !" for a
// warning) starts with prefix.
func (s *sink) has(prefix string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.es {
		l := string(e.Kind) + " " + e.Subject + ": " + e.Text
		if e.Warn {
			l += " !"
		}
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, e := range s.es {
		b.WriteString(string(e.Kind) + " " + e.Subject + ": " + e.Text + "\n")
	}
	return b.String()
}

// TestEventsReported: a proxy reports its members joining and lost, the
// raft leader, and taking and giving up the VIP.
func TestEventsReported(t *testing.T) {
	var s sink
	fv := &fakeVIP{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("events:\n%s", s.String())
		}
	})
	p, ws := proxyTrio(t, fv, zap.NewNop(), nil, func(p *Cluster) { p.events = &s })
	waitHolding(t, p, fv)
	for _, want := range []string{"member w1: member w1 up", "member w2: member w2 up", "leader p0: raft leader is p0",
		"vip p0: VIP 10.213.9.13/24 taken by this node"} {
		testkit.Eventually(t, 3*time.Second, "event "+want, func() bool { return s.has(want) })
	}
	p.lead.pingOK.Store(false) // ping targets lost: the VIP goes
	p.lead.poke()
	testkit.Eventually(t, 3*time.Second, "the VIP removal reported", func() bool {
		return s.has("vip p0: VIP 10.213.9.13/24 removed from this node !")
	})
	_ = ws[1].close()
	testkit.Eventually(t, 10*time.Second, "w2's departure reported as a warning", func() bool {
		return s.has("member w2: member w2 left !") || s.has("member w2: member w2 dead !")
	})
}
