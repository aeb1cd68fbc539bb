package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestFailedCalls: SIPp callers traced as the lab's Sipp traces them, whose
// calls real SIPp UASs answer, hang up or refuse: a successful call is not
// reported; a call refused 486 (SIPp dumps it) and a call aborted on a BYE
// that crossed the uac's own (SIPp dumps nothing, its errors name it) are, each with its Call-ID, SIPp's error, its messages, the lab log
// line naming it and hapbx's lines from just before the abort. Loopback
// only: no lab needed.
func TestFailedCalls(t *testing.T) {
	testdata, err := filepath.Abs(filepath.Join("..", "..", "proxy", "testdata"))
	if err != nil {
		t.Fatal(err)
	}
	// The built-in uac takes a BYE that crosses its own for an unexpected
	// message: it aborts the call without a -trace_calldebug dump.
	hangsUp := writeGlareUAS(t, t.TempDir(), true, "200 OK")
	// call runs SIPp's uac once against a UAS playing scenario and returns
	// the uac's directory.
	call := func(scenario string, ok bool) string {
		t.Helper()
		uas := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), "-sf", scenario, "-m", "1")
		testkit.WaitListening(t, "udp", uas.Addr, 5*time.Second)
		uac := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), "-sn", "uac", "-m", "1", "-d", "2000",
			"-trace_msg", "-trace_calldebug", "-max_log_size", "1000000", uas.Addr)
		if code := uac.Wait(20 * time.Second); (code == 0) != ok {
			t.Fatalf("uac against %s: sipp exit %d, want success %v\n%s", filepath.Base(scenario), code, ok, uac.Output())
		}
		return uac.Dir
	}
	okDir := call(filepath.Join(testdata, "uas_call.xml"), true)
	busyDir := call(filepath.Join(testdata, "uas_486.xml"), false)
	byeDir := call(hangsUp, false)

	dir := t.TempDir()
	l := &Lab{opt: Options{Dir: dir}}
	if r := l.FailedCalls(&Proc{Name: "ok", Dir: okDir}, 3, 4096); r != "" {
		t.Errorf("a successful call reported failed:\n%s", r)
	}
	for _, c := range []struct {
		dir  string
		want []string
	}{
		{busyDir, []string{"Aborting call on unexpected message", "SIP/2.0 486 Busy Here", "UDP message received"}},
		{byeDir, []string{"Aborting call on an unexpected BYE", "Reason: SIP;cause=503", "SIP/2.0 200 OK", "UDP message sent"}},
	} {
		calls := sippFailedCalls(&Proc{Dir: c.dir})
		if len(calls) != 1 {
			t.Errorf("%s: failed calls found: %d, want 1", c.want[0], len(calls))
			continue
		}
		id := calls[0].callID
		at := abortedAt(sippErrors(&Proc{Dir: c.dir}, id))
		if at == 0 {
			t.Errorf("%s: no abort time in SIPp's errors", c.want[0])
		}
		log := fmt.Sprintf("{\"msg\":\"other\"}\n{\"msg\":\"x\",\"call_id\":%q}\n"+
			"{\"ts\":%f,\"logger\":\"proxy\",\"msg\":\"near\"}\n{\"ts\":%f,\"logger\":\"proxy\",\"msg\":\"farther\"}\n"+
			"{\"ts\":%f,\"logger\":\"cluster.raft\",\"msg\":\"raft\"}\n", id, at-0.2, at-5, at)
		if err := os.WriteFile(filepath.Join(dir, "proxy1.log"), []byte(log), 0o644); err != nil {
			t.Fatal(err)
		}
		r := l.FailedCalls(&Proc{Name: "calls1", Dir: c.dir}, 3, 4096)
		want := append([]string{
			"calls1: 1 failed call(s)",
			"==== failed call " + id + " (calls1) ====",
			"-- SIPp error: ", "-- its messages (SIPp -trace_msg", "INVITE sip:",
			"proxy1.log:\n{\"msg\":\"x\",\"call_id\":\"" + id + "\"}",
			"-- hapbx's log from 1 s before SIPp aborted it", "\"msg\":\"near\"",
		}, c.want...)
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("report lacks %q:\n%s", w, r)
			}
		}
		for _, bad := range []string{"other", "farther", "raft"} {
			if strings.Contains(r, bad) {
				t.Errorf("report has a log line neither naming the call nor of hapbx near its abort (%s):\n%s", bad, r)
			}
		}
	}
}
