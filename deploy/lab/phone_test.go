package lab

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// testPhone is a softphone for the real-Asterisk checks: one UDP socket in
// the phones namespace, its own digest credentials (chan_sip takes the
// peer's name as the digest user, which one SIPp instance cannot vary per
// phone), the Contact spelling a real softphone would send, and counters
// for the RTP it receives.
type testPhone struct {
	t          *testing.T
	user, pass string
	authUser   string // the digest user: pjsip.conf's auth username, chan_sip's peer name
	contact    string
	branch     string // of the last request sent
	conn       net.PacketConn
	vip        *net.UDPAddr
	msgs       chan sip.Message
	cseq       uint32
	callID     string
	tag        string
}

// newTestPhone binds port (0: any) on the phones host. contact is a format
// with %s for the host:port (or host) the phone claims.
func newTestPhone(t *testing.T, user, authUser, pass string, port int, contact string) *testPhone {
	t.Helper()
	var conn net.PacketConn
	if err := InNS(NS("phones"), func() (err error) {
		conn, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", Hosts["phones"], port))
		return err
	}); err != nil {
		t.Fatalf("phone %s: %v", user, err)
	}
	p := &testPhone{t: t, user: user, authUser: authUser, pass: pass, conn: conn, vip: &net.UDPAddr{IP: net.ParseIP(VIP), Port: SIPPort},
		msgs: make(chan sip.Message, 64), callID: randHex(8) + "@hlab-phone", tag: randHex(4)}
	hp := conn.LocalAddr().String()
	if port == 5060 {
		hp = Hosts["phones"]
	}
	p.contact = fmt.Sprintf(contact, hp)
	go p.read()
	t.Cleanup(func() { conn.Close() })
	return p
}

func (p *testPhone) read() {
	buf := make([]byte, 65535)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			close(p.msgs)
			return
		}
		if m, err := sip.ParseMessage(append([]byte(nil), buf[:n]...)); err == nil {
			p.msgs <- m
		}
	}
}

// send writes a request built from lines (without Content-Length) and body.
func (p *testPhone) send(lines []string, body string) {
	msg := strings.Join(lines, "\r\n") + fmt.Sprintf("\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if _, err := p.conn.WriteTo([]byte(msg), p.vip); err != nil {
		p.t.Fatalf("phone %s: send: %v", p.user, err)
	}
}

// transaction sends a request until a final response for its CSeq comes
// (retransmitting every 500 ms, 8 s at most) and returns it; provisional
// responses are skipped, requests to the phone are answered by answer.
func (p *testPhone) transaction(method, ruri, to string, extra []string, body string, answer func(*sip.Request)) *sip.Response {
	p.t.Helper()
	p.cseq++
	branch := "z9hG4bK" + randHex(8)
	p.branch = branch
	lines := []string{
		method + " " + ruri + " SIP/2.0",
		"Via: SIP/2.0/UDP " + p.conn.LocalAddr().String() + ";branch=" + branch + ";rport",
		"Max-Forwards: 70",
		"From: <sip:" + p.user + "@" + VIP + ">;tag=" + p.tag,
		"To: " + to,
		"Call-ID: " + p.callID,
		"CSeq: " + strconv.Itoa(int(p.cseq)) + " " + method,
		"Contact: " + p.contact,
		"User-Agent: hlab-phone",
	}
	lines = append(lines, extra...)
	p.send(lines, body)
	deadline := time.After(8 * time.Second)
	retrans := time.NewTicker(500 * time.Millisecond)
	defer retrans.Stop()
	for {
		select {
		case m, ok := <-p.msgs:
			if !ok {
				p.t.Fatalf("phone %s: socket closed", p.user)
			}
			switch m := m.(type) {
			case *sip.Response:
				if m.CSeq() == nil || m.CSeq().SeqNo != p.cseq || m.StatusCode < 200 {
					continue
				}
				return m
			case *sip.Request:
				if answer != nil {
					answer(m)
				}
			}
		case <-retrans.C:
			if method != "ACK" {
				p.send(lines, body)
			}
		case <-deadline:
			p.t.Fatalf("phone %s: %s %s: no final response in 8 s", p.user, method, ruri)
		}
	}
}

