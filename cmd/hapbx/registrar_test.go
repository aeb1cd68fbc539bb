package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

const phone2IP = "127.0.3.51"

// asterisks starts SIPp backends playing Asterisk (OPTIONS, REGISTER with
// digest, calls) on be1IP and be2IP and returns them with their addresses.
func asterisks(t testing.TB) (be1, be2 *testkit.SIPp, a1, a2 string) {
	p1, p2 := testkit.FreePort(t, be1IP), testkit.FreePort(t, be2IP)
	be1 = testkit.StartSIPp(t, be1IP, p1, "-sf", scenarioPath("uas_asterisk.xml"))
	be2 = testkit.StartSIPp(t, be2IP, p2, "-sf", scenarioPath("uas_asterisk.xml"))
	a1, a2 = net.JoinHostPort(be1IP, strconv.Itoa(p1)), net.JoinHostPort(be2IP, strconv.Itoa(p2))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	testkit.WaitListening(t, "udp", a2, 3*time.Second)
	return
}

// registerPhone starts phone 201 on ip: it registers through hapbx (digest
// challenged by the active backend), pauses for pause, then refreshes; it
// answers calls with phone_answer.xml, or oocsf when given.
func registerPhone(t testing.TB, d *daemon, ip string, pause time.Duration, oocsf string, extra ...string) *testkit.SIPp {
	if oocsf == "" {
		oocsf = "phone_answer.xml"
	}
	args := append([]string{"-sf", scenarioPath("phone_register.xml"),
		"-oocsf", scenarioPath(oocsf), "-m", "1", "-d", strconv.Itoa(int(pause.Milliseconds())),
		"-timeout", "60s"}, extra...)
	ph := testkit.StartSIPp(t, ip, testkit.FreePort(t, ip), append(args, d.sip)...)
	return ph
}

func (d *daemon) waitBindings(t testing.TB, n int) {
	t.Helper()
	if !testkit.Poll(5*time.Second, func() bool {
		got, _ := d.status(t)["registrar"].(map[string]any)["bindings"].(float64)
		return int(got) == n
	}) {
		t.Fatalf("bindings != %d after 5s: %v\n%s", n, d.status(t)["registrar"], d.log.String())
	}
}

// callPhone has a backend (a SIPp UAC on the backend's IP) dial
// sip:201@<hapbx>, as Asterisk does with PJSIP/201@hapbx.
func callPhone(t testing.TB, d *daemon, fromIP string) *testkit.SIPp {
	return testkit.StartSIPp(t, fromIP, testkit.FreePort(t, fromIP), "-sf", scenarioPath("uac_call.xml"),
		"-s", "201", "-m", "1", "-timeout", "15s", "-timeout_error", d.sip)
}

// TestRegisteredPhoneReachedFromOtherBackend: the phone registered through
// asterisk1; asterisk1 dies; asterisk2 calls it and it rings at once,
// without re-registering.
func TestRegisteredPhoneReachedFromOtherBackend(t *testing.T) {
	testkit.RequireSIPp(t)
	be1, _, a1, a2 := asterisks(t)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	d.waitState(t, "asterisk2", "up", 5*time.Second)
	registerPhone(t, d, phoneIP, 30*time.Second, "")
	d.waitBindings(t, 1)

	be1.Kill()
	d.waitState(t, "asterisk1", "down", 3*time.Second)
	call := callPhone(t, d, be2IP)
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("call from asterisk2 to 201 failed (exit %d)\n%s\n%s", code, call.Output(), d.log.String())
	}
}

// TestRefreshAnsweredFromStore: with both backends dead, the phone's
// registration refresh is answered 200 from hapbx's store.
func TestRefreshAnsweredFromStore(t *testing.T) {
	testkit.RequireSIPp(t)
	be1, be2, a1, a2 := asterisks(t)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	phone := registerPhone(t, d, phoneIP, 2500*time.Millisecond, "")
	d.waitBindings(t, 1)
	be1.Kill()
	be2.Kill()
	d.waitState(t, "asterisk1", "down", 3*time.Second)
	d.waitState(t, "asterisk2", "down", 3*time.Second)
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("refresh with no backend up was not answered 200 (exit %d)\n%s\n%s", code, phone.Output(), d.log.String())
	}
	if got := d.metric(t, "hapbx_proxy_register_store_answers_total"); got != "1" {
		t.Errorf("hapbx_proxy_register_store_answers_total = %s, want 1", got)
	}
}

// TestBindingSurvivesRestart: hapbx restarts; the binding is still there
// and a call from a backend reaches the phone.
func TestBindingSurvivesRestart(t *testing.T) {
	testkit.RequireSIPp(t)
	_, _, a1, a2 := asterisks(t)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	registerPhone(t, d, phoneIP, 30*time.Second, "")
	d.waitBindings(t, 1)
	d.stop(t)
	d.start(t)
	d.waitBindings(t, 1)
	d.waitActive(t, "asterisk1")
	call := callPhone(t, d, be1IP)
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("call after restart failed (exit %d)\n%s\n%s", code, call.Output(), d.log.String())
	}
}

