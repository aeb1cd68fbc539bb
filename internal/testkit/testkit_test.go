package testkit

import (
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Two reservations never share a port, and what FreePorts returns is bound
// by nobody (so UDPBound says no until the test binds it).
func TestFreePortsUDPBound(t *testing.T) {
	const ip = "127.0.0.1"
	p, q := FreePorts(t, ip, 4), FreePorts(t, ip, 4)
	if p%2 != 0 || q%2 != 0 || (p <= q && q < p+4) || (q <= p && p < q+4) {
		t.Fatalf("reservations %d+4 and %d+4: odd or overlapping", p, q)
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(p))
	if UDPBound(addr) {
		t.Fatalf("%s bound before anyone bound it", addr)
	}
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if !UDPBound(addr) {
		t.Fatalf("%s not seen bound in /proc/net/udp", addr)
	}
	c.Close()
	if UDPBound(addr) {
		t.Fatalf("%s still seen bound after close", addr)
	}
}

// The stand-ins keep the shared state and log every call; the parsed log
// shows the promotion, the fence and the roles after each.
func TestDRBDStandIns(t *testing.T) {
	for _, tool := range []string{"bash", "flock"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	d := NewDRBD(t, "A", "B")
	run := func(node string, args ...string) {
		t.Helper()
		cmd := exec.Command(d.Tool("drbdadm"), args...)
		cmd.Env = append(cmd.Environ(), d.Env(node, "")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("drbdadm %v on %s: %v\n%s", args, node, err, out)
		}
	}
	run("A", "primary", "r0")
	if out, err := exec.Command("sh", "-c", d.FenceCommand("A", false)).CombinedOutput(); err != nil {
		t.Fatalf("fence A: %v\n%s", err, out)
	}
	run("B", "primary", "r0")
	calls := d.Calls()
	NeverTwoPrimaries(t, calls)
	a, f, b := FindCall(calls, "A", "drbdadm primary r0", 0), FindCall(calls, "?", "fence A", 0), LastCall(calls, "B", "drbdadm primary", 0)
	if a != 0 || f != 1 || b != 2 || calls[2].Roles["A"] != "Secondary(down)" || calls[2].Roles["B"] != "Primary" {
		t.Fatalf("calls %+v", calls)
	}
	if d.Read("role.B") != "Primary" || d.Read("up.A") != "" {
		t.Fatalf("state: role.B %q up.A %q", d.Read("role.B"), d.Read("up.A"))
	}
}

// Eventually returns once the condition holds; Poll reports a timeout.
func TestPoll(t *testing.T) {
	n := 0
	Eventually(t, time.Second, "third look", func() bool { n++; return n == 3 })
	if Poll(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
}