// authorization answers the digest challenge of res (RFC 2617, MD5, qop
// auth when offered) for method and uri with the phone's credentials.
func (p *testPhone) authorization(res *sip.Response, method, uri string) string {
	p.t.Helper()
	h := res.GetHeader("WWW-Authenticate")
	name := "Authorization"
	if h == nil {
		h, name = res.GetHeader("Proxy-Authenticate"), "Proxy-Authorization"
	}
	if h == nil {
		p.t.Fatalf("phone %s: %d without a challenge", p.user, res.StatusCode)
	}
	params := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(strings.TrimSpace(h.Value()), "Digest "), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		params[strings.ToLower(k)] = strings.Trim(v, `"`)
	}
	md := func(s string) string { sum := md5.Sum([]byte(s)); return hex.EncodeToString(sum[:]) }
	ha1 := md(p.authUser + ":" + params["realm"] + ":" + p.pass)
	ha2 := md(method + ":" + uri)
	v := fmt.Sprintf(`Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=MD5`, p.authUser, params["realm"], params["nonce"], uri)
	if strings.Contains(params["qop"], "auth") {
		cnonce := randHex(4)
		v += fmt.Sprintf(`, qop=auth, nc=00000001, cnonce="%s", response="%s"`, cnonce, md(ha1+":"+params["nonce"]+":00000001:"+cnonce+":auth:"+ha2))
	} else {
		v += fmt.Sprintf(`, response="%s"`, md(ha1+":"+params["nonce"]+":"+ha2))
	}
	if o, ok := params["opaque"]; ok {
		v += fmt.Sprintf(`, opaque="%s"`, o)
	}
	return name + ": " + v
}

// register sends REGISTER, expects a 401 challenge first (Asterisk
// authenticates every phone through hapbx), and returns the final response
// to the REGISTER with credentials.
func (p *testPhone) register() *sip.Response {
	p.t.Helper()
	ruri, to := "sip:"+VIP, "<sip:"+p.user+"@"+VIP+">"
	res := p.transaction("REGISTER", ruri, to, []string{"Expires: 300"}, "", nil)
	if res.StatusCode != 401 {
		p.t.Fatalf("phone %s: REGISTER without credentials answered %d, want 401 (challenged by Asterisk)", p.user, res.StatusCode)
	}
	return p.transaction("REGISTER", ruri, to, []string{"Expires: 300", p.authorization(res, "REGISTER", ruri)}, "", nil)
}

// routeSet is the route set a UAC takes from a 2xx: its Record-Route
// entries in reverse order (RFC 3261 §12.1.2), as Route header lines.
func routeSet(res *sip.Response) []string {
	var rr []string
	for _, h := range res.GetHeaders("Record-Route") {
		rr = append(rr, "Route: "+h.Value())
	}
	slices.Reverse(rr)
	return rr
}

// ack acknowledges a final response to an INVITE: a non-2xx hop by hop,
// with the INVITE's branch; a 2xx end to end, to ruri along its route set.
func (p *testPhone) ack(res *sip.Response, ruri string) {
	branch := p.branch
	var route []string
	if res.StatusCode < 300 {
		branch, route = "z9hG4bK"+randHex(8), routeSet(res)
	}
	lines := []string{
		"ACK " + ruri + " SIP/2.0",
		"Via: SIP/2.0/UDP " + p.conn.LocalAddr().String() + ";branch=" + branch + ";rport",
		"Max-Forwards: 70",
		"From: <sip:" + p.user + "@" + VIP + ">;tag=" + p.tag,
		"To: " + res.To().Value(),
		"Call-ID: " + p.callID,
		"CSeq: " + strconv.Itoa(int(res.CSeq().SeqNo)) + " ACK",
	}
	p.send(append(lines, route...), "")
}

