package health

import (
	"strings"
	"sync"
	"testing"

	"github.com/hapbx/hapbx/internal/event"
)

type sink struct {
	mu sync.Mutex
	es []event.Event
}

func (s *sink) Record(e event.Event) { s.mu.Lock(); s.es = append(s.es, e); s.mu.Unlock() }

// TestEventsReported: every state change reaches the sink in order, with
// its reason; down is a warning, the rest are not; a backend dropped by a
// reload is reported too.
func TestEventsReported(t *testing.T) {
	var s sink
	cfg := DefaultConfig()
	c, err := New(cfg, []Target{{Name: "b", Address: "127.0.0.1:5060"}}, nil, nil, WithEvents(&s))
	if err != nil {
		t.Fatal(err)
	}
	b := c.backends["b"]
	for _, good := range []bool{true, true, false, false} {
		reason := "sip: 200 OK"
		if !good {
			reason = "sip: connection refused"
		}
		c.record(b, good, reason, "", "")
	}
	if err := c.SetTargets([]Target{{Name: "c", Address: "127.0.0.1:5062"}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"backend b: unknown -> up: sip: 200 OK",
		"backend b: up -> suspect: sip: connection refused",
		"backend b: suspect -> down: sip: connection refused (warn)",
		"backend b: removed from the configuration",
	}
	var got []string
	for _, e := range s.es {
		if e.At.IsZero() {
			t.Errorf("event without a time: %+v", e)
		}
		line := string(e.Kind) + " " + e.Subject + ": " + e.Text
		if e.Warn {
			line += " (warn)"
		}
		got = append(got, line)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
