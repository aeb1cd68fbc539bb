package statuspage

import (
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/event"
)

// TestHistoryKeepsTheNewest: the ring holds the last HistorySize events,
// newest first, and drops the oldest.
func TestHistoryKeepsTheNewest(t *testing.T) {
	var h History
	if got := h.Events(); got == nil || len(got) != 0 {
		t.Fatalf("empty history: %#v, want an empty list", got)
	}
	t0 := time.Now()
	for i := range 3 {
		h.Record(event.Event{At: t0.Add(time.Duration(i) * time.Second), Kind: event.Backend, Text: strconv.Itoa(i)})
	}
	if got := texts(h.Events()); got != "2 1 0" {
		t.Fatalf("3 events: %q, want newest first", got)
	}
	for i := 3; i < HistorySize+50; i++ {
		h.Record(event.Event{Kind: event.Backend, Text: strconv.Itoa(i)})
	}
	got := h.Events()
	if len(got) != HistorySize {
		t.Fatalf("%d events kept, want %d", len(got), HistorySize)
	}
	if first, last := got[0].Text, got[len(got)-1].Text; first != strconv.Itoa(HistorySize+49) || last != "50" {
		t.Fatalf("kept %s..%s, want %d..50", first, last, HistorySize+49)
	}
}

func texts(es []event.Event) string {
	s := ""
	for i, e := range es {
		if i > 0 {
			s += " "
		}
		s += e.Text
	}
	return s
}