// answer makes the phone a callee: it answers every INVITE to it with 200
// and an SDP for rtp, every BYE with 200, until the test ends; the INVITEs
// it got are counted in invites.
func (p *testPhone) answer(rtp net.PacketConn, invites chan<- *sip.Request) {
	go func() {
		for m := range p.msgs {
			req, ok := m.(*sip.Request)
			if !ok || (req.Method != sip.INVITE && req.Method != sip.BYE) {
				continue
			}
			var res *sip.Response
			if req.Method == sip.INVITE {
				res = sip.NewResponseFromRequest(req, 200, "OK", []byte(sdpOffer(rtp)))
				res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
				if to := res.To(); to != nil && !to.Params.Has("tag") {
					to.Params.Add("tag", p.tag)
				}
				res.AppendHeader(sip.NewHeader("Contact", p.contact))
				select {
				case invites <- req:
				default:
				}
			} else {
				res = sip.NewResponseFromRequest(req, 200, "OK", nil)
			}
			via := req.Via()
			if via == nil {
				continue
			}
			port := via.Port
			if port == 0 {
				port = 5060
			}
			_, _ = p.conn.WriteTo([]byte(res.String()), &net.UDPAddr{IP: net.ParseIP(via.Host), Port: port})
		}
	}()
}

// call places an authenticated call to ext with offer: the INVITE is
// challenged (401/407, acknowledged), resent with credentials and must be
// answered 200, which is acknowledged end to end. It returns the 200 and
// the dialog's remote target.
func (p *testPhone) call(ext, offer string) (*sip.Response, string) {
	p.t.Helper()
	return p.callAnswering(ext, offer, nil)
}

// callAnswering is call, with requests to the phone meanwhile handed to
// answer.
func (p *testPhone) callAnswering(ext, offer string, answer func(*sip.Request)) (*sip.Response, string) {
	p.t.Helper()
	ruri, to := "sip:"+ext+"@"+VIP, "<sip:"+ext+"@"+VIP+">"
	p.callID, p.tag = randHex(8)+"@hlab-phone", randHex(4)
	res := p.transaction("INVITE", ruri, to, []string{"Content-Type: application/sdp"}, offer, answer)
	p.ack(res, ruri)
	if res.StatusCode != 401 && res.StatusCode != 407 {
		p.t.Fatalf("INVITE %s without credentials answered %d, want a challenge", ext, res.StatusCode)
	}
	res = p.transaction("INVITE", ruri, to, []string{"Content-Type: application/sdp", p.authorization(res, "INVITE", ruri)}, offer, answer)
	if res.StatusCode != 200 {
		p.t.Fatalf("INVITE %s with credentials answered %d, want 200", ext, res.StatusCode)
	}
	target := ruri
	if c := res.Contact(); c != nil {
		target = c.Address.String()
	}
	p.ack(res, target)
	return res, target
}

// sdpOffer is a PCMU offer for RTP on rtp's port.
func sdpOffer(rtp net.PacketConn) string {
	addr := rtp.LocalAddr().(*net.UDPAddr)
	return fmt.Sprintf("v=0\r\no=hlab 1 1 IN IP4 %[1]s\r\ns=-\r\nc=IN IP4 %[1]s\r\nt=0 0\r\nm=audio %[2]d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n", addr.IP, addr.Port)
}

// sdpTarget reads the connection address and audio port of an SDP body.
func sdpTarget(body string) (*net.UDPAddr, error) {
	var ip net.IP
	port := 0
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "c=IN IP4 ") {
			ip = net.ParseIP(strings.TrimPrefix(line, "c=IN IP4 "))
		}
		if strings.HasPrefix(line, "m=audio ") {
			port, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	if ip == nil || port == 0 {
		return nil, fmt.Errorf("no audio address in SDP %q", body)
	}
	return &net.UDPAddr{IP: ip, Port: port}, nil
}

