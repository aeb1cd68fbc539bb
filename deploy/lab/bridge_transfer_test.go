package lab

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Issue 15.1 with a real Asterisk: a call that Asterisk transferred is
// kept up between the two phones it bridges when Asterisk dies. SIPp phone
// 201 (A) calls 202 (B, a Go phone here: it needs two dialogs at once);
// B transfers A to 203 (C, SIPp): blind (REFER to 203) or attended (B
// calls C, then REFER with Replaces naming that call). A and C talk
// (G.711 a-law from a pcap each); Asterisk is SIGKILLed: hapbx joins A's
// and C's legs in its relay (audio both ways, counted at each phone's RTP
// port), answers A's hold, resume, session refresh and OPTIONS for the
// dead PBX, and A's hang-up reaches C as a BYE. The link A-C comes from
// the manager's bridge events (BridgeEnter with HAPBX_CALLID, the shipped
// manager.conf's channelvars): after an attended transfer the dialplan's
// X-Hapbx-Bridge named B's second call for C, and no header names A and
// C. Both channel drivers. Needs a real Asterisk: the lab's stand-in (SIPp
// and health/amitest) neither transfers nor sends bridge events.
func TestTransferredCallSurvivesAsterisk(t *testing.T) {
	requireRealAsterisk(t, "transfers and AMI bridge events need one (the stand-in PBX transfers nothing); "+
		"package health's TestBridgeTracker* replay Asterisk 20's events for both transfers")
	for _, chanSIP := range []bool{false, true} {
		name := driverName(chanSIP)
		for _, attended := range []bool{false, true} {
			kind := "blind"
			if attended {
				kind = "attended"
			}
			t.Run(name+"/"+kind, func(t *testing.T) { transferredCallSurvives(t, chanSIP, attended) })
		}
	}
}

const (
	transfereeSIPPort = 5093 // phone 203 registers from it and answers on it
	transfereeRTPPort = 7030 // phone 203's media port
)

