package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestTCPPhoneReachedAfterQuiet: a phone registered over TCP says nothing
// for several times sip.tcp.read_timeout; a call from a backend still
// reaches it over its connection (the read timeout is for messages
// started, not for quiet connections).
func TestTCPPhoneReachedAfterQuiet(t *testing.T) {
	testkit.RequireSIPp(t)
	_, _, a1, a2 := asterisks(t)
	d, sipPort, adminPort := newDaemon(t)
	writeConfig(t, d.config, sipPort, adminPort, "", a1, a2)
	text, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	udp := fmt.Sprintf("\"udp://%s:%d\"", proxyIP, sipPort)
	tcpSection := fmt.Sprintf("%s, \"tcp://%s:%d\"]\n  tcp: {read_timeout: 300ms}", udp, proxyIP, sipPort)
	withTCP := strings.Replace(string(text), udp+"]", tcpSection, 1)
	if err := os.WriteFile(d.config, []byte(withTCP), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	d.waitActive(t, "asterisk1")
	registerPhone(t, d, phoneIP, 30*time.Second, "", "-t", "t1")
	d.waitBindings(t, 1)
	time.Sleep(1500 * time.Millisecond) // 5 read timeouts of silence
	call := callPhone(t, d, be1IP)
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("call to the quiet TCP phone failed (exit %d)\n%s\n%s", code, call.Output(), d.log.String())
	}
	if got := d.metric(t, `hapbx_proxy_connections_closed_total{reason="read_timeout"}`); got != "0" {
		t.Errorf("connections closed for read_timeout: %s, want 0", got)
	}
}