// echoRTP sends n PCMU packets 20 ms apart from rtp to dst and counts the
// RTP packets received meanwhile (and for 500 ms after).
func echoRTP(rtp net.PacketConn, dst *net.UDPAddr, n int) (received int) {
	got := make(chan int)
	go func() {
		buf := make([]byte, 2048)
		c := 0
		for {
			_ = rtp.SetReadDeadline(time.Now().Add(time.Second))
			m, _, err := rtp.ReadFrom(buf)
			if err != nil {
				got <- c
				return
			}
			if m >= 12 && buf[0]>>6 == 2 {
				c++
			}
		}
	}()
	pkt := make([]byte, 12+160)
	pkt[0] = 0x80
	ssrc := uint32(time.Now().UnixNano())
	for i := range n {
		binary.BigEndian.PutUint16(pkt[2:], uint16(i))
		binary.BigEndian.PutUint32(pkt[4:], uint32(i*160))
		binary.BigEndian.PutUint32(pkt[8:], ssrc)
		_, _ = rtp.WriteTo(pkt, dst)
		time.Sleep(20 * time.Millisecond)
	}
	return <-got
}

// TestE2EAsteriskPhones checks what a real Asterisk does through hapbx,
// with the shipped pjsip.conf (and, as a subtest, sip.conf): phones whose
// Contacts are spelt as softphones spell them (with and without
// ;transport=, with and without a port) register through the VIP after a
// 401 challenge and keep their binding; a wrong password gets no 2xx and no
// binding; a call without credentials is challenged, never answered; a call
// to the echo extension 600 is challenged, answered, and its RTP goes both
// ways through hapbx's relay; a call to another phone is Asterisk dialling
// it through hapbx (Dial to the hapbx endpoint/peer), and the phone answers; health has Asterisk's OPTIONS 200 and its AMI
// (login, FullyBooted) ready. Needs a real Asterisk ($HAPBX_ASTERISK).
func TestE2EAsteriskPhones(t *testing.T) {
	requireAsterisk(t)
	for _, chanSIP := range []bool{false, true} {
		name := "chan_pjsip"
		if chanSIP {
			name = "chan_sip"
		}
		t.Run(name, func(t *testing.T) { asteriskPhones(t, chanSIP) })
	}
}

// requireAsterisk skips a test that needs a real Asterisk where there is
// none.
func requireAsterisk(t *testing.T) {
	t.Helper()
	if os.Getenv("HAPBX_ASTERISK") == "" {
		if _, err := exec.LookPath("asterisk"); err != nil {
			t.Skip("no real Asterisk (HAPBX_ASTERISK unset, none on PATH): TestE2EAsteriskStandIn runs the stand-in instead")
		}
	}
}

