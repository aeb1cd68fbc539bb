package testkit

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// Test ports come from below the kernel's ephemeral range (32768-60999 on
// Linux by default), so no outgoing connection of any process can take a
// port between the moment a test picks it and the moment the process it
// configured binds it. Test binaries of different packages run in parallel
// (go test ./...), so each port is also reserved across processes with an
// flock on a file named after it, held until the test binary exits.
const (
	portLo = 10000
	portHi = 20000 // exclusive; media tests use 20000 and above for relay ranges
)

var (
	portMu   sync.Mutex
	reserved []*os.File // the held locks; closed only when the process exits
)

// FreePort returns a port on ip free for both UDP and TCP, reserved for
// this test process: no other caller of FreePort or FreePorts, in this
// process or another, gets it while this process runs.
func FreePort(tb testing.TB, ip string) int {
	tb.Helper()
	return FreePorts(tb, ip, 1)
}

// FreePorts returns an even port p such that p..p+n-1 are free for UDP and
// TCP on ip and reserved as FreePort's.
func FreePorts(tb testing.TB, ip string, n int) int {
	tb.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	dir := filepath.Join(os.TempDir(), "hapbx-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		tb.Fatalf("port lock directory: %v", err)
	}
	_ = os.Chmod(dir, 0o777|os.ModeSticky) // shared by every user running tests
	for range 200 {
		p := (portLo + rand.IntN(portHi-portLo-n)) &^ 1
		locks, ok := lockPorts(dir, p, n)
		if ok && bindable(ip, p, n) {
			reserved = append(reserved, locks...)
			return p
		}
		for _, f := range locks {
			f.Close()
		}
	}
	tb.Fatalf("no %d free UDP+TCP ports in %d-%d on %s", n, portLo, portHi-1, ip)
	return 0
}

// lockPorts takes the cross-process locks of ports p..p+n-1; ok is false
// when another holder has one of them.
func lockPorts(dir string, p, n int) (locks []*os.File, ok bool) {
	for i := range n {
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p+i)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return locks, false
		}
		locks = append(locks, f)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			return locks, false
		}
	}
	return locks, true
}

// bindable reports whether ports p..p+n-1 can be bound on ip right now, for
// UDP and TCP (something outside the tests may hold them).
func bindable(ip string, p, n int) bool {
	for i := range n {
		addr := net.JoinHostPort(ip, strconv.Itoa(p+i))
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		l, err := net.Listen("tcp", addr)
		u.Close()
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}
