package testkit

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNS runs f on a thread moved into the named network namespace (sockets
// f opens stay in it), then moves the thread back.
func InNS(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with the goroutine: never reused.
		panic(fmt.Sprintf("cannot return to the original netns: %v", err))
	}
	return ferr
}
