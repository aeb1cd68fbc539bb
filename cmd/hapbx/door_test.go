package main

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Issue 13.2 through the daemon (the limits section wired to the proxy's
// door; limits.memory is the Go soft memory limit): a SIPp phone floods calls at 300/s; it gets one 503 with
// Retry-After, the daemon logs one line when it blocks the phone's address
// and one, with the number dropped, when it releases it; the backend's
// health never leaves up.
func TestFloodGuardDaemon(t *testing.T) {
	testkit.RequireSIPp(t)
	bePort := testkit.FreePort(t, be1IP)
	be := net.JoinHostPort(be1IP, strconv.Itoa(bePort))
	testkit.StartSIPp(t, be1IP, bePort, "-sf", scenarioPath("uas_call.xml"))
	testkit.WaitListening(t, "udp", be, 3*time.Second)
	// Generous probes: a machine loaded by other tests must not make the
	// backend look down.
	d := startDaemonWith(t, "health: {require: [sip], timeout: 1s, rise: 1}\nlimits: {flood: {rate: 60, window: 2s, cooldown: 3s}}\n", be)
	d.waitActive(t, "asterisk1")
	if v := d.metric(t, "go_gc_gomemlimit_bytes"); v != "5.36870912e+08" {
		t.Errorf("Go soft memory limit %s, want limits.memory's default 512MiB", v)
	}

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("flood_invite.xml"), "-s", "202",
		"-r", "300", "-m", "300", "-nr", "-recv_timeout", "1500", "-timeout", "30s", "-trace_msg", d.sip)
	phone.Wait(40 * time.Second)
	phone.Stop()
	got503 := regexp.MustCompile(`message received \[\d+\] bytes :\s*SIP/2.0 503 Service Unavailable\s+(?s:.*?)\r?\n\r?\n`).FindAllString(phone.Trace(), -1)
	if len(got503) != 1 || !strings.Contains(got503[0], "Retry-After: 5") {
		t.Fatalf("the flooding phone got %d 503s (want 1, with Retry-After): %q", len(got503), got503)
	}
	testkit.Eventually(t, 15*time.Second, "the release log line", func() bool {
		return strings.Contains(d.log.String(), "source released")
	})
	log := d.log.String()
	if n := strings.Count(log, `"msg":"source blocked`); n != 1 || !strings.Contains(log, `"source":"`+phoneIP+`"`) {
		t.Fatalf("%d block log lines naming %s, want 1", n, phoneIP)
	}
	dropped := regexp.MustCompile(`"msg":"source released[^\n]*"dropped":(\d+)`).FindStringSubmatch(log)
	if dropped == nil || dropped[1] == "0" || strings.Count(log, `"msg":"source released`) != 1 {
		t.Fatalf("release log line: %v, want one with the number dropped", dropped)
	}
	if v := d.metric(t, "hapbx_limits_flood_dropped_total"); v != dropped[1] {
		t.Fatalf("hapbx_limits_flood_dropped_total %s, the release line says %s", v, dropped[1])
	}
	if v := d.metric(t, `hapbx_proxy_shed_total{reason="flood"}`); v != "1" {
		t.Fatalf(`hapbx_proxy_shed_total{reason="flood"} = %s, want 1`, v)
	}
	res, err := http.Get(d.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if strings.Contains(string(body), `hapbx_health_transitions_total{backend="asterisk1",from="up"`) {
		t.Fatalf("the backend's health changed during the flood:\n%s", body)
	}
}