// TestForkCancelsUnanswered: 201 is registered from two phones; a call
// rings both; one answers; the other gets CANCEL (and answers 487).
func TestForkCancelsUnanswered(t *testing.T) {
	testkit.RequireSIPp(t)
	phonePort := testkit.FreePort(t, phoneIP)
	first := "sip:201@" + net.JoinHostPort(phoneIP, strconv.Itoa(phonePort)) + ";transport=UDP"
	p1 := testkit.FreePort(t, be1IP)
	testkit.StartSIPp(t, be1IP, p1, "-sf", scenarioPath("uas_asterisk_two.xml"), "-set", "other", first)
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(p1))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	d := startDaemon(t, a1)
	d.waitActive(t, "asterisk1")
	testkit.StartSIPp(t, phoneIP, phonePort, "-sf", scenarioPath("phone_register.xml"),
		"-oocsf", scenarioPath("phone_answer.xml"), "-m", "1", "-d", "30000", "-timeout", "60s", d.sip)
	d.waitBindings(t, 1)
	ringer := registerPhone(t, d, phone2IP, 30*time.Second, "uas_cancel.xml", "-trace_msg")
	d.waitBindings(t, 2)
	call := callPhone(t, d, be1IP)
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("forked call failed (exit %d)\n%s\n%s", code, call.Output(), d.log.String())
	}
	testkit.Poll(5*time.Second, func() bool { return containsAll(ringer.Trace(), "CANCEL sip:201@", "SIP/2.0 487") })
	out := ringer.Trace()
	if !containsAll(out, "CANCEL sip:201@", "SIP/2.0 487") {
		t.Fatalf("the unanswered phone got no CANCEL:\n%s", out)
	}
	if got := d.metric(t, "hapbx_proxy_forks_total"); got != "1" {
		t.Errorf("hapbx_proxy_forks_total = %s, want 1", got)
	}
}

// TestInboundCallHungUpWhenBackendDies: asterisk1 calls the registered
// phone (sip:201@hapbx) and the phone answers; asterisk1 dies (its caller
// never sends BYE). hapbx hangs the call up towards the phone, as it does
// for calls placed by phones, so the phone does not sit in a silent call.
func TestInboundCallHungUpWhenBackendDies(t *testing.T) {
	testkit.RequireSIPp(t)
	be1, _, a1, a2 := asterisks(t)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	phone := registerPhone(t, d, phoneIP, 30*time.Second, "", "-trace_msg")
	d.waitBindings(t, 1)

	call := testkit.StartSIPp(t, be1IP, testkit.FreePort(t, be1IP), "-sf", scenarioPath("uac_answered.xml"),
		"-s", "201", "-m", "1", "-timeout", "15s", "-timeout_error", d.sip)
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("asterisk1's call to 201 (exit %d)\n%s\n%s", code, call.Output(), d.log.String())
	}
	be1.Kill()
	if !testkit.Poll(5*time.Second, func() bool { return strings.Contains(phone.Trace(), "BYE sip:201@") }) {
		t.Fatalf("no BYE reached the phone after asterisk1 died\n%s\n%s", phone.Trace(), d.log.String())
	}
	if tr := phone.Trace(); !strings.Contains(tr, "cause=503") {
		t.Errorf("the phone's BYE has no Reason: cause=503\n%s", tr)
	}
}

// TestLocationAndSurvivalAnswers: through the whole daemon, a call from a
// backend to an extension nobody registered gets 404; with every backend
// dead, an unknown phone's REGISTER gets 503 with Retry-After (a known
// phone's refresh is answered from the store: TestRefreshAnsweredFromStore).
func TestLocationAndSurvivalAnswers(t *testing.T) {
	testkit.RequireSIPp(t)
	be1, be2, a1, a2 := asterisks(t)
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	invite := "INVITE sip:999@" + d.sip + " SIP/2.0\nVia: SIP/2.0/UDP PEER;branch=z9hG4bKloc1;rport\nMax-Forwards: 70\n" +
		"From: <sip:100@" + be1IP + ">;tag=a1\nTo: <sip:999@" + d.sip + ">\nCall-ID: loc-1\nCSeq: 1 INVITE\nContact: <sip:100@PEER>\nContent-Length: 0\n\n"
	if res := testkit.Exchange(t, be1IP, d.sip, invite, 3*time.Second); !strings.HasPrefix(res, "SIP/2.0 404 ") {
		t.Fatalf("asterisk1 calling unregistered 999: %q, want 404", res)
	}
	be1.Kill()
	be2.Kill()
	d.waitState(t, "asterisk1", "down", 3*time.Second)
	d.waitState(t, "asterisk2", "down", 3*time.Second)
	register := "REGISTER sip:" + d.sip + " SIP/2.0\nVia: SIP/2.0/UDP PEER;branch=z9hG4bKreg1;rport\nMax-Forwards: 70\n" +
		"From: <sip:555@" + d.sip + ">;tag=p1\nTo: <sip:555@" + d.sip + ">\nCall-ID: reg-1\nCSeq: 1 REGISTER\nContact: <sip:555@PEER>\nExpires: 300\nContent-Length: 0\n\n"
	res := testkit.Exchange(t, phoneIP, d.sip, register, 10*time.Second)
	if !strings.HasPrefix(res, "SIP/2.0 503 ") || !strings.Contains(res, "Retry-After:") {
		t.Fatalf("unknown REGISTER with no backend: %q, want 503 with Retry-After", res)
	}
}
