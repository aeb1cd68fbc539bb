package failover

import (
	"context"
	"sync"
)

// subscriber queues events without bound: a slow reader never blocks the
// Selector and never loses an event.
type subscriber struct {
	mu     sync.Mutex
	q      []Event
	notify chan struct{}
	out    chan Event
}

func newSubscriber() *subscriber {
	return &subscriber{notify: make(chan struct{}, 1), out: make(chan Event)}
}

func (s *subscriber) push(e Event) {
	s.mu.Lock()
	s.q = append(s.q, e)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// pump delivers until ctx ends, then closes out and calls done.
func (s *subscriber) pump(ctx context.Context, done func()) {
	defer done()
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.q) == 0 {
			s.mu.Unlock()
			select {
			case <-s.notify:
				continue
			case <-ctx.Done():
				return
			}
		}
		e := s.q[0]
		s.q[0] = Event{}
		s.q = s.q[1:]
		s.mu.Unlock()
		select {
		case s.out <- e:
		case <-ctx.Done():
			return
		}
	}
}
