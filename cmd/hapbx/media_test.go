package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
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

// strangerIP is the RTP bleed attacker: no SIP, just datagrams at the relay.
const strangerIP = "127.0.3.70"

// pcapPackets counts the records of a classic pcap file.
func pcapPackets(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for off := 24; off+16 <= len(b); n++ {
		off += 16 + int(binary.LittleEndian.Uint32(b[off+8:]))
	}
	return n
}

// TestMediaStrangerFirstNoBleed is issue 12's RTP bleed test through hapbx:
// a stranger floods every relay port with valid RTP from before the call
// until after it, so it is first on both legs' ports. The SIPp phone's call
// to a SIPp backend that echoes RTP still works: the phone's audio reaches
// the backend and comes back, and the stranger's does not (the relayed
// counts stay within what the phone played, while the stranger sent many
// times more), the stranger receives nothing, and its datagrams are
// counted as stranger drops.
func TestMediaStrangerFirstNoBleed(t *testing.T) {
	testkit.RequireSIPp(t)
	pcapG711a := testkit.RequirePCAP(t)
	played := pcapPackets(t, pcapG711a)
	bePort := testkit.FreePort(t, be1IP)
	beMedia := testkit.FreePort(t, be1IP)
	testkit.StartSIPp(t, be1IP, bePort, "-sf", scenarioPath("uas_call.xml"), "-mi", be1IP,
		"-mp", strconv.Itoa(beMedia), "-rtp_echo")
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(bePort))
	testkit.WaitListening(t, "udp", a1, 3*time.Second)
	const lo, hi = 23200, 23207 // two calls' worth: one call takes two port pairs
	d := startDaemonWith(t, fmt.Sprintf("media: {enabled: true, ports: \"%d-%d\"}\n", lo, hi), a1)
	d.waitActive(t, "asterisk1")

	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(strangerIP)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	stop, rounds := make(chan struct{}), make(chan int, 1)
	go func() {
		pkt := make([]byte, 12+160)
		pkt[0], pkt[1] = 0x80, 8
		binary.BigEndian.PutUint32(pkt[8:], 0x5354524e)
		n := 0
		defer func() { rounds <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n++
			binary.BigEndian.PutUint16(pkt[2:], uint16(n))
			binary.BigEndian.PutUint32(pkt[4:], uint32(n)*160)
			for port := lo; port <= hi; port++ {
				_, _ = stranger.WriteToUDP(pkt, &net.UDPAddr{IP: net.ParseIP(proxyIP), Port: port})
			}
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(100 * time.Millisecond) // the stranger is at it before the call

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_media_call.xml"),
		"-s", "202", "-m", "1", "-mi", phoneIP, "-mp", strconv.Itoa(testkit.FreePort(t, phoneIP)),
		"-key", "pcap", pcapG711a, "-timeout", "20s", "-timeout_error", d.sip)
	// While the call runs, every latch the relay shows is the phone's (leg
	// A) or the backend's (leg B), never the stranger's.
	var last mediaDirs
	samples := 0
	for !phone.Exited() {
		for _, s := range mediaStatus(t, d) {
			for _, st := range s.Streams {
				for leg, dir := range map[string]mediaDir{phoneIP: st.FromA, be1IP: st.FromB} {
					if dir.Latched != "" && !strings.HasPrefix(dir.Latched, leg+":") {
						t.Errorf("leg of %s latched to %s", leg, dir.Latched)
					}
				}
				if st.FromA.Packets > 0 && st.FromB.Packets > 0 {
					last, samples = st, samples+1
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	code := phone.Wait(5 * time.Second)
	close(stop)
	flooded := <-rounds
	if code != 0 {
		t.Fatalf("media call failed (exit %d)\n%s\n%s", code, phone.Output(), d.log.String())
	}
	toB, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_packets_total{dir="a_to_b"}`), 64)
	toA, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_packets_total{dir="b_to_a"}`), 64)
	drops, _ := strconv.ParseFloat(d.metric(t, `hapbx_media_dropped_total{reason="stranger"}`), 64)
	t.Logf("relayed phone->backend %v, backend->phone %v; the pcap holds %d packets; stranger rounds %d, dropped %v",
		toB, toA, played, flooded, drops)
	if toB < 50 || toA < 50 {
		t.Fatalf("the call's media did not flow both ways: a_to_b=%v b_to_a=%v", toB, toA)
	}
	// The stranger sent far more than the phone played to each port: had
	// it taken either leg, its packets would show in the relayed counts.
	if flooded < 2*played {
		t.Fatalf("the stranger sent only %d rounds, not enough to tell against the phone's %d packets", flooded, played)
	}
	if toB > float64(played) || toA > toB {
		t.Fatalf("stranger media relayed: a_to_b=%v (the phone played at most %d), b_to_a=%v (the echo of a_to_b)", toB, played, toA)
	}
	if samples == 0 || !strings.HasPrefix(last.FromA.Latched, phoneIP+":") || !strings.HasPrefix(last.FromB.Latched, be1IP+":") ||
		last.FromA.Stranger == 0 || last.FromB.Stranger == 0 {
		t.Fatalf("relay status during the call (%d samples with media both ways): %+v; want latched to the phone and the backend, the stranger dropped on both legs", samples, last)
	}
	if drops < float64(played) {
		t.Fatalf("hapbx_media_dropped_total{reason=\"stranger\"} = %v, want the flood on the call's ports counted", drops)
	}
	_ = stranger.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, from, err := stranger.ReadFromUDP(make([]byte, 2048)); err == nil {
		t.Fatalf("the stranger received %d bytes from %s: the call's media bled to it", n, from)
	}
	if n, _ := strconv.ParseFloat(d.metric(t, "hapbx_media_sessions"), 64); n != 0 {
		t.Errorf("%v relay sessions left after BYE", n)
	}
}

// mediaDir and mediaDirs are the part of /api/v1/status's media sessions
// read here (media.SessionStatus).
type mediaDir struct {
	Latched  string `json:"latched"`
	Packets  uint64 `json:"packets"`
	Stranger uint64 `json:"stranger_dropped"`
}

type mediaDirs struct {
	FromA mediaDir `json:"from_a"`
	FromB mediaDir `json:"from_b"`
}

func mediaStatus(t *testing.T, d *daemon) []struct{ Streams []mediaDirs } {
	t.Helper()
	res, err := http.Get(d.admin + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var st struct {
		Media []struct{ Streams []mediaDirs } `json:"media_sessions"`
	}
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Media
}
