package lab

import (
	"os"
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
// (nft counters at each phone's RTP port; each phone's longest silence,
// logged, stays under 1 s); 201's hold, resume, session
// refresh and OPTIONS are answered by hapbx for the dead PBX, and either
// side's hang-up ends the other's (it gets the BYE). When 202 answers
// u-law instead (Asterisk transcodes), the call is not joined: both phones
// get a BYE. Both channel drivers; on chan_pjsip also a provider's call
// (trunk ACL, [from-trunk]) to 202's DID. Needs a real Asterisk ($HAPBX_ASTERISK
// or asterisk on PATH).
func TestBridgedCallSurvivesAsterisk(t *testing.T) {
	requireRealAsterisk(t, "the shipped dialplan's bridge mark is not tried; "+
		"package proxy's TestBridgedCallSurvivesBackendDeath runs the same call against the test kit's B2BUA")
	for _, chanSIP := range []bool{false, true} {
		name := driverName(chanSIP)
		for _, calleeHangsUp := range []bool{false, true} {
			who := "caller hangs up"
			if calleeHangsUp {
				who = "callee hangs up"
			}
			t.Run(name+"/"+who, func(t *testing.T) { bridgedCallSurvivesAsterisk(t, chanSIP, calleeHangsUp, false) })
		}
		if !chanSIP {
			t.Run(name+"/trunk caller", func(t *testing.T) { bridgedCallSurvivesAsterisk(t, chanSIP, false, true) })
		}
		t.Run(name+"/codec mismatch", func(t *testing.T) { bridgedCallCodecMismatch(t, chanSIP) })
	}
}

const (
	callerRTPPort = 7010 // phone 201's media port
	calleeRTPPort = 7020 // phone 202's
	calleeSIPPort = 5092 // phone 202 registers from it and answers on it
)

// bridgedCall is a call from SIPp phone 201 to SIPp phone 202 that a real
// Asterisk bridges, up and with audio both ways.
type bridgedCall struct {
	l                  *Lab
	h                  string // the VIP holder
	caller, callee     *Proc
	heard201, heard202 func() uint64 // RTP from hapbx at each phone
	atPhones           func() []string
	called             time.Time
	name               string // the caller's: "201", or the provider's caller
}

func (c *bridgedCall) logs() string {
	return "---- " + c.name + " ----\n" + c.caller.Log(3000) + "\n---- 202 ----\n" + c.callee.Log(3000)
}

// startBridgedCall sets up the lab on a real Asterisk with media anchored,
// registers 202, has 201 call it (uac_bridged_lab.xml, uas_bridged_lab.xml,
// as variant edits them), waits for audio both ways (only to 202 unless
// twoWay: 202 plays a-law whatever it answered) and checks the
// dialplan's mark: Asterisk's INVITE to 202, on pbx1's wire, carries
// X-Hapbx-Bridge with 201's Call-ID, and no phone sees the header.
func startBridgedCall(t *testing.T, chanSIP bool, variant func(l *Lab, uac, uas string) (string, string), twoWay, trunk bool) *bridgedCall {
	t.Helper()
	pcap := testkit.RequirePCAP(t)
	l := newLab(t, Options{Media: true, ChanSIP: chanSIP, Trunk: trunk})
	callerHost, service := "phones", "202"
	if trunk {
		callerHost, service = "provider", "4930202"
		if _, err := l.StartProvider(); err != nil {
			t.Fatal(err)
		}
	}
	c := &bridgedCall{l: l, h: upWithBackends(t, l), name: "201"}
	if trunk {
		c.name = "the provider's caller"
	}
	checkPBXsAtEnd(t, l)
	authUser := func(ext string) string {
		if chanSIP {
			return ext
		}
		return PhoneUser
	}
	atPBX := sniff(t, "pbx1")
	c.atPhones = sniff(t, "phones")
	atCaller := c.atPhones
	if trunk {
		atCaller = sniff(t, callerHost)
	}

	// 202 registers from the port it answers on, then SIPp takes the port.
	reg := newTestPhone(t, "202", authUser("202"), PhoneSecret, calleeSIPPort, "<sip:202@%s>")
	if res := reg.register(); res.StatusCode != 200 {
		t.Fatalf("phone 202: REGISTER answered %d", res.StatusCode)
	}
	reg.conn.Close()
	uac, uas := l.Scenario("uac_bridged_lab.xml"), l.Scenario("uas_bridged_lab.xml")
	if variant != nil {
		uac, uas = variant(l, uac, uas)
	}
	var err error
	c.callee, err = l.Sipp("phones", "phone202", calleeSIPPort, "-sf", uas, "-m", "1",
		"-mi", Hosts["phones"], "-mp", strconv.Itoa(calleeRTPPort), "-key", "pcap", pcap, "-timeout", "40s")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.waitUDP("phones", calleeSIPPort, c.callee); err != nil {
		t.Fatal(err)
	}
	if chanSIP {
		// chan_sip answers with one codec (preferred_codec_only) in its
		// allow order: u-law for a phone preferring a-law. A phone follows
		// the answer; SIPp plays its a-law pcap whatever it says, so here
		// 201 offers a-law only.
		uac = scenarioCopy(t, l, uac, "RTP/AVP 8 0 101\n      a=rtpmap:8 PCMA/8000\n      a=rtpmap:0 PCMU/8000\n", "RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000\n")
		if !trunk {
			if uac, err = l.ownCredentials(uac, "201"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if trunk {
		// The provider's customer: a From user that is no phone (Asterisk
		// would take the call for phone 201's), to a DID of 202.
		uac = scenarioCopy(t, l, uac, `"201" <sip:201@`, `<sip:+4930111@`)
	}
	c.heard201, c.heard202 = hostRTP(t, callerHost, callerRTPPort), phoneRTP(t, calleeRTPPort)
	c.called = time.Now()
	c.caller, err = l.Sipp(callerHost, "caller", 5091, "-sf", uac, "-s", service, "-m", "1",
		"-mi", Hosts[callerHost], "-mp", strconv.Itoa(callerRTPPort), "-key", "pcap", pcap, "-timeout", "40s", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(10*time.Second, "the phones hearing each other through Asterisk", func() bool {
		return (c.heard201() > 20 || !twoWay) && c.heard202() > 20
	}); err != nil {
		t.Fatalf("%v (%s heard %d, 202 heard %d)\n%s", err, c.name, c.heard201(), c.heard202(), c.logs())
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
	for _, m := range append(c.atPhones(), atCaller()...) {
		if strings.Contains(strings.ToLower(m), "x-hapbx-bridge") {
			t.Errorf("a phone or the provider saw X-Hapbx-Bridge:\n%s", m)
		}
		if strings.HasPrefix(m, "INVITE sip:"+service+"@"+VIP) {
			callerID = header(m, "Call-ID", "i")
		}
	}
	if callerID != bridge {
		t.Errorf("Asterisk marked its INVITE to 202 with X-Hapbx-Bridge %q, but %s's call has Call-ID %q", bridge, c.name, callerID)
	} else {
		t.Logf("Asterisk's INVITE to 202 carried X-Hapbx-Bridge: %s (%s's Call-ID); no phone saw the header", bridge, c.name)
	}
	return c
}

func bridgedCallSurvivesAsterisk(t *testing.T, chanSIP, calleeHangsUp, trunk bool) {
	var variant func(l *Lab, uac, uas string) (string, string)
	if calleeHangsUp {
		variant = func(l *Lab, uac, uas string) (string, string) {
			return scenarioCopy(t, l, uac, `<nop next="hangup"/>`, `<nop next="wait_bye"/>`),
				scenarioCopy(t, l, uas, `<nop next="wait_bye"/>`, `<nop next="hangup"/>`)
		}
	}
	c := startBridgedCall(t, chanSIP, variant, true, trunk)
	l, h := c.l, c.h
	// For 1.5 s from the kill: when hapbx joins the call, and each phone's
	// longest silence (the audio gap, detection included; the pcap has a
	// packet every 30 ms, polling adds a few ms).
	l.KillBackend("pbx1")
	t0 := time.Now()
	heard := [2]func() uint64{c.heard201, c.heard202}
	var (
		joinedAt     time.Duration
		last, atJoin [2]uint64
		lastAt       [2]time.Time
		gap          [2]time.Duration
	)
	for i := range heard {
		last[i], lastAt[i] = heard[i](), t0
	}
	for time.Since(t0) < 1500*time.Millisecond {
		if joinedAt == 0 && l.Metric(h, "hapbx_proxy_calls_joined_total") == 1 {
			joinedAt = time.Since(t0)
			atJoin = last
		}
		for i := range heard {
			if n, now := heard[i](), time.Now(); n != last[i] {
				gap[i] = max(gap[i], now.Sub(lastAt[i]))
				last[i], lastAt[i] = n, now
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	for i := range heard {
		gap[i] = max(gap[i], time.Since(lastAt[i])) // still silent
	}
	if joinedAt == 0 {
		if err := WaitFor(3*time.Second, h+" joining the call", func() bool {
			return l.Metric(h, "hapbx_proxy_calls_joined_total") == 1
		}); err != nil {
			t.Fatalf("%v: joined %v, refused codec %v media %v\n%s", err, l.Metric(h, "hapbx_proxy_calls_joined_total"),
				l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="codec"}`), l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="media"}`), c.logs())
		}
		t.Fatalf("call joined more than 1.5 s after the kill: too late for 201's hold 4 s into the call (answered by Asterisk, not hapbx)")
	}
	if since := t0.Add(joinedAt).Sub(c.called); since > 3500*time.Millisecond {
		t.Fatalf("call joined %s after 201 called: too late for its hold 4 s into the call (answered by Asterisk, not hapbx)", since.Round(time.Millisecond))
	}
	t.Logf("pbx1 SIGKILLed: call joined after %[1]s; longest silence at %[2]s %[3]s, at 202 %[4]s; packets heard since the join: %[2]s %[5]d, 202 %[6]d",
		joinedAt.Round(time.Millisecond), c.name, gap[0].Round(time.Millisecond), gap[1].Round(time.Millisecond), last[0]-atJoin[0], last[1]-atJoin[1])
	for i, who := range []string{c.name, "202"} {
		if last[i] < atJoin[i]+20 {
			t.Errorf("%s heard %d RTP packets in the %s after the join, want 20 or more: audio not joined both ways", who, last[i]-atJoin[i], (1500*time.Millisecond - joinedAt).Round(time.Millisecond))
		}
		if gap[i] > time.Second {
			t.Errorf("%s's audio gap %s, want <= 1s", who, gap[i].Round(time.Millisecond))
		}
	}
	// 201 holds, resumes, refreshes the session (4 s into the call), then
	// one side hangs up; hapbx answers each for the dead PBX and sends the
	// other side the BYE.
	first, second, hangsUp, other := c.caller, c.callee, c.name, "202"
	if calleeHangsUp {
		first, second, hangsUp, other = c.callee, c.caller, "202", c.name
	}
	if code := first.Wait(20 * time.Second); code != 0 {
		t.Errorf("%s's call failed (exit %d): hold, resume, session refresh or BYE not answered as expected, or the call cut\n%s", hangsUp, code, c.logs())
	}
	if code := second.Wait(10 * time.Second); code != 0 {
		t.Errorf("%s's call failed (exit %d): no BYE after %s hung up, or a hold, resume or session refresh not answered as expected\n%s", other, code, hangsUp, c.logs())
	}
	if n := l.Metric(h, `hapbx_proxy_joined_calls_ended_total{reason="bye"}`); n != 1 {
		t.Errorf("joined calls ended by BYE: %v, want 1", n)
	}
}

// bridgedCallCodecMismatch: 202 answers G.711 u-law while 201 talks
// a-law; Asterisk transcodes. Its SIGKILL cannot join the call (the relay
// does not transcode): hapbx counts a codec refusal and sends both phones
// a BYE, as for any call of a dead PBX.
func bridgedCallCodecMismatch(t *testing.T, chanSIP bool) {
	c := startBridgedCall(t, chanSIP, func(l *Lab, uac, uas string) (string, string) {
		return uac, scenarioCopy(t, l, uas, "RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000", "RTP/AVP 0 101\n      a=rtpmap:0 PCMU/8000")
	}, false, false)
	l, h := c.l, c.h
	l.KillBackend("pbx1")
	byes := func() (to201, to202 bool) {
		for _, m := range c.atPhones() {
			to201 = to201 || strings.HasPrefix(m, "BYE sip:201@")
			to202 = to202 || strings.HasPrefix(m, "BYE sip:202@")
		}
		return
	}
	if err := WaitFor(5*time.Second, "a BYE to each phone", func() bool { a, b := byes(); return a && b }); err != nil {
		a, b := byes()
		t.Errorf("%v: BYE to 201 %v, to 202 %v\n%s", err, a, b, c.logs())
	} else {
		t.Logf("pbx1 SIGKILLed: PCMA and PCMU legs not joined, both phones got hapbx's BYE")
	}
	if n := l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="codec"}`); n != 1 {
		t.Errorf("joins refused for the codec: %v, want 1", n)
	}
	if n := l.Metric(h, "hapbx_proxy_calls_joined_total"); n != 0 {
		t.Errorf("calls joined: %v, want 0 (PCMA and PCMU legs)", n)
	}
	// 202 takes the BYE as the end of its call; 201 was not done talking.
	if code := c.callee.Wait(10 * time.Second); code != 0 {
		t.Errorf("202's call failed (exit %d)\n%s", code, c.logs())
	}
	c.caller.Wait(10 * time.Second)
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

// scenarioCopy writes a copy of SIPp scenario path with every old replaced by new
// into a new file of the lab's directory and returns its path.
func scenarioCopy(t *testing.T, l *Lab, path, old, new string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s: no %q", path, old)
	}
	f, err := os.CreateTemp(l.Dir(), "variant-*-"+filepath.Base(path))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.ReplaceAll(string(b), old, new)); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// Issue 15.4 and the last test of 15.6: a bridged call (as in
// TestBridgedCallSurvivesAsterisk, chan_pjsip) outlives both its Asterisk
// and the proxy that set it up, in either order. "asterisk then proxy":
// the VIP holder joins the call when Asterisk is SIGKILLed, then is
// SIGKILLed itself; the twin takes the VIP and the call (its dialogs and
// links came over the cluster's "dialogs" channel). "proxy then asterisk":
// the VIP holder is SIGKILLed first, the twin takes the VIP, then Asterisk
// is SIGKILLed and the twin joins the call. Either way the phones hear
// each other through the twin, 201's hold, resume, session refresh and
// OPTIONS are answered by it, and 201's hang-up reaches 202 as a BYE.
func TestBridgedCallSurvivesProxyAndAsterisk(t *testing.T) {
	requireRealAsterisk(t, "the shipped dialplan's bridge mark is not tried")
	t.Run("asterisk then proxy", func(t *testing.T) { bridgedCallOutlivesProxy(t, true) })
	t.Run("proxy then asterisk", func(t *testing.T) { bridgedCallOutlivesProxy(t, false) })
}

func bridgedCallOutlivesProxy(t *testing.T, asteriskFirst bool) {
	c := startBridgedCall(t, false, nil, true, false)
	l, h := c.l, c.h
	tw := Twin(h)
	joined := func(p string) func() bool {
		return func() bool { return l.Metric(p, "hapbx_proxy_calls_joined_total") == 1 }
	}
	killProxy := func() {
		l.KillProxy(h)
		if _, err := l.WaitHolder(tw, 3*time.Second); err != nil {
			t.Fatalf("%s SIGKILLed: %v", h, err)
		}
	}
	if asteriskFirst {
		l.KillBackend("pbx1")
		if err := WaitFor(3*time.Second, h+" joining the call", joined(h)); err != nil {
			t.Fatalf("%v\n%s", err, c.logs())
		}
		killProxy()
		t.Logf("pbx1 SIGKILLed, call joined on %s; %s SIGKILLed, %s holds the VIP", h, h, tw)
	} else {
		killProxy()
		l.KillBackend("pbx1")
		if err := WaitFor(3*time.Second, tw+" joining the call", joined(tw)); err != nil {
			t.Fatalf("%v: joined %v, refused codec %v media %v\n%s", err, l.Metric(tw, "hapbx_proxy_calls_joined_total"),
				l.Metric(tw, `hapbx_proxy_calls_join_refused_total{reason="codec"}`), l.Metric(tw, `hapbx_proxy_calls_join_refused_total{reason="media"}`), c.logs())
		}
		t.Logf("%s SIGKILLed, %s holds the VIP; pbx1 SIGKILLed, call joined on %s", h, tw, tw)
	}
	// The twin joins the call in its relay (again, when the holder had):
	// the phones hear each other through it.
	if err := WaitFor(2*time.Second, tw+" joining the call", joined(tw)); err != nil {
		t.Errorf("%v: calls joined %v", err, l.Metric(tw, "hapbx_proxy_calls_joined_total"))
	}
	at201, at202, t0 := c.heard201(), c.heard202(), time.Now()
	if err := WaitFor(2*time.Second, "the phones hearing each other through "+tw, func() bool {
		return c.heard201() >= at201+20 && c.heard202() >= at202+20
	}); err != nil {
		t.Errorf("%v: 201 heard %d RTP packets, 202 %d, want 20 or more each\n%s", err, c.heard201()-at201, c.heard202()-at202, c.logs())
	} else {
		t.Logf("20 RTP packets or more heard by each phone through %s within %s", tw, time.Since(t0).Round(time.Millisecond))
	}
	if code := c.caller.Wait(20 * time.Second); code != 0 {
		t.Errorf("201's call failed (exit %d): hold, resume, session refresh or BYE not answered by %s, or the call cut\n%s", code, tw, c.logs())
	}
	if code := c.callee.Wait(10 * time.Second); code != 0 {
		t.Errorf("202's call failed (exit %d): no BYE from %s after 201 hung up\n%s", code, tw, c.logs())
	}
	if n := l.Metric(tw, `hapbx_proxy_joined_calls_ended_total{reason="bye"}`); n != 1 {
		t.Errorf("%s: joined calls ended by BYE: %v, want 1", tw, n)
	}
}
