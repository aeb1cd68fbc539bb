package failover

import (
	"slices"
)

// hrwScore is the rendezvous (highest random weight) score of backend for
// key. It is stable across processes and restarts, so every proxy sends a
// given Call-ID to the same backend, and a key only moves when its
// backend leaves the set.
func hrwScore(key, backend string) uint64 {
	// FNV-1a over key, a zero byte and backend, written out so that a
	// request's routing allocates nothing (hash/fnv's digest escapes).
	const prime = 1099511628211
	x := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		x ^= uint64(key[i])
		x *= prime
	}
	x *= prime // the zero byte: x ^= 0
	for i := 0; i < len(backend); i++ {
		x ^= uint64(backend[i])
		x *= prime
	}
	return splitmixFinish(x)
}

// splitmixFinish mixes an FNV hash, which mixes the tail poorly for keys
// that differ in their last bytes, with splitmix64's finaliser.
func splitmixFinish(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// hrwOrder sorts names by descending score for key (ties by name).
func hrwOrder(key string, names []string) {
	if len(names) < 2 {
		return
	}
	type scored struct {
		name  string
		score uint64
	}
	var small [8]scored // the usual handful of backends: no allocation
	s := small[:0]
	if len(names) > len(small) {
		s = make([]scored, 0, len(names))
	}
	for _, n := range names {
		s = append(s, scored{n, hrwScore(key, n)})
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
