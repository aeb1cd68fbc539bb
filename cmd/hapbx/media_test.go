package main

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

var reConn = regexp.MustCompile(`(?m)^\s*c=IN IP4 (\S+)`)

// sdpAddrs returns every c= address in a sipp message trace.
func sdpAddrs(trace string) []string {
	var out []string
	for _, m := range reConn.FindAllStringSubmatch(trace, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestMediaAnchored is issue 8's real-peer test: a SIPp phone plays G.711
// from a pcap through hapbx to a SIPp backend that echoes RTP. Packets flow
// both ways through hapbx's relay ports, and the SDP each side receives
// names only hapbx.
func TestMediaAnchored(t *testing.T) {
	testkit.RequireSIPp(t)
	pcapG711a := testkit.RequirePCAP(t)
	bePort := testkit.FreePort(t, be1IP)
	beMedia := testkit.FreePort(t, be1IP)
	be := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenarioPath("uas_call.xml"), "-mi", be1IP,
		"-mp", strconv.Itoa(beMedia), "-rtp_echo", "-trace_msg")
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(bePort))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	d := startDaemonWith(t, "media: {enabled: true, ports: \"23000-23099\"}\n", a1)
	d.waitActive(t, "asterisk1")

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_media_call.xml"),
		"-s", "202", "-m", "1", "-mi", phoneIP, "-mp", strconv.Itoa(testkit.FreePort(t, phoneIP)),
		"-key", "pcap", pcapG711a, "-trace_msg", "-timeout", "20s", "-timeout_error", d.sip)
	if code := phone.Wait(25 * time.Second); code != 0 {
		t.Fatalf("media call failed (exit %d)\n%s\n%s", code, phone.Output(), d.log.String())
	}
	toB, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_packets_total{dir="a_to_b"}`), 64)
	toA, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_packets_total{dir="b_to_a"}`), 64)
	t.Logf("relayed RTP/RTCP packets: phone->backend %v, backend->phone %v", toB, toA)
	if toB < 50 || toA < 50 {
		t.Fatalf("media did not flow both ways through hapbx: a_to_b=%v b_to_a=%v", toB, toA)
	}
	// What each side received: the backend saw the INVITE's offer, the
	// phone the 200's answer. Only hapbx's address may appear.
	be.Stop() // flushes its message trace
	for name, p := range map[string]*testkit.SIPp{"backend": be, "phone": phone} {
		addrs := sdpAddrs(received(p.Trace()))
		if len(addrs) == 0 {
			t.Fatalf("%s received no SDP:\n%s", name, p.Output())
		}
		for _, a := range addrs {
			if a != proxyIP {
				t.Errorf("%s received SDP naming %s, want only hapbx (%s)", name, a, proxyIP)
			}
		}
	}
	if n, _ := strconv.ParseFloat(d.metric(t, "hapbx_media_sessions"), 64); n != 0 {
		t.Errorf("%v relay sessions left after BYE", n)
	}
}

// received keeps only the messages sipp logged as received in -trace_msg.
func received(trace string) string {
	var b strings.Builder
	for _, part := range strings.Split(trace, "----------------------------------------------- ") {
		if strings.Contains(part, "message received [") {
			b.WriteString(part)
		}
	}
	return b.String()
}

var reMPort = regexp.MustCompile(`(?m)^\s*m=audio (\d+) `)

// TestMediaHoldResume: a SIPp phone puts its call through hapbx on hold
// (re-INVITE a=sendonly) and resumes it (a=sendrecv) while playing G.711 to
// a SIPp backend that echoes. The session is updated, never duplicated:
// one relay session the whole call, every SDP each side receives names only
// hapbx and the same relay port, the hold reaches the backend, media still
// flows after the resume, and nothing is left after BYE.
func TestMediaHoldResume(t *testing.T) {
	testkit.RequireSIPp(t)
	pcapG711a := testkit.RequirePCAP(t)
	bePort := testkit.FreePort(t, be1IP)
	beMedia := testkit.FreePort(t, be1IP)
	be := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenarioPath("uas_media_hold.xml"), "-mi", be1IP,
		"-mp", strconv.Itoa(beMedia), "-rtp_echo", "-trace_msg")
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(bePort))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	d := startDaemonWith(t, "media: {enabled: true, ports: \"23100-23199\"}\n", a1)
	d.waitActive(t, "asterisk1")

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_media_hold.xml"),
		"-s", "202", "-m", "1", "-mi", phoneIP, "-mp", strconv.Itoa(testkit.FreePort(t, phoneIP)),
		"-key", "pcap", pcapG711a, "-trace_msg", "-timeout", "20s", "-timeout_error", d.sip)
	maxSessions := 0.0
	for !phone.Exited() {
		if n, err := strconv.ParseFloat(d.metric(t, "hapbx_media_sessions"), 64); err == nil && n > maxSessions {
			maxSessions = n
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code := phone.Wait(5 * time.Second); code != 0 {
		t.Fatalf("hold/resume call failed (exit %d)\n%s\n%s", code, phone.Output(), d.log.String())
	}
	be.Stop() // flushes its message trace
	if maxSessions != 1 {
		t.Errorf("relay sessions peaked at %v during the call, want 1 (a re-INVITE must update, not add)", maxSessions)
	}
	afterResume, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_packets_total{dir="b_to_a"}`), 64)
	if afterResume < 100 {
		t.Errorf("only %v packets relayed back to the phone over the call", afterResume)
	}
	for name, p := range map[string]*testkit.SIPp{"backend": be, "phone": phone} {
		got := received(p.Trace())
		addrs := sdpAddrs(got)
		ports := map[string]bool{}
		for _, m := range reMPort.FindAllStringSubmatch(got, -1) {
			ports[m[1]] = true
		}
		if len(addrs) != 3 || len(ports) != 1 {
			t.Errorf("%s received %d SDP bodies with m= ports %v, want 3 (call, hold, resume) on one relay port", name, len(addrs), ports)
		}
		for _, a := range addrs {
			if a != proxyIP {
				t.Errorf("%s received SDP naming %s, want only hapbx (%s)", name, a, proxyIP)
			}
		}
		if name == "backend" && !strings.Contains(got, "a=sendonly") {
			t.Errorf("the hold (a=sendonly) did not reach the backend")
		}
	}
	if n, _ := strconv.ParseFloat(d.metric(t, "hapbx_media_sessions"), 64); n != 0 {
		t.Errorf("%v relay sessions left after BYE", n)
	}
}
