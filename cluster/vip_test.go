package cluster

import (
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap"
)

// inNetns runs fn on an OS thread switched into namespace ns, then switches the thread
// back; only if that fails is the thread left locked (the runtime then discards it).
// Sockets and netlink calls made by fn live in ns.
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread()
		defer func() { done <- recover() }()
		orig, err := netns.Get()
		if err != nil {
			panic(err)
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			panic(err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			panic(err)
		}
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		fn()
	}()
	if p := <-done; p != nil {
		t.Fatalf("in netns %s: %v", ns, p)
	}
}

func TestVIPAcquireRelease(t *testing.T) {
	needRoot(t)
	labPreClean()
	t.Cleanup(labPreClean)
	ns := "hcl-vip"
	sh(t, "ip", "netns", "add", ns)
	sh(t, "ip", "netns", "add", ns+"2")
	sh(t, "ip", "link", "add", labIf, "netns", ns, "type", "veth", "peer", "name", labIf, "netns", ns+"2")
	sh(t, "ip", "-n", ns, "link", "set", labIf, "up")
	sh(t, "ip", "-n", ns+"2", "link", "set", labIf, "up")
	sh(t, "ip", "-n", ns, "addr", "add", "10.213.0.1/24", "dev", labIf)

	for _, addr := range []string{"10.213.0.13/24", "fd00:213::13/64"} {
		v, err := NewVIP(VIPConfig{Address: addr, Interface: labIf, GARPCount: 3, GARPInterval: 10 * time.Millisecond}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		inNetns(t, ns, func() {
			check := func(want bool) {
				if held, err := v.Held(); err != nil || held != want {
					panic(addr + ": held=" + map[bool]string{true: "true", false: "false"}[held] + " " + errString(err))
				}
			}
			check(false)
			if err := v.Release(); err != nil { // absent: no error
				panic(err)
			}
			if err := v.Acquire(); err != nil {
				panic(err)
			}
			if err := v.Acquire(); err != nil { // already there: no error
				panic(err)
			}
			check(true)
			time.Sleep(50 * time.Millisecond) // the repeated announcements
			if err := v.Release(); err != nil {
				panic(err)
			}
			check(false)
		})
	}
	out, _ := exec.Command("ip", "-n", ns, "addr", "show", "dev", labIf).CombinedOutput()
	t.Logf("after release:\n%s", out)

	bad, _ := NewVIP(VIPConfig{Address: "10.213.0.13/24", Interface: "hclnope", GARPCount: 1, GARPInterval: time.Millisecond}, zap.NewNop())
	inNetns(t, ns, func() {
		if err := bad.Acquire(); err == nil {
			panic("acquire on a missing interface succeeded")
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
