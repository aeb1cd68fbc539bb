package proxy

import (
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// testLogger logs through t until t's cleanups run, then nowhere: sipgo's
// transaction timers may log after Close, and a t.Log after the test ended
// fails the run ("Log in goroutine after Test... has completed").
func testLogger(t testing.TB) *zap.Logger {
	o := &outlivingT{TB: t}
	t.Cleanup(o.end) // registered first: runs after the proxy's Close
	return zaptest.NewLogger(o)
}

type outlivingT struct {
	testing.TB
	mu   sync.RWMutex
	done bool
}

func (o *outlivingT) end() {
	o.mu.Lock()
	o.done = true
	o.mu.Unlock()
}

func (o *outlivingT) Logf(format string, args ...any) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if !o.done {
		o.TB.Logf(format, args...)
	}
}

func (o *outlivingT) Errorf(format string, args ...any) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if !o.done {
		o.TB.Errorf(format, args...)
	}
}

// quietInBenchmarks is testLogger, but no logger in a benchmark, whose log
// lines would all be printed and slow it down.
func quietInBenchmarks(t testing.TB) *zap.Logger {
	if _, bench := t.(*testing.B); bench {
		return zap.NewNop()
	}
	return testLogger(t)
}
