package failover

import (
	"hash/fnv"
	"slices"
)

// hrwScore is the rendezvous (highest random weight) score of backend for
// key. It is stable across processes and restarts, so every proxy sends a
// given Call-ID to the same backend, and a key only moves when its
// backend leaves the set.
func hrwScore(key, backend string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(backend))
	// FNV mixes the tail poorly for keys that differ in their last bytes;
	// finish with splitmix64.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// hrwOrder sorts names by descending score for key (ties by name).
func hrwOrder(key string, names []string) {
	type scored struct {
		name  string
		score uint64
	}
	s := make([]scored, len(names))
	for i, n := range names {
		s[i] = scored{n, hrwScore(key, n)}
	}
	slices.SortFunc(s, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	for i := range s {
		names[i] = s[i].name
	}
}
