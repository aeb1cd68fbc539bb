package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestLargeInvitesThroughHapbx is issue 12's §6(c) through the binary: a
// 16 KB INVITE (many codecs, SRTP, video), answered by a 16 KB 200, reaches
// a UDP backend as one datagram and a backend with `tcp: true` over TCP;
// both calls are answered and health never suspects either backend.
func TestLargeInvitesThroughHapbx(t *testing.T) {
	testkit.RequireSIPp(t)
	const size = 16000
	for _, tcp := range []bool{false, true} {
		t.Run(fmt.Sprintf("tcp=%v", tcp), func(t *testing.T) {
			port := testkit.FreePort(t, be1IP)
			addr := net.JoinHostPort(be1IP, strconv.Itoa(port))
			uas := testkit.LargeScenario(t, scenarioPath("uas_large.xml"), size)
			var call *testkit.SIPp
			if tcp {
				// Asterisk listens on UDP and TCP at one port: UDP answers
				// the health probes, TCP takes the large call.
				testkit.StartSIPp(t, be1IP, port, "-sf", scenarioPath("uas_call.xml"))
				call = testkit.StartSIPp(t, be1IP, port, "-t", "t1", "-sf", uas, "-m", "1")
				testkit.WaitListening(t, "tcp", addr, 3*time.Second)
			} else {
				testkit.StartSIPp(t, be1IP, port, "-sf", uas)
			}
			testkit.WaitListening(t, "udp", addr, 3*time.Second)
			d := startLargeDaemon(t, addr, tcp)
			d.waitState(t, "asterisk1", "up", 5*time.Second)

			phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", testkit.LargeScenario(t, scenarioPath("uac_large.xml"), size),
				"-s", "202", "-m", "1", "-timeout", "20s", "-timeout_error", d.sip)
			if code := phone.Wait(30 * time.Second); code != 0 {
				t.Fatalf("phone sipp exit %d\n%s", code, phone.Output())
			}
			if c := phone.Counts(); c.Successful != 1 || c.Failed != 0 {
				t.Fatalf("phone counts %+v, want 1 successful\n%s", c, phone.Output())
			}
			if call != nil {
				if code := call.Wait(10 * time.Second); code != 0 {
					t.Fatalf("TCP backend sipp exit %d\n%s", code, call.Output())
				}
			}
			if v := d.metric(t, `hapbx_health_transitions_total{backend="asterisk1",from="up",to="suspect"}`); v != "0" {
				t.Errorf("asterisk1 suspected %s times for a message's size\n%s", v, d.log.String())
			}
			how := map[bool]string{false: "udp", true: "tcp"}[tcp]
			if v := d.metric(t, `hapbx_proxy_large_requests_total{how="`+how+`"}`); v != "1" {
				t.Errorf("large requests sent over %s = %s, want 1", how, v)
			}
		})
	}
}

// startLargeDaemon runs hapbx on UDP and TCP in front of one UDP backend at
// addr, with backends[].tcp set to tcp.
func startLargeDaemon(t *testing.T, addr string, tcp bool) *daemon {
	t.Helper()
	d, sipPort, adminPort := newDaemon(t)
	conf := fmt.Sprintf(`node: {name: test}
sip:
  listen: ["udp://%[1]s:%[2]d", "tcp://%[1]s:%[2]d"]
  advertise: %[1]s
backends:
  - {name: asterisk1, address: %[3]q, transport: udp, tcp: %[4]v}
admin: {listen: "127.0.0.1:%[5]d"}
log: {level: info, format: json}
registrar: {data_dir: %[6]q}
`, proxyIP, sipPort, addr, tcp, adminPort, filepath.Join(filepath.Dir(d.config), "data"))
	if err := os.WriteFile(d.config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	return d
}
