package testkit

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// UDPBound reports whether some socket of this network namespace is bound to
// the IPv4 address addr ("ip:port"), read from /proc/net/udp. Unlike trying
// to bind it, looking cannot make the process starting up (sipp) fail its
// own bind with EADDRINUSE.
func UDPBound(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return false
	}
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return false
	}
	ip := ap.Addr().As4()
	// The kernel prints the address as the host-order (little-endian) value
	// of the network-order bytes, and the port in plain hex.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port())
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 1 && f[1] == want {
			return true
		}
	}
	return false
}
