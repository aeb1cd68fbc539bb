package statuspage

import (
	"sync"

	"github.com/hapbx/hapbx/internal/event"
)

// HistorySize is the number of events a History keeps: enough for a
// failover's story (a backend down, the active one changing, the VIP or
// the group moving), small enough for one page.
const HistorySize = 100

// History keeps the last HistorySize events. It is an event.Sink: Record
// takes one short lock and never blocks on a reader.
type History struct {
	mu   sync.Mutex
	ring [HistorySize]event.Event
	next int // where the next event goes
	n    int // events held, up to HistorySize
}

var _ event.Sink = (*History)(nil)

// Record keeps e, dropping the oldest event when full.
func (h *History) Record(e event.Event) {
	h.mu.Lock()
	h.ring[h.next] = e
	h.next = (h.next + 1) % HistorySize
	h.n = min(h.n+1, HistorySize)
	h.mu.Unlock()
}

// Events returns the events held, newest first.
func (h *History) Events() []event.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]event.Event, h.n)
	for i := range out {
		out[i] = h.ring[(h.next-1-i+HistorySize)%HistorySize]
	}
	return out
}
