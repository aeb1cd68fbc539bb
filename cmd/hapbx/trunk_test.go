package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

const providerIP = "127.0.3.61"

// TestTrunkRegistersFromProxySocket: hapbx run with a trunk registers at
// the provider (SIPp: challenges, verifies the digest, grants 2 s) from
// the proxy's SIP socket, and keeps refreshing it.
func TestTrunkRegistersFromProxySocket(t *testing.T) {
	testkit.RequireSIPp(t)
	be := testkit.StartOptionsUAS(t, be1IP, 0, 200, "udp")
	sf, err := filepath.Abs(filepath.Join("..", "..", "proxy", "trunk", "testdata", "provider_registrar.xml"))
	if err != nil {
		t.Fatal(err)
	}
	provider := testkit.StartSIPp(t, providerIP, testkit.FreePort(t, providerIP), "-sf", sf, "-trace_msg")
	testkit.WaitListening(t, "udp", provider.Addr, 3*time.Second)
	secret := filepath.Join(t.TempDir(), "p1.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemonWith(t, fmt.Sprintf(`trunks:
  - name: p1
    hosts: [%q]
    credentials_file: %s
    register: true
    register_interval: 60s
    user: "4930123"
    domain: provider.test
`, provider.Addr, secret), be.Addr())
	ok := `hapbx_trunk_registrations_total{result="ok",trunk="p1"}`
	if !testkit.Poll(30*time.Second, func() bool {
		n, _ := strconv.ParseFloat(d.metric(t, ok), 64)
		return n >= 2 && d.metric(t, `hapbx_trunk_registered{trunk="p1"}`) == "1"
	}) {
		t.Fatalf("not registered and refreshed within 30s: %s = %s\n%s\n%s", ok, d.metric(t, ok), provider.Output(), d.log.String())
	}
	if n, _ := strconv.ParseFloat(d.metric(t, `hapbx_trunk_registrations_total{result="rejected",trunk="p1"}`), 64); n != 0 {
		t.Errorf("%v REGISTERs rejected by the provider\n%s", n, provider.Output())
	}
	// /api/v1/status shows the registration and the host.
	trunks, _ := d.status(t)["trunks"].([]any)
	if len(trunks) != 1 {
		t.Fatalf("status trunks: %v", d.status(t)["trunks"])
	}
	tr := trunks[0].(map[string]any)
	reg, _ := tr["registration"].(map[string]any)
	if tr["name"] != "p1" || reg["registered"] != true || reg["host"] != provider.Addr {
		t.Errorf("status of trunk p1: %v", tr)
	}
	out, err := exec.Command(hapbxBin, "status", "-c", d.config).CombinedOutput()
	if err != nil || !containsAll(string(out), "trunk p1: registered at "+provider.Addr+" until ") {
		t.Errorf("hapbx status: %v\n%s", err, out)
	}
	// From the proxy's socket, with its Via and the Contact the provider
	// sends calls to.
	trace := provider.Output()
	for _, want := range []string{"Via: SIP/2.0/UDP " + d.sip + ";branch=", "Contact: <sip:4930123@" + d.sip + ">"} {
		if !containsAll(trace, want) {
			t.Errorf("no %q in what the provider received:\n%s", want, trace)
		}
	}
}
