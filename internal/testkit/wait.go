package testkit

import (
	"testing"
	"time"
)

// pollEvery is how often Poll and Eventually look again: short against the
// deadlines of the tests, long enough not to load the CPU they share.
const pollEvery = 10 * time.Millisecond

// Poll reports whether cond held within d, looking every pollEvery (at
// once first). It is for waits whose caller reports the failure itself.
func Poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
}

// Eventually fails tb unless cond holds within d; what names the awaited
// condition in the failure.
func Eventually(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(d, cond) {
		tb.Fatalf("%s: not within %v", what, d)
	}
}