func asteriskPhones(t *testing.T, chanSIP bool) {
	l := newLab(t, Options{Media: true, ChanSIP: chanSIP, Trunk: true})
	authUser := func(ext string) string {
		if chanSIP {
			return ext
		}
		return PhoneUser
	}
	provider, err := l.StartProvider()
	if err != nil {
		t.Fatal(err)
	}
	h := upWithBackends(t, l)
	var st Status
	if err := WaitFor(10*time.Second, "pbx1 SIP and AMI checks", func() bool {
		var err error
		st, err = l.Status(h)
		sip, ami := st.BackendChecks("pbx1")
		return err == nil && sip != "" && ami != ""
	}); err != nil {
		t.Fatal(err)
	}
	sipCheck, amiCheck := st.BackendChecks("pbx1")
	if !strings.Contains(sipCheck, "200") || !strings.Contains(amiCheck, "ready") {
		t.Errorf("pbx1 health: sip %q, ami %q: want OPTIONS answered 200 and AMI ready (login, FullyBooted)", sipCheck, amiCheck)
	}
	bindings := func() int {
		s, err := l.Status(h)
		if err != nil {
			t.Fatal(err)
		}
		return s.Registrar.Bindings
	}

	phones := []*testPhone{
		newTestPhone(t, "201", authUser("201"), PhoneSecret, 0, "<sip:201@%s;transport=UDP>"),
		newTestPhone(t, "202", authUser("202"), PhoneSecret, 0, "<sip:202@%s>"),
		newTestPhone(t, "203", authUser("203"), PhoneSecret, 5060, "<sip:203@%s>"),
		newTestPhone(t, "204", authUser("204"), PhoneSecret, 0, "<sip:204@%s;transport=tcp>"),
		newTestPhone(t, "205", authUser("205"), PhoneSecret, 0, "<sip:205@%s;rinstance=6f8e2a1b;transport=udp>"),
	}
	for i, p := range phones {
		res := p.register()
		if res.StatusCode != 200 {
			t.Fatalf("phone %s (Contact %s): REGISTER with credentials answered %d", p.user, p.contact, res.StatusCode)
		}
		var listed []string
		for _, hd := range res.GetHeaders("Contact") {
			listed = append(listed, hd.Value())
		}
		if n := bindings(); n != i+1 {
			t.Errorf("phone %s (Contact %s): 200 listing %v, hapbx holds %d bindings, want %d", p.user, p.contact, listed, n, i+1)
		} else {
			t.Logf("phone %s: Contact %s, Asterisk's 200 lists %v: binding kept", p.user, p.contact, listed)
		}
	}

	t.Run("wrong password", func(t *testing.T) {
		before := bindings()
		p := newTestPhone(t, "206", authUser("206"), "not-the-password", 0, "<sip:206@%s;transport=UDP>")
		res := p.register()
		if res.StatusCode < 400 {
			t.Fatalf("REGISTER with a wrong password answered %d", res.StatusCode)
		}
		t.Logf("REGISTER with a wrong password: %d %s from Asterisk through hapbx", res.StatusCode, res.Reason)
		if n := bindings(); n != before {
			t.Errorf("bindings %d after a refused REGISTER, want %d", n, before)
		}
	})

	t.Run("call without password", func(t *testing.T) {
		p := phones[0]
		rtp := listenRTP(t)
		ruri, to := "sip:600@"+VIP, "<sip:600@"+VIP+">"
		p.callID, p.tag = randHex(8)+"@hlab-phone", randHex(4)
		res := p.transaction("INVITE", ruri, to, []string{"Content-Type: application/sdp"}, sdpOffer(rtp), nil)
		p.ack(res, ruri)
		if res.StatusCode != 401 && res.StatusCode != 407 {
			t.Fatalf("INVITE from 201 without credentials answered %d, want a challenge (Asterisk identifies by user before IP)", res.StatusCode)
		}
	})

	t.Run("echo 600 through the relay", func(t *testing.T) {
		p := phones[1]
		rtp := listenRTP(t)
		res, target := p.call("600", sdpOffer(rtp))
		// Asterisk retransmits its 200 until the ACK reaches it (RFC 3261
		// §13.3.1.4): a 200 seen again means the ACK was lost on the way.
		retrans := 0
		for wait := time.After(1200 * time.Millisecond); ; {
			select {
			case m := <-p.msgs:
				if r, ok := m.(*sip.Response); ok && r.StatusCode == 200 && r.CSeq() != nil && r.CSeq().SeqNo == res.CSeq().SeqNo {
					retrans++
				}
				continue
			case <-wait:
			}
			break
		}
		t.Logf("echo 600: 200 OK retransmitted %d times in the 1.2 s after the ACK", retrans)
		dst, err := sdpTarget(string(res.Body()))
		if err != nil {
			t.Fatal(err)
		}
		if ip := dst.IP.String(); ip != VIP && ip != Hosts["proxy1"] && ip != Hosts["proxy2"] {
			t.Errorf("answer's media address %s is not hapbx's (VIP or a proxy): RTP would bypass the relay", dst)
		}
		got := echoRTP(rtp, dst, 100)
		t.Logf("echo 600: 100 RTP packets sent to %s, %d echoed back", dst, got)
		if got < 50 {
			t.Errorf("echo 600: %d of 100 RTP packets came back through hapbx's relay, want at least 50", got)
		}
		bye := p.transaction("BYE", target, res.To().Value(), routeSet(res), "", nil)
		if bye.StatusCode != 200 {
			t.Errorf("BYE answered %d", bye.StatusCode)
		}
	})
	t.Run("Asterisk dials a phone through hapbx", func(t *testing.T) {
		// 201 calls 202: the dialplan's Dial to the hapbx endpoint sends an
		// INVITE for 202 to the VIP; hapbx finds 202's binding and the
		// phone answers.
		caller, callee := phones[0], phones[1]
		invites := make(chan *sip.Request, 4)
		callee.answer(listenRTP(t), invites)
		res, target := caller.call("202", sdpOffer(listenRTP(t)))
		select {
		case inv := <-invites:
			t.Logf("202 got INVITE %s from hapbx (Via %s)", inv.Recipient.String(), inv.Via().Host)
		default:
			t.Errorf("call answered but phone 202 never got an INVITE")
		}
		if bye := caller.transaction("BYE", target, res.To().Value(), routeSet(res), "", nil); bye.StatusCode != 200 {
			t.Errorf("BYE answered %d", bye.StatusCode)
		}
	})
	t.Run("a provider's call reaches the trunk's dialplan", func(t *testing.T) {
		trunkCallIn(t, l, phones[2])
	})
	t.Run("Asterisk calls out through the trunk", func(t *testing.T) {
		trunkCallOut(t, l, phones[4], provider)
	})
	checkAsteriskLogs(t, l)
	if t.Failed() {
		for _, be := range Backends {
			if b, err := os.ReadFile(filepath.Join(l.Dir(), be+".log")); err == nil {
				t.Logf("---- %s log ----\n%s", be, b)
			}
		}
	}
}

