package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Issue 15.6 with a real Asterisk: SIPp phone 201 calls SIPp phone 202
// through hapbx (media anchored) and the shipped dialplan, which dials 202
// back through hapbx marking the outgoing INVITE with X-Hapbx-Bridge (the
// incoming leg's Call-ID); both phones play G.711 a-law from a pcap. The
// header reaches hapbx and never a phone. Asterisk is SIGKILLed mid-call:
// hapbx joins the two phone legs in its relay, audio goes on both ways
// (nft counters at each phone's RTP port); 201's hold, resume, session
// refresh and OPTIONS are answered by hapbx for the dead PBX, and either
// side's hang-up ends the other's (it gets the BYE). Both channel drivers. Needs a real Asterisk ($HAPBX_ASTERISK).
func TestBridgedCallSurvivesAsterisk(t *testing.T) {
	if os.Getenv("HAPBX_ASTERISK") == "" {
		if _, err := exec.LookPath("asterisk"); err != nil {
			t.Skip("no real Asterisk (HAPBX_ASTERISK unset, none on PATH): the shipped dialplan's bridge mark is not tried; " +
				"package proxy's TestBridgedCallSurvivesBackendDeath runs the same call against the test kit's B2BUA")
		}
	}
	for _, chanSIP := range []bool{false, true} {
		name := "chan_pjsip"
		if chanSIP {
			name = "chan_sip"
		}
		for _, calleeHangsUp := range []bool{false, true} {
			who := "caller hangs up"
			if calleeHangsUp {
				who = "callee hangs up"
			}
			t.Run(name+"/"+who, func(t *testing.T) { bridgedCallSurvivesAsterisk(t, chanSIP, calleeHangsUp) })
		}
	}
}

const (
	callerRTPPort = 7010 // phone 201's media port
	calleeRTPPort = 7020 // phone 202's
	calleeSIPPort = 5092 // phone 202 registers from it and answers on it
)

