package health

import (
	"context"
	"sync"
)

// Queue feeds a channel from an unbounded FIFO, so that a slow reader never
// blocks the writer (a probe, the failover Selector) and never loses an
// item. Pump delivers; Close lets it deliver what is queued, then closes
// the channel. Subscriptions in health and failover are built on it.
type Queue[T any] struct {
	mu     sync.Mutex
	q      []T
	closed bool
	notify chan struct{}
	out    chan T
}

// NewQueue returns an empty queue; start Pump to deliver.
func NewQueue[T any]() *Queue[T] {
	return &Queue[T]{notify: make(chan struct{}, 1), out: make(chan T)}
}

// Out is the channel items are delivered on.
func (s *Queue[T]) Out() <-chan T { return s.out }

// Push appends an item; after Close it is dropped.
func (s *Queue[T]) Push(c T) {
	s.mu.Lock()
	if !s.closed {
		s.q = append(s.q, c)
	}
	s.mu.Unlock()
	s.wake()
}

// Close lets Pump deliver what is queued, then close Out.
func (s *Queue[T]) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wake()
}

func (s *Queue[T]) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Pump delivers queued items until ctx ends or the queue is closed and
// drained; then it closes Out and calls done.
func (s *Queue[T]) Pump(ctx context.Context, done func()) {
	defer done()
	defer close(s.out)
	var zero T
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
		s.q[0] = zero
		s.q = s.q[1:]
		s.mu.Unlock()
		select {
		case s.out <- c:
		case <-ctx.Done():
			return
		}
	}
}