func transferredCallSurvives(t *testing.T, chanSIP, attended bool) {
	pcap := testkit.RequirePCAP(t)
	l := newLab(t, Options{Media: true, ChanSIP: chanSIP})
	h := upWithBackends(t, l)
	checkPBXsAtEnd(t, l)
	atPBX := sniff(t, "pbx1")
	authUser := func(ext string) string {
		if chanSIP {
			return ext
		}
		return PhoneUser
	}

	// C: 203 registers from the port it answers on, then SIPp takes it.
	reg := newTestPhone(t, "203", authUser("203"), PhoneSecret, transfereeSIPPort, "<sip:203@%s>")
	if res := reg.register(); res.StatusCode != 200 {
		t.Fatalf("phone 203: REGISTER answered %d", res.StatusCode)
	}
	reg.conn.Close()
	c, err := l.Sipp("phones", "phone203", transfereeSIPPort, "-sf", l.Scenario("uas_bridged_lab.xml"), "-m", "1",
		"-mi", Hosts["phones"], "-mp", strconv.Itoa(transfereeRTPPort), "-key", "pcap", pcap, "-timeout", "60s")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.waitUDP("phones", transfereeSIPPort, c); err != nil {
		t.Fatal(err)
	}
	// B: 202 registers and stays on its port.
	b := newTestPhone(t, "202", authUser("202"), PhoneSecret, calleeSIPPort, "<sip:202@%s>")
	if res := b.register(); res.StatusCode != 200 {
		t.Fatalf("phone 202: REGISTER answered %d", res.StatusCode)
	}
	// A: 201 calls 202; it talks 8 s (the transfer, the kill and the
	// join fit in) before its hold, resume, refresh, OPTIONS and BYE.
	uac := scenarioCopy(t, l, l.Scenario("uac_bridged_lab.xml"), `<pause milliseconds="4000"/>`, `<pause milliseconds="8000"/>`)
	if chanSIP {
		// As in TestBridgedCallSurvivesAsterisk: chan_sip answers with one
		// codec in its allow order; SIPp plays a-law whatever it says.
		uac = scenarioCopy(t, l, uac, "RTP/AVP 8 0 101\n      a=rtpmap:8 PCMA/8000\n      a=rtpmap:0 PCMU/8000\n", "RTP/AVP 8 101\n      a=rtpmap:8 PCMA/8000\n")
		if uac, err = l.ownCredentials(uac, "201"); err != nil {
			t.Fatal(err)
		}
	}
	heardA, heardC := phoneRTP(t, callerRTPPort), phoneRTP(t, transfereeRTPPort)
	a, err := l.Sipp("phones", "caller", 5091, "-sf", uac, "-s", "202", "-m", "1",
		"-mi", Hosts["phones"], "-mp", strconv.Itoa(callerRTPPort), "-key", "pcap", pcap, "-timeout", "60s", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		return "---- 201 ----\n" + a.Log(3000) + "\n---- 203 ----\n" + c.Log(3000)
	}

	b1 := b.answerCall(10 * time.Second)
	time.Sleep(time.Second) // B and A talk; A's 200 and ACK pass
	kind := "blind"
	referTo := "<sip:203@" + VIP + ">"
	if attended {
		kind = "attended"
		b2 := b.placeCall("203", pcmaOffer(b.conn.LocalAddr().(*net.UDPAddr).IP, 7092))
		time.Sleep(500 * time.Millisecond) // C's call up on Asterisk's side too
		replaces := b2.callID + ";to-tag=" + b2.remoteTag + ";from-tag=" + b2.localTag
		referTo = "<sip:203@" + VIP + "?Replaces=" + url.QueryEscape(replaces) + ">"
	}
	if res := b.refer(b1, referTo); res.StatusCode != 202 {
		t.Fatalf("%s transfer: 202's REFER answered %d, want 202 Accepted:\n%s\nSIP on pbx1's wire:\n%s\n%s", kind, res.StatusCode, res, wire(atPBX()), logs())
	}
	b.answerAll() // NOTIFYs of the transfer's progress, Asterisk's BYEs
	if err := WaitFor(10*time.Second, "201 and 203 hearing each other through Asterisk", func() bool {
		return heardA() > 20 && heardC() > 20
	}); err != nil {
		t.Fatalf("%v after the %s transfer (201 heard %d, 203 heard %d)\nSIP on pbx1's wire:\n%s\n%s", err, kind, heardA(), heardC(), wire(atPBX()), logs())
	}

	l.KillBackend("pbx1")
	if err := WaitFor(3*time.Second, h+" joining the transferred call", func() bool {
		return l.Metric(h, "hapbx_proxy_calls_joined_total") == 1
	}); err != nil {
		t.Fatalf("%v: joined %v, refused codec %v media %v (201 and 203 not linked?)\n%s", err, l.Metric(h, "hapbx_proxy_calls_joined_total"),
			l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="codec"}`), l.Metric(h, `hapbx_proxy_calls_join_refused_total{reason="media"}`), logs())
	}
	atA, atC, t0 := heardA(), heardC(), time.Now()
	if err := WaitFor(2*time.Second, "201 and 203 hearing each other through hapbx's relay", func() bool {
		return heardA() >= atA+20 && heardC() >= atC+20
	}); err != nil {
		t.Errorf("%v: 201 heard %d RTP packets since the join, 203 %d, want 20 or more each\n%s", err, heardA()-atA, heardC()-atC, logs())
	} else {
		t.Logf("%s transfer, pbx1 SIGKILLed: 201 and 203 joined; 20 RTP packets or more heard by each within %s", kind, time.Since(t0).Round(time.Millisecond))
	}
	if code := a.Wait(25 * time.Second); code != 0 {
		t.Errorf("201's call failed (exit %d): cut, or hold, resume, session refresh, OPTIONS or BYE not answered by hapbx\n%s", code, logs())
	}
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Errorf("203's call failed (exit %d): no BYE after 201 hung up\n%s", code, logs())
	}
	if n := l.Metric(h, `hapbx_proxy_joined_calls_ended_total{reason="bye"}`); n != 1 {
		t.Errorf("joined calls ended by BYE: %v, want 1", n)
	}
}

// requireRealAsterisk skips t, saying why, where no real Asterisk runs.
func requireRealAsterisk(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("HAPBX_ASTERISK") == "" {
		if _, err := exec.LookPath("asterisk"); err != nil {
			t.Skip("no real Asterisk (HAPBX_ASTERISK unset, none on PATH): " + why)
		}
	}
}

func driverName(chanSIP bool) string {
	if chanSIP {
		return "chan_sip"
	}
	return "chan_pjsip"
}

// checkPBXsAtEnd checks, when t ends, that the Asterisks logged no ERROR,
// and shows their logs if t failed.
func checkPBXsAtEnd(t *testing.T, l *Lab) {
	t.Cleanup(func() {
		checkAsteriskLogs(t, l)
		if t.Failed() {
			for _, be := range Backends {
				if b, err := os.ReadFile(filepath.Join(l.Dir(), be+".log")); err == nil {
					t.Logf("---- %s log ----\n%s", be, b)
				}
			}
		}
	})
}

// phoneDialog is one dialog of a test phone, as it needs it to send a
// request in it.
type phoneDialog struct {
	callID, localTag, remoteTag string
	remote                      string // the To value of its requests
	target                      string // the remote target (Contact)
	routes                      []string
}

// answerCall waits for an INVITE to the phone, answers it 200 with an
// a-law offer's answer (no media is sent), takes its ACK and returns the
// dialog; re-INVITEs and UPDATEs meanwhile are answered 200 too.
func (p *testPhone) answerCall(within time.Duration) phoneDialog {
	p.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				p.t.Fatalf("phone %s: socket closed", p.user)
			}
			req, isReq := m.(*sip.Request)
			if !isReq || req.Method != sip.INVITE {
				continue
			}
			res := p.okTo(req, randHex(4))
			d := phoneDialog{callID: req.CallID().Value(), remote: req.From().Value(), target: req.Contact().Address.String()}
			d.localTag, _ = res.To().Params.Get("tag") // sipgo may have tagged it first
			d.remoteTag, _ = req.From().Params.Get("tag")
			for _, h := range req.GetHeaders("Record-Route") {
				d.routes = append(d.routes, "Route: "+h.Value()) // the callee's route set: in order
			}
			p.awaitACK(d.callID, deadline)
			return d
		case <-deadline:
			p.t.Fatalf("phone %s: no INVITE within %s", p.user, within)
		}
	}
}

// awaitACK waits for the ACK in dialog callID, answering other requests.
func (p *testPhone) awaitACK(callID string, deadline <-chan time.Time) {
	p.t.Helper()
	for {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				p.t.Fatalf("phone %s: socket closed", p.user)
			}
			if req, isReq := m.(*sip.Request); isReq {
				if req.Method == sip.ACK && req.CallID().Value() == callID {
					return
				}
				p.inDialog(req)
			}
		case <-deadline:
			p.t.Fatalf("phone %s: no ACK of its 200 in %s", p.user, callID)
		}
	}
}

// okTo answers req 200 (an INVITE: with an a-law SDP and the local tag
// tag) and returns the response sent.
func (p *testPhone) okTo(req *sip.Request, tag string) *sip.Response {
	var body []byte
	if req.Method == sip.INVITE {
		body = []byte(pcmaOffer(p.conn.LocalAddr().(*net.UDPAddr).IP, 7092))
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", body)
	if body != nil {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	if to := res.To(); to != nil && !to.Params.Has("tag") && tag != "" {
		to.Params.Add("tag", tag)
	}
	res.AppendHeader(sip.NewHeader("Contact", p.contact))
	if via := req.Via(); via != nil {
		port := via.Port
		if port == 0 {
			port = 5060
		}
		if rp, ok := via.Params.Get("rport"); ok && rp != "" {
			if n, err := strconv.Atoi(rp); err == nil {
				port = n
			}
		}
		_, _ = p.conn.WriteTo([]byte(res.String()), &net.UDPAddr{IP: net.ParseIP(via.Host), Port: port})
	}
	return res
}

// inDialog answers the requests Asterisk sends in the phone's dialogs
// while the phone waits for its own transaction: 200 to all but ACK.
func (p *testPhone) inDialog(req *sip.Request) {
	if req.Method != sip.ACK {
		p.okTo(req, "")
	}
}

// placeCall calls ext (challenged, then with credentials) with offer and
// returns the dialog; Asterisk's requests meanwhile are answered 200.
func (p *testPhone) placeCall(ext, offer string) phoneDialog {
	p.t.Helper()
	res, target := p.callAnswering(ext, offer, p.inDialog)
	d := phoneDialog{callID: p.callID, localTag: p.tag, target: target, routes: routeSet(res)}
	d.remoteTag, _ = res.To().Params.Get("tag")
	return d
}

// refer sends REFER with referTo in dialog d and returns its final answer.
func (p *testPhone) refer(d phoneDialog, referTo string) *sip.Response {
	p.t.Helper()
	savedID, savedTag := p.callID, p.tag
	p.callID, p.tag = d.callID, d.localTag
	defer func() { p.callID, p.tag = savedID, savedTag }()
	extra := append(slices.Clone(d.routes), "Refer-To: "+referTo, fmt.Sprintf("Referred-By: <sip:%s@%s>", p.user, VIP))
	return p.transaction("REFER", d.target, d.remote, extra, "", p.inDialog)
}

// answerAll answers every request to the phone 200 (ACKs taken) until the
// test ends.
func (p *testPhone) answerAll() {
	go func() {
		for m := range p.msgs {
			if req, ok := m.(*sip.Request); ok {
				p.inDialog(req)
			}
		}
	}()
}

// pcmaOffer is an a-law SDP for ip:port.
func pcmaOffer(ip net.IP, port int) string {
	return fmt.Sprintf("v=0\r\no=hlab 1 1 IN IP4 %[1]s\r\ns=-\r\nc=IN IP4 %[1]s\r\nt=0 0\r\nm=audio %[2]d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n", ip, port)
}

// wire is the SIP messages seen, one line each: start line, Call-ID, CSeq.
func wire(msgs []string) string {
	var b strings.Builder
	for _, m := range msgs {
		first, _, _ := strings.Cut(m, "\r\n")
		fmt.Fprintf(&b, "%s | %s | %s\n", first, header(m, "Call-ID", "i"), header(m, "CSeq", ""))
	}
	return b.String()
}
