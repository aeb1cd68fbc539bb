package proxy

import (
	"hash/fnv"
	"sync"
)

// StaticRouter routes without health, for this package's tests (hapbx
// itself routes through failover.Selector): active-standby tries the backends in
// configured order; balance starts at a hash of the Call-ID.
type StaticRouter struct {
	mu      sync.RWMutex
	names   []string
	balance bool
}

var _ Router = (*StaticRouter)(nil)

// NewStaticRouter returns a router over names in priority order.
func NewStaticRouter(names []string, balance bool) *StaticRouter {
	return &StaticRouter{names: append([]string(nil), names...), balance: balance}
}

// SetBackends replaces the list (SIGHUP).
func (r *StaticRouter) SetBackends(names []string) {
	r.mu.Lock()
	r.names = append([]string(nil), names...)
	r.mu.Unlock()
}

// Candidates implements Router.
func (r *StaticRouter) Candidates(key string) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := len(r.names)
	if n == 0 {
		return nil
	}
	start := 0
	if r.balance {
		h := fnv.New32a()
		h.Write([]byte(key))
		start = int(h.Sum32() % uint32(n))
	}
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		out = append(out, r.names[(start+i)%n])
	}
	return out
}
