package proxy

import (
	"sync"
	"time"
)

// Backend is one Asterisk the proxy can forward to.
type Backend struct {
	Name      string `json:"name"`
	Address   string `json:"address"`   // host:port
	Transport string `json:"transport"` // udp, tcp or tls
	// TCP says a UDP backend also listens on TCP at Address: requests too
	// large for UDP (size.go) go there.
	TCP bool `json:"tcp,omitempty"`
}

// Router chooses the backends for a new request: names in the order to try.
// The first is the choice; the rest are for retry. key is the Call-ID.
type Router interface {
	Candidates(key string) []string
}

// ChangeNotifier is a Router that says when its candidates may have
// changed (failover.Selector is one): a request held for a backend
// (awaitBackend) then waits for that instead of asking the router again
// every few milliseconds, which under overload, with many requests held,
// cost more than the calls themselves.
type ChangeNotifier interface {
	// Changed returns a channel closed at the next change.
	Changed() <-chan struct{}
}

// RoutableReporter is a Router that answers whether it offers a backend
// without building its candidate list (failover.Selector is one): a
// request waiting on a slow backend asks it every hop_timeout.
type RoutableReporter interface {
	// Routable reports whether Candidates lists backend.
	Routable(backend string) bool
	// OnlyRoutable reports whether backend is the one backend Candidates lists.
	OnlyRoutable(backend string) bool
}

// FailureReporter is told when a backend fails a forwarded request
// (timeout, 503, transport error), so health can probe it at once.
type FailureReporter interface {
	Suspect(backend, reason string)
}

// LifeReporter is a FailureReporter also told when a backend answers a
// forwarded request, so health does not take a busy backend's late probe
// answers for death.
type LifeReporter interface {
	Heard(backend string)
}

// ttlSet remembers keys for a while: the backend that challenged a Call-ID
// (so the authenticated re-send goes to the same Asterisk, which holds the
// nonce) and INVITE branches answered with a non-2xx final (so their ACKs are
// absorbed even after a reliable transport's transaction is gone).
type ttlSet struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	items map[string]ttlItem
	sweep time.Time
}

type ttlItem struct {
	val     string
	expires time.Time
}

func newTTLSet(ttl time.Duration, max int) *ttlSet {
	return &ttlSet{ttl: ttl, max: max, items: make(map[string]ttlItem)}
}

// put keeps key for ttl; false when the set is full of live keys.
func (s *ttlSet) put(key, val string) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.After(s.sweep) || len(s.items) >= s.max {
		for k, it := range s.items {
			if now.After(it.expires) {
				delete(s.items, k)
			}
		}
		s.sweep = now.Add(s.ttl / 4)
	}
	if len(s.items) >= s.max {
		return false // bounded: under a flood the oldest knowledge wins
	}
	s.items[key] = ttlItem{val: val, expires: now.Add(s.ttl)}
	return true
}

func (s *ttlSet) get(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[key]
	if !ok || time.Now().After(it.expires) {
		return "", false
	}
	return it.val, true
}

func (s *ttlSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.items)
}

func (s *ttlSet) has(key string) bool {
	_, ok := s.get(key)
	return ok
}

func (s *ttlSet) del(key string) {
	s.mu.Lock()
	delete(s.items, key)
	s.mu.Unlock()
}