func bridgedCallSurvivesAsterisk(t *testing.T, chanSIP, calleeHangsUp bool) {
	pcap := testkit.RequirePCAP(t)
	l := newLab(t, Options{Media: true, ChanSIP: chanSIP})
	h := upWithBackends(t, l)
	authUser := func(ext string) string {
		if chanSIP {
			return ext
		}
		return PhoneUser
	}
	atPBX, atPhones := sniff(t, "pbx1"), sniff(t, "phones")

	// 202 registers from the port it answers on, then SIPp takes the port.
	reg := newTestPhone(t, "202", authUser("202"), PhoneSecret, calleeSIPPort, "<sip:202@%s>")
	if res := reg.register(); res.StatusCode != 200 {
		t.Fatalf("phone 202: REGISTER answered %d", res.StatusCode)
	}
	reg.conn.Close()
	uac, uas := l.Scenario("uac_bridged_lab.xml"), l.Scenario("uas_bridged_lab.xml")
	if calleeHangsUp {
		uac = scenarioCopy(t, l, uac, `<nop next="hangup"/>`, `<nop next="wait_bye"/>`)
		uas = scenarioCopy(t, l, uas, `<nop next="wait_bye"/>`, `<nop next="hangup"/>`)
	}
	callee, err := l.Sipp("phones", "phone202", calleeSIPPort, "-sf", uas, "-m", "1",
		"-mi", Hosts["phones"], "-mp", strconv.Itoa(calleeRTPPort), "-key", "pcap", pcap, "-timeout", "40s")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.waitUDP("phones", calleeSIPPort, callee); err != nil {
		t.Fatal(err)
	}
	if chanSIP {
		if uac, err = l.ownCredentials(uac, "201"); err != nil {
			t.Fatal(err)
		}
	}
	heard201, heard202 := phoneRTP(t, callerRTPPort), phoneRTP(t, calleeRTPPort)
	called := time.Now()
	caller, err := l.Sipp("phones", "phone201", 5091, "-sf", uac, "-s", "202", "-m", "1",
		"-mi", Hosts["phones"], "-mp", strconv.Itoa(callerRTPPort), "-key", "pcap", pcap, "-timeout", "40s", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		return "---- 201 ----\n" + caller.Log(3000) + "\n---- 202 ----\n" + callee.Log(3000)
	}
	if err := WaitFor(10*time.Second, "both phones hearing each other through Asterisk", func() bool {
		return heard201() > 20 && heard202() > 20
	}); err != nil {
		t.Fatalf("%v (201 heard %d, 202 heard %d)\n%s", err, heard201(), heard202(), logs())
	}

	// The backend-facing side: Asterisk's INVITE to 202 names the caller's
	// Call-ID; what reaches the phones does not carry the header.
	var bridge string
	re := regexp.MustCompile(`(?im)^X-Hapbx-Bridge:\s*(\S+)\s*$`)
	for _, m := range atPBX() {
		if strings.HasPrefix(m, "INVITE sip:202@") {
			if g := re.FindStringSubmatch(m); g != nil {
				bridge = g[1]
			}
		}
	}
	if bridge == "" {
		var invites []string
		for _, m := range atPBX() {
			if strings.HasPrefix(m, "INVITE ") {
				invites = append(invites, m)
			}
		}
		t.Fatalf("Asterisk's INVITE to 202 carries no X-Hapbx-Bridge (the dialplan's mark); INVITEs on pbx1's wire:\n%s", strings.Join(invites, "\n----\n"))
	}
	callerID := ""
	for _, m := range atPhones() {
		if strings.Contains(strings.ToLower(m), "x-hapbx-bridge") {
			t.Errorf("a phone saw X-Hapbx-Bridge:\n%s", m)
		}
		if strings.HasPrefix(m, "INVITE sip:202@"+VIP) {
			callerID = header(m, "Call-ID", "i")
		}
	}
	if callerID != bridge {
		t.Errorf("Asterisk marked its INVITE to 202 with X-Hapbx-Bridge %q, but 201's call has Call-ID %q", bridge, callerID)
	} else {
		t.Logf("Asterisk's INVITE to 202 carried X-Hapbx-Bridge: %s (201's Call-ID); no phone saw the header", bridge)
	}

	l.KillBackend("pbx1")
	t0 := time.Now()
	if err := WaitFor(5*time.Second, h+" joining the call", func() bool {
		return l.Metric(h, "hapbx_proxy_calls_joined_total") == 1
	}); err != nil {
		t.Fatalf("%v: joined %v, refused codec %v media %v\n%s", err, l.Metric(h, "hapbx_proxy_calls_joined_total"),
			l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="codec"}`), l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="media"}`), logs())
	}
	joinedAt := time.Since(t0)
	if since := time.Since(called); since > 3500*time.Millisecond {
		t.Fatalf("call joined %s after 201 called: too late for its hold 4 s into the call (answered by Asterisk, not hapbx)", since.Round(time.Millisecond))
	}
	a, b := heard201(), heard202()
	if err := WaitFor(3*time.Second, "audio both ways after the join", func() bool {
		return heard201() >= a+20 && heard202() >= b+20
	}); err != nil {
		t.Errorf("%v: 201 heard %d, 202 heard %d packets since the join", err, heard201()-a, heard202()-b)
	} else {
		t.Logf("pbx1 SIGKILLed: call joined after %s; both phones keep hearing each other (201 +%d, 202 +%d packets)",
			joinedAt.Round(time.Millisecond), heard201()-a, heard202()-b)
	}
	// 201 holds, resumes, refreshes the session (4 s into the call), then
	// one side hangs up; hapbx answers each for the dead PBX and sends the
	// other side the BYE.
	first, second, hangsUp, other := caller, callee, "201", "202"
	if calleeHangsUp {
		first, second, hangsUp, other = callee, caller, "202", "201"
	}
	if code := first.Wait(20 * time.Second); code != 0 {
		t.Errorf("%s's call failed (exit %d): hold, resume, session refresh or BYE not answered as expected, or the call cut\n%s", hangsUp, code, logs())
	}
	if code := second.Wait(10 * time.Second); code != 0 {
		t.Errorf("%s's call failed (exit %d): no BYE after %s hung up, or a hold, resume or session refresh not answered as expected\n%s", other, code, hangsUp, logs())
	}
	if n := l.Metric(h, `hapbx_proxy_joined_calls_ended_total{reason="bye"}`); n != 1 {
		t.Errorf("joined calls ended by BYE: %v, want 1", n)
	}
	if t.Failed() {
		for _, be := range Backends {
			if b, err := os.ReadFile(filepath.Join(l.Dir(), be+".log")); err == nil {
				t.Logf("---- %s log ----\n%s", be, b)
			}
		}
	}
}

// sniff captures, from now until the test ends, every UDP datagram that
// looks like a SIP message sent or received in host h's namespace (an
// AF_PACKET socket for every protocol: only those see outgoing packets
// too). It returns the messages seen so far.
func sniff(t *testing.T, h string) func() []string {
	t.Helper()
	var fd int
	if err := InNS(NS(h), func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_ALL)))
		return err
	}); err != nil {
		t.Fatalf("sniff %s: %v", h, err)
	}
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		msgs []string
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 28 {
				continue
			}
			// IPv4 only; the loopback shows each packet twice (out and in).
			ll, ok := from.(*unix.SockaddrLinklayer)
			if !ok || ll.Protocol != htons(unix.ETH_P_IP) || (ll.Pkttype == unix.PACKET_OUTGOING && ll.Ifindex == 1) {
				continue
			}
			ihl := int(buf[0]&0x0f) * 4
			if buf[9] != unix.IPPROTO_UDP || n < ihl+8 {
				continue
			}
			payload := string(buf[ihl+8 : n])
			if strings.Contains(payload, " SIP/2.0\r\n") || strings.HasPrefix(payload, "SIP/2.0 ") {
				mu.Lock()
				msgs = append(msgs, payload)
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; unix.Close(fd) })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), msgs...)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// scenarioCopy writes a copy of SIPp scenario path with old replaced by new
// into the lab's directory and returns its path.
func scenarioCopy(t *testing.T, l *Lab, path, old, new string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(b), old) != 1 {
		t.Fatalf("%s: %q not found once", path, old)
	}
	out := filepath.Join(l.Dir(), "variant-"+filepath.Base(path))
	if err := os.WriteFile(out, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
