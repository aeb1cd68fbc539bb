package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestFailedCalls: a SIPp caller traced as the lab's Sipp traces, whose
// second call a real SIPp UAS answers 486, is reported with that call's
// Call-ID, its messages, SIPp's error and the lab log line naming it, and
// nothing of the successful first call. Loopback only: no lab needed.
func TestFailedCalls(t *testing.T) {
	testdata, err := filepath.Abs(filepath.Join("..", "..", "proxy", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	uasPort := testkit.FreePort(t, "127.0.0.1")
	uacPort := testkit.FreePort(t, "127.0.0.1")
	uas := testkit.StartSIPp(t, "127.0.0.1", uasPort, "-sf", filepath.Join(testdata, "uas_call.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", uas.Addr, 5*time.Second)
	uac := testkit.StartSIPp(t, "127.0.0.1", uacPort, "-sn", "uac", "-m", "1", "-d", "10",
		"-trace_calldebug", "-max_log_size", "1000000", uas.Addr)
	if code := uac.Wait(20 * time.Second); code != 0 {
		t.Fatalf("the successful call: sipp exit %d\n%s", code, uac.Output())
	}
	busy := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), "-sf", filepath.Join(testdata, "uas_486.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", busy.Addr, 5*time.Second)
	uac2 := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), "-sn", "uac", "-m", "1",
		"-trace_calldebug", "-max_log_size", "1000000", busy.Addr)
	if code := uac2.Wait(20 * time.Second); code == 0 {
		t.Fatalf("the call answered 486 counted successful\n%s", uac2.Output())
	}

	dir := t.TempDir()
	l := &Lab{opt: Options{Dir: dir}}
	if r := l.FailedCalls(&Proc{Name: "ok", Dir: uac.Dir}, 3, 4096); r != "" {
		t.Errorf("a successful call reported failed:\n%s", r)
	}
	calls := sippFailedCalls(&Proc{Dir: uac2.Dir})
	if len(calls) != 1 {
		t.Fatalf("failed calls dumped: %d, want 1", len(calls))
	}
	id := calls[0].callID
	if err := os.WriteFile(filepath.Join(dir, "proxy1.log"), []byte("{\"msg\":\"other\"}\n{\"msg\":\"x\",\"call_id\":\""+id+"\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := l.FailedCalls(&Proc{Name: "calls1", Dir: uac2.Dir}, 3, 4096)
	for _, want := range []string{
		"calls1: 1 failed call(s)",
		"==== failed call " + id + " (calls1) ====",
		"-- SIPp error: ", "Aborting call on unexpected message",
		"INVITE sip:", "SIP/2.0 486 Busy Here",
		"proxy1.log:\n{\"msg\":\"x\",\"call_id\":\"" + id + "\"}",
	} {
		if !strings.Contains(r, want) {
			t.Errorf("report lacks %q:\n%s", want, r)
		}
	}
	if strings.Contains(r, "other") {
		t.Errorf("report has a log line not naming the call:\n%s", r)
	}
}