// trunkCallIn: the provider calls 4930203 from its ACL address; the
// shipped dialplan reads X-Hapbx-Trunk in [from-hapbx], goes to
// [from-trunk] and dials the DID's last three digits, phone 203, which
// answers; the provider's ACK and BYE reach Asterisk through hapbx's
// Contact. The same INVITE from the phones' address is no trunk call: it
// falls to [from-hapbx-other], which has no such number, and 203 does not
// ring.
func trunkCallIn(t *testing.T, l *Lab, callee *testPhone) {
	invites := make(chan *sip.Request, 4)
	callee.answer(listenRTP(t), invites)
	call, err := l.TrunkCall("provider", "trunk-in", "4930203", 5062)
	if err != nil {
		t.Fatal(err)
	}
	if code := call.Wait(20 * time.Second); code != 0 {
		t.Fatalf("the provider's call to 4930203 failed (exit %d)\n%s", code, call.Log(4000))
	}
	select {
	case inv := <-invites:
		t.Logf("the provider's call to 4930203 rang 203 (INVITE %s): [from-trunk] reached", inv.Recipient.String())
	default:
		t.Errorf("the provider's call was answered but phone 203 never got an INVITE")
	}
	other, err := l.TrunkCall("phones", "trunk-in-other", "4930203", 5062)
	if err != nil {
		t.Fatal(err)
	}
	if code := other.Wait(20 * time.Second); code == 0 {
		t.Errorf("the provider's INVITE from the phones' address was answered: taken for a trunk call")
	}
	select {
	case <-invites:
		t.Errorf("the provider's INVITE from the phones' address rang 203: taken for a trunk call")
	case <-time.After(time.Second):
	}
}

