package testkit

import (
	"context"
	"sync"
	"testing"
)

// Run runs a component's Run(ctx) in the background. stop cancels its
// context and returns what Run returned; the test's cleanup calls stop and
// fails the test on an error the test did not take itself.
func Run(t testing.TB, run func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() {
		taken := false
		once.Do(func() { cancel(); err = <-done; taken = true })
		if taken && err != nil {
			t.Errorf("component stopped with an error: %v", err)
		}
	})
	return stop
}
