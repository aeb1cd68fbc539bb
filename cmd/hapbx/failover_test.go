package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

func (d *daemon) backendState(t testing.TB, name string) string {
	for _, b := range d.status(t)["backends_health"].([]any) {
		m := b.(map[string]any)
		if m["name"] == name {
			s, _ := m["state"].(string)
			return s
		}
	}
	return ""
}

func (d *daemon) waitState(t testing.TB, name, state string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if !testkit.Poll(within, func() bool { return d.backendState(t, name) == state }) {
		t.Fatalf("%s not %s within %v: %v\n%s", name, state, within, d.status(t), d.log.String())
	}
	return time.Since(start)
}

// startHotPair runs hapbx in front of two SIPp backends answering OPTIONS
// and calls, and waits until asterisk1 is active and asterisk2 up; be1 is
// asterisk1's SIPp.
func startHotPair(tb testing.TB) (d *daemon, be1 *testkit.SIPp) {
	tb.Helper()
	p1, p2 := testkit.FreePort(tb, be1IP), testkit.FreePort(tb, be2IP)
	be1 = testkit.StartSIPp(tb, be1IP, p1, "-sf", scenarioPath("uas_call.xml"))
	testkit.StartSIPp(tb, be2IP, p2, "-sf", scenarioPath("uas_call.xml"))
	a1, a2 := net.JoinHostPort(be1IP, strconv.Itoa(p1)), net.JoinHostPort(be2IP, strconv.Itoa(p2))
	testkit.WaitListening(tb, "udp", a1, 3*time.Second)
	testkit.WaitListening(tb, "udp", a2, 3*time.Second)
	d = startDaemon(tb, a1, a2)
	d.waitActive(tb, "asterisk1")
	d.waitState(tb, "asterisk2", "up", 5*time.Second)
	return d, be1
}

// TestKillActiveBackendNoFailedCalls is issue 3's (a): 50 calls/s for 20 s
// through hapbx to two SIPp backends that answer OPTIONS; the active one is
// SIGKILLed at t=5 s; no call may fail.
func TestKillActiveBackendNoFailedCalls(t *testing.T) {
	testkit.RequireSIPp(t)
	if testing.Short() {
		t.Skip("20 s of calls; skipped with -short")
	}
	d, be1 := startHotPair(t)

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_call_ha.xml"),
		"-s", "202", "-m", "1000", "-r", "50", "-timeout", "60s", "-timeout_error", "-trace_rtt", "-rtt_freq", "1", d.sip)
	time.Sleep(5 * time.Second)
	killed := time.Now()
	be1.Kill()
	down := d.waitState(t, "asterisk1", "down", 3*time.Second)
	t.Logf("asterisk1 SIGKILLed; declared down after %v", down.Round(time.Millisecond))

	if code := phone.Wait(60 * time.Second); code != 0 {
		t.Fatalf("phone exit %d\n%s", code, phone.Output())
	}
	c := phone.Counts()
	if c.Failed != 0 || c.Successful != 1000 {
		t.Fatalf("calls: %+v, want 1000 successful, 0 failed\n%s", c, phone.Output())
	}
	if a, _ := d.status(t)["active_backend"].(string); a != "asterisk2" {
		t.Errorf("active backend after the kill: %q", a)
	}
	longest, n := longestRTT(t, phone.Dir)
	t.Logf("1000 calls, 0 failed; longest call set-up (INVITE to 200) over %d calls: %v; kill at %s; calls up on the killed backend hung up by hapbx: %s",
		n, longest, killed.Format("15:04:05.000"), d.metric(t, `hapbx_dialogs_terminated_total{reason="backend down"}`))
}

// metric returns one sample of /metrics by its full name and labels.
func (d *daemon) metric(t testing.TB, series string) string {
	res, err := http.Get(d.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return "0"
}

// longestRTT reads sipp's -trace_rtt file: date_ms;response_time_ms;rtd_no.
func longestRTT(t testing.TB, dir string) (time.Duration, int) {
	files, _ := filepath.Glob(filepath.Join(dir, "*_rtt.csv"))
	var max float64
	n := 0
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Split(line, ";")
			if len(fs) < 2 {
				continue
			}
			v, err := strconv.ParseFloat(fs[1], 64)
			if err != nil {
				continue
			}
			n++
			if v > max {
				max = v
			}
		}
	}
	if n == 0 {
		t.Errorf("no rtt samples in %s", dir)
	}
	return time.Duration(max * float64(time.Millisecond)), n
}

// TestCallsOnDeadBackendGetBye is issue 3's (d): calls confirmed on a
// backend that is killed get a BYE from hapbx within 2 s.
func TestCallsOnDeadBackendGetBye(t *testing.T) {
	testkit.RequireSIPp(t)
	p1, p2 := testkit.FreePort(t, be1IP), testkit.FreePort(t, be2IP)
	be1 := testkit.StartSIPp(t, be1IP, p1, "-sf", scenarioPath("uas_call.xml"))
	testkit.StartSIPp(t, be2IP, p2, "-sf", scenarioPath("uas_call.xml"))
	a1, a2 := net.JoinHostPort(be1IP, strconv.Itoa(p1)), net.JoinHostPort(be2IP, strconv.Itoa(p2))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")

	const calls = 5
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_wait_bye.xml"),
		"-s", "202", "-m", strconv.Itoa(calls), "-r", "20", "-timeout", "30s", "-timeout_error", d.sip)
	if !testkit.Poll(5*time.Second, func() bool {
		n, _ := d.status(t)["proxy"].(map[string]any)["dialogs"].(float64)
		return int(n) == calls
	}) {
		t.Fatalf("calls not confirmed: %v\n%s", d.status(t), phone.Output())
	}
	killed := time.Now()
	be1.Kill()
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone exit %d: BYE missing\n%s", code, phone.Output())
	}
	took := time.Since(killed)
	t.Logf("%d confirmed calls on the killed backend all got their BYE %v after the SIGKILL", calls, took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("BYEs took %v after the kill, want <= 2s", took)
	}
}