// trunkCallOut: phone 205 dials 04930999; the shipped dialplan sends it to
// hapbx naming trunk p1 ([to-trunk]); hapbx sends it to the provider,
// answers the provider's 407 with the trunk's credentials (the provider
// checks them) and the provider answers; it sees the VIP as Contact and
// its BYE reaches Asterisk, which hangs up the phone.
func trunkCallOut(t *testing.T, l *Lab, caller *testPhone, provider *Proc) {
	res, _ := caller.call("04930999", sdpOffer(listenRTP(t)))
	t.Logf("205 -> 04930999 through trunk %s: %d %s", TrunkName, res.StatusCode, res.Reason)
	var bye *sip.Request
	for deadline := time.After(10 * time.Second); bye == nil; {
		select {
		case m := <-caller.msgs:
			if r, ok := m.(*sip.Request); ok && r.Method == sip.BYE {
				bye = r
			}
		case <-deadline:
			t.Fatalf("the provider hung up, but no BYE reached 205 within 10 s\n%s", provider.Log(4000))
		}
	}
	ok := sip.NewResponseFromRequest(bye, 200, "OK", nil)
	port := bye.Via().Port
	if port == 0 {
		port = SIPPort
	}
	_, _ = caller.conn.WriteTo([]byte(ok.String()), &net.UDPAddr{IP: net.ParseIP(bye.Via().Host), Port: port})
	trace, err := ReadTrace(provider)
	if err != nil {
		t.Fatal(err)
	}
	var invites []string
	for _, m := range trace {
		if m.Received && strings.HasPrefix(m.Msg, "INVITE ") {
			invites = append(invites, m.Msg)
		}
	}
	if len(invites) != 2 {
		t.Fatalf("the provider got %d INVITEs, want 2 (challenged, authorized)", len(invites))
	}
	if !strings.Contains(invites[1], "Proxy-Authorization: Digest") || strings.Contains(invites[0], "X-Hapbx-Trunk") {
		t.Errorf("the INVITE sent again carries no credentials, or X-Hapbx-Trunk reached the provider:\n%s", invites[1])
	}
	if c := header(invites[1], "Contact", "m"); !strings.Contains(c, "@"+VIP+":5060;hpxc=") {
		t.Errorf("the provider sees Contact %s, want the VIP's", c)
	}
}

// checkAsteriskLogs fails the test for every ERROR line the lab's PBXs
// logged while starting (started by the lab: Dir/pbxN.log; by the agents:
// Dir/svc-pbxN-asterisk.log): deploy/asterisk's files must start clean.
func checkAsteriskLogs(t *testing.T, l *Lab) {
	t.Helper()
	if l.opt.Asterisk == "" {
		return
	}
	var logs []string
	for _, be := range Backends {
		logs = append(logs, filepath.Join(l.Dir(), be+".log"), filepath.Join(l.Dir(), "svc-"+be+"-asterisk.log"))
	}
	read := 0
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		read++
		// Start-up only: from the banner to "Asterisk Ready." (a file holds
		// every start of that PBX). Later ERRORs are the lab's doing, e.g.
		// AMI logins refused while a killed node shuts down.
		starting := false
		for _, line := range strings.Split(string(b), "\n") {
			switch {
			case strings.Contains(line, "Asterisk ") && strings.Contains(line, "Copyright (C)"):
				starting = true
			case strings.Contains(line, "Asterisk Ready."):
				starting = false
			case starting && strings.Contains(line, "ERROR["):
				t.Errorf("%s: %s", filepath.Base(f), line)
			}
		}
	}
	if read == 0 {
		t.Errorf("no Asterisk log found in %s", l.Dir())
	}
}

func listenRTP(t *testing.T) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	if err := InNS(NS("phones"), func() (err error) {
		c, err = net.ListenPacket("udp4", Hosts["phones"]+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
