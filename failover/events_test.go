package failover

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/event"
	"github.com/hapbx/hapbx/internal/testkit"
)

type sink struct {
	mu sync.Mutex
	es []event.Event
}

func (s *sink) Record(e event.Event) { s.mu.Lock(); s.es = append(s.es, e); s.mu.Unlock() }

// lines are the events as "kind subject: text", "!" appended to warnings.
func (s *sink) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.es {
		l := string(e.Kind) + " " + e.Subject + ": " + e.Text
		if e.Warn {
			l += " !"
		}
		out = append(out, l)
	}
	return out
}

// inOrder fails unless each of wants starts one of lines, in that order.
func inOrder(t *testing.T, lines []string, wants ...string) {
	t.Helper()
	i := 0
	for _, l := range lines {
		if i < len(wants) && strings.HasPrefix(l, wants[i]) {
			i++
		}
	}
	if i < len(wants) {
		t.Fatalf("events lack %q (in this order):\n%s", wants[i:], strings.Join(lines, "\n"))
	}
}

// TestSelectorReportsActiveChanges: each change of the active backend is
// an event; the first choice is no warning, a switch and "none" are.
func TestSelectorReportsActiveChanges(t *testing.T) {
	var s sink
	sel, err := New(DefaultConfig(), []string{"a", "b"}, nil, nil, WithEvents(&s))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []health.Change{
		{Name: "a", To: U}, {Name: "b", To: U}, {Name: "a", To: D, Reason: "sip: refused"}, {Name: "b", To: D, Reason: "sip: timeout"},
	} {
		sel.Apply(c)
	}
	want := []string{
		"failover a: active backend a (was none): a up: ",
		"failover b: active backend b (was a): a down: sip: refused !",
		"failover : active backend none (was b): b down: sip: timeout !",
	}
	if got := s.lines(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestColdReportsMoves: a failover of the group is told step by step.
func TestColdReportsMoves(t *testing.T) {
	var s sink
	r := newRig(t, nil, WithColdEvents(&s))
	r.a.mu.Lock()
	r.a.unreachable = true
	r.a.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "B holds", func() bool { st := r.c.Status(); return st.Holder == "B" && st.Phase == PhaseIdle && st.Last != nil })
	inOrder(t, s.lines(),
		"cold A: resource group found on A",
		"cold B: moving the resource group from A to B: backend down: test !",
		"cold A: A fenced (it did not stop cleanly) !",
		"cold B: resource group started on B in ")
}

// TestColdReportsBlocked: a promotion blocked by a failed fencing is an
// event with the reason.
func TestColdReportsBlocked(t *testing.T) {
	var s sink
	r := newRig(t, errors.New("BMC unreachable"), WithColdEvents(&s))
	r.a.mu.Lock()
	r.a.unreachable = true
	r.a.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "blocked", func() bool { return r.c.Status().Blocked != "" })
	inOrder(t, s.lines(), "cold B: moving the resource group from A to B", "cold : automatic promotion blocked: A not stopped")
	for _, l := range s.lines() {
		if strings.Contains(l, "started on") {
			t.Errorf("blocked move reported a start: %s", l)
		}
	}
}
