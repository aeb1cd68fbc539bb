package trunk

import (
	"net"
	"strconv"
	"testing"

	"github.com/hapbx/hapbx/internal/testkit"
)

// startDNS is a real DNS server on loopback (testkit.DNSServer) answering
// from a zone the test changes while it runs.
func startDNS(t *testing.T) *testkit.DNSServer {
	t.Helper()
	return testkit.StartDNS(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(testkit.FreePort(t, "127.0.0.1"))))
}
