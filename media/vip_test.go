package media

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
)

// TestImportBindsVIPBeforeItArrives plays the standby at failover, inside a
// network namespace of its own: Import binds the session's ports on a VIP the
// host does not have yet (IP_FREEBIND); once the VIP is added, the very same
// sockets relay media, with the latched phone restored from the record.
func TestImportBindsVIPBeforeItArrives(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("hme-vip-%d", os.Getpid())
	ns, err := netns.NewNamed(name) // also moves this thread into it
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		_ = netns.DeleteNamed(name)
		orig.Close()
	})
	defer func() { _ = netns.Set(orig) }()
	ipns := func(args ...string) {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", name, "ip"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ipns("link", "set", "lo", "up")

	const vip = "10.200.0.1"
	cfg := DefaultConfig()
	cfg.Address = vip
	cfg.Ports = "34000-34099"
	cfg.Workers = 1
	cfg.Datapath = DatapathUser
	r, err := New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	defer r.Close()

	// Phones on 127.0.0.1 in the namespace (sockets are made on this thread).
	a, b := newPhone(t, "127.0.0.1"), newPhone(t, "127.0.0.1")
	rec := SessionRecord{CallID: "failover", State: StateAnswered, Streams: []StreamRecord{{
		Ports:   [2]int{34010, 34012},
		SDP:     [2]netip.AddrPort{netip.MustParseAddrPort("10.9.9.9:4000"), b.addr()},
		Latched: [2]netip.AddrPort{a.addr(), {}}, // A is NATed: only the latch reaches it
	}}}
	if err := r.Import(rec); err != nil {
		t.Fatalf("import before the VIP is local: %v", err)
	}
	forA := netip.AddrPortFrom(netip.MustParseAddr(vip), 34010)
	forB := netip.AddrPortFrom(netip.MustParseAddr(vip), 34012)
	// Before the VIP arrives, nothing can reach the relay.
	if _, err := b.conn.WriteToUDPAddrPort(rtpPacket(1, 1, 1, 20), forB); err == nil {
		if _, _, ok := a.recv(100 * time.Millisecond); ok {
			t.Fatal("media relayed before the VIP was added")
		}
	}
	ipns("addr", "add", vip+"/32", "dev", "lo")
	mustRelay(t, b, forB, a, forA) // straight to A's restored latch
	mustRelay(t, a, forA, b, forB)
}
