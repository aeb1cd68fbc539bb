package health

import (
	"context"
	"sync"
)

// subscriber queues changes without bound so that a slow reader never
// blocks a probe and never loses an event.
type subscriber struct {
	mu     sync.Mutex
	q      []Change
	closed bool
	notify chan struct{}
	out    chan Change
}

func newSubscriber() *subscriber {
	return &subscriber{notify: make(chan struct{}, 1), out: make(chan Change)}
}

func (s *subscriber) push(c Change) {
	s.mu.Lock()
	if !s.closed {
		s.q = append(s.q, c)
	}
	s.mu.Unlock()
	s.wake()
}

// close lets the pump deliver what is queued, then close out.
func (s *subscriber) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wake()
}

func (s *subscriber) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// pump delivers queued changes until ctx ends or the queue is closed and
// drained; then it closes out and calls done.
func (s *subscriber) pump(ctx context.Context, done func()) {
	defer done()
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.q) == 0 {
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return
			}
			select {
			case <-s.notify:
				continue
			case <-ctx.Done():
				return
			}
		}
		c := s.q[0]
		s.q[0] = Change{}
		s.q = s.q[1:]
		s.mu.Unlock()
		select {
		case s.out <- c:
		case <-ctx.Done():
			return
		}
	}
}
