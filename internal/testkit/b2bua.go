package testkit

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// BridgeHeader is the header the shipped dialplan puts on the outgoing leg
// of a two-party call: the incoming leg's Call-ID.
const BridgeHeader = "X-Hapbx-Bridge"

// B2BUA stands in for an Asterisk running the shipped dialplan for a
// two-party call: it takes an INVITE (the incoming leg), places the
// outgoing INVITE through its outbound proxy marked with BridgeHeader,
// answers the incoming leg when the outgoing one answers, relays RTP
// between the two legs on its own ports, and passes a BYE from either side
// on to the other. Kill makes it vanish as a SIGKILLed Asterisk does: its
// ports close (the next packet draws ICMP port unreachable).
type B2BUA struct {
	tb    testing.TB
	IP    string
	Port  int
	proxy *net.UDPAddr
	// Target is the Request-URI of the outgoing leg.
	Target string

	conn *net.UDPConn
	mu   sync.Mutex
	// formats, rtpmap: see Transcode; extra: see Header.
	formats, rtpmap string
	extra           string
	legs            map[string]*b2leg // by Call-ID
	dead            bool
}

// b2leg is one dialog of a bridged call, as the B2BUA sees it.
type b2leg struct {
	callID   string
	from, to string // From and To of requests the B2BUA sends in it
	target   string // remote target
	routes   []string
	cseq     int
	inv      *sip.Request // the incoming INVITE (incoming leg only)
	rtp      *net.UDPConn // the B2BUA's media port facing this leg
	dest     *net.UDPAddr // where this leg's phone (the relay) wants media
	other    *b2leg
	tag      string // the B2BUA's tag in the incoming leg
	answered bool
}

// StartB2BUA listens on ip:port (UDP) and sends its requests to proxy.
func StartB2BUA(tb testing.TB, ip string, port int, proxy, target string) *B2BUA {
	tb.Helper()
	pa, err := net.ResolveUDPAddr("udp", proxy)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip), Port: port})
	if err != nil {
		tb.Fatalf("b2bua listen %s:%d: %v", ip, port, err)
	}
	b := &B2BUA{tb: tb, IP: ip, Port: port, proxy: pa, Target: target, conn: c, legs: map[string]*b2leg{}}
	go b.serve()
	tb.Cleanup(b.Kill)
	return b
}

// Transcode makes the outgoing offer carry formats (m= line) and the
// rtpmap line instead of the incoming offer's, as a B2BUA that transcodes
// (e.g. "0" with "rtpmap:0 PCMU/8000"); "" offers what came in.
func (b *B2BUA) Transcode(formats, rtpmap string) {
	b.mu.Lock()
	b.formats, b.rtpmap = formats, rtpmap
	b.mu.Unlock()
}

// Header adds "name: value" to every outgoing INVITE (X-Hapbx-Trunk: a
// dialplan dialling through a trunk).
func (b *B2BUA) Header(name, value string) {
	b.mu.Lock()
	b.extra += name + ": " + value + "\r\n"
	b.mu.Unlock()
}

// Addr is host:port.
func (b *B2BUA) Addr() string { return net.JoinHostPort(b.IP, strconv.Itoa(b.Port)) }

// Kill closes every socket of the B2BUA at once.
func (b *B2BUA) Kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dead {
		return
	}
	b.dead = true
	_ = b.conn.Close()
	for _, l := range b.legs {
		_ = l.rtp.Close()
	}
}

func (b *B2BUA) serve() {
	buf := make([]byte, 65535)
	for {
		n, _, err := b.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		switch m := msg.(type) {
		case *sip.Request:
			b.request(m)
		case *sip.Response:
			b.response(m)
		}
	}
}

func (b *B2BUA) send(data string) {
	_, _ = b.conn.WriteToUDP([]byte(data), b.proxy)
}

func (b *B2BUA) reply(req *sip.Request, code int, reason, toTag, body string) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if toTag != "" {
		if _, ok := res.To().Params.Get("tag"); !ok {
			res.To().Params.Add("tag", toTag)
		}
	}
	if code/100 == 2 && req.IsInvite() {
		res.AppendHeader(sip.NewHeader("Contact", "<sip:asterisk@"+b.Addr()+">"))
	}
	if body != "" {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res.SetBody([]byte(body))
	}
	b.send(res.String())
}

func (b *B2BUA) request(req *sip.Request) {
	b.mu.Lock()
	l := b.legs[req.CallID().Value()]
	b.mu.Unlock()
	switch {
	case req.IsAck():
	case req.IsInvite() && l == nil:
		b.call(req)
	case l == nil:
		b.reply(req, 481, "Call/Transaction Does Not Exist", "", "")
	case req.Method == sip.BYE:
		b.reply(req, 200, "OK", "", "")
		b.inDialog(l.other, "BYE", "")
	case req.IsInvite():
		f, m := b.formatsFor(l)
		b.reply(req, 200, "OK", "", b.sdp(l, f, m))
	default:
		b.reply(req, 200, "OK", "", "")
	}
}

var (
	mLine    = regexp.MustCompile(`(?m)^m=audio (\d+) RTP/AVP ([0-9 ]+)\r?$`)
	cLine    = regexp.MustCompile(`(?m)^c=IN IP4 ([0-9.]+)\r?$`)
	rtpmapRe = regexp.MustCompile(`(?m)^a=(rtpmap:.*?)\r?$`)
)

// sdpDest is the RTP address an SDP body names.
func sdpDest(body []byte) *net.UDPAddr {
	m, c := mLine.FindSubmatch(body), cLine.FindSubmatch(body)
	if m == nil || c == nil {
		return nil
	}
	ap, err := netip.ParseAddrPort(string(c[1]) + ":" + string(m[1]))
	if err != nil {
		return nil
	}
	return net.UDPAddrFromAddrPort(ap)
}

// offerFormats are an SDP body's m= formats and rtpmap lines.
func offerFormats(body []byte) (string, []string) {
	m := mLine.FindSubmatch(body)
	if m == nil {
		return "0", nil
	}
	var maps []string
	for _, r := range rtpmapRe.FindAllSubmatch(body, -1) {
		maps = append(maps, string(r[1]))
	}
	return strings.TrimSpace(string(m[2])), maps
}

func (b *B2BUA) sdp(l *b2leg, formats string, maps []string) string {
	port := l.rtp.LocalAddr().(*net.UDPAddr).Port
	s := fmt.Sprintf("v=0\r\no=asterisk 1 1 IN IP4 %s\r\ns=Asterisk\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP %s\r\n", b.IP, b.IP, port, formats)
	for _, a := range maps {
		s += "a=" + a + "\r\n"
	}
	return s + "a=sendrecv\r\n"
}

// formatsFor are the formats the B2BUA uses towards l's phone.
func (b *B2BUA) formatsFor(l *b2leg) (string, []string) {
	b.mu.Lock()
	formats, rtpmap := b.formats, b.rtpmap
	b.mu.Unlock()
	if l.inv == nil && formats != "" {
		return formats, []string{rtpmap}
	}
	if l.inv != nil {
		return offerFormats(l.inv.Body())
	}
	return offerFormats(l.other.inv.Body())
}

func (b *B2BUA) newLeg(callID string) *b2leg {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(b.IP)})
	if err != nil {
		b.tb.Errorf("b2bua media port: %v", err)
		return nil
	}
	return &b2leg{callID: callID, rtp: c, cseq: 1}
}

// call takes an incoming INVITE and places the outgoing leg.
func (b *B2BUA) call(inv *sip.Request) {
	b.reply(inv, 100, "Trying", "", "")
	in, out := b.newLeg(inv.CallID().Value()), b.newLeg("b2b-"+sip.GenerateTagN(16))
	if in == nil || out == nil {
		return
	}
	in.inv, in.other, out.other = inv, out, in
	in.dest = sdpDest(inv.Body())
	toTag := sip.GenerateTagN(8)
	in.tag = toTag
	in.from = "<" + inv.To().Address.String() + ">;tag=" + toTag
	in.to = "<" + inv.From().Address.String() + ">;tag=" + mustTag(inv.From().Params)
	if c := inv.Contact(); c != nil {
		in.target = c.Address.String()
	}
	for _, h := range inv.GetHeaders("Record-Route") {
		in.routes = append(in.routes, h.Value())
	}
	out.from = "<sip:asterisk@" + b.Addr() + ">;tag=" + sip.GenerateTagN(8)
	out.to = "<" + b.Target + ">"
	out.target = b.Target
	b.mu.Lock()
	if b.dead {
		b.mu.Unlock()
		return
	}
	b.legs[in.callID], b.legs[out.callID] = in, out
	extra := b.extra
	b.mu.Unlock()
	go b.pump(in, out)
	go b.pump(out, in)
	formats, maps := b.formatsFor(out)
	body := b.sdp(out, formats, maps)
	b.send(fmt.Sprintf("INVITE %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: 1 INVITE\r\n"+
		"Contact: <sip:asterisk@%s>\r\nMax-Forwards: 70\r\n%s: %s\r\n%sContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s",
		b.Target, b.Addr(), sip.GenerateTagN(10), out.from, out.to, out.callID, b.Addr(), BridgeHeader, in.callID, extra, len(body), body))
	// in is answered when out answers (response).
}

func mustTag(p sip.HeaderParams) string { t, _ := p.Get("tag"); return t }

// response handles the answers to the outgoing INVITE (and ignores those to
// its BYEs).
func (b *B2BUA) response(res *sip.Response) {
	if res.CSeq().MethodName != sip.INVITE || res.StatusCode < 200 {
		return
	}
	b.mu.Lock()
	out := b.legs[res.CallID().Value()]
	b.mu.Unlock()
	if out == nil || out.inv != nil {
		return
	}
	in := out.other
	if res.StatusCode >= 300 {
		b.reply(in.inv, res.StatusCode, res.Reason, in.tag, "")
		return
	}
	first := !out.answered
	out.answered = true
	out.to = "<" + res.To().Address.String() + ">;tag=" + mustTag(res.To().Params)
	if c := res.Contact(); c != nil {
		out.target = c.Address.String()
	}
	rr := res.GetHeaders("Record-Route")
	out.routes = nil
	for i := len(rr) - 1; i >= 0; i-- {
		out.routes = append(out.routes, rr[i].Value())
	}
	b.mu.Lock()
	out.dest = sdpDest(res.Body())
	b.mu.Unlock()
	b.inDialog(out, "ACK", "")
	if !first {
		return
	}
	formats, maps := b.formatsFor(in)
	res1 := sip.NewResponseFromRequest(in.inv, 200, "OK", nil)
	res1.To().Params.Add("tag", in.tag)
	res1.AppendHeader(sip.NewHeader("Contact", "<sip:asterisk@"+b.Addr()+">"))
	res1.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	res1.SetBody([]byte(b.sdp(in, formats, maps)))
	b.send(res1.String())
}

// inDialog sends a request without body in l (ACK keeps CSeq 1).
func (b *B2BUA) inDialog(l *b2leg, method, body string) {
	cseq := l.cseq
	if method != "ACK" {
		l.cseq++
		cseq = l.cseq
	}
	var routes string
	for _, r := range l.routes {
		routes += "Route: " + r + "\r\n"
	}
	b.send(fmt.Sprintf("%s %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\n%sFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\nContent-Length: %d\r\n\r\n%s",
		method, l.target, b.Addr(), sip.GenerateTagN(10), routes, l.from, l.to, l.callID, cseq, method, len(body), body))
}

// pump relays what from's phone sends to the B2BUA's port towards to's.
func (b *B2BUA) pump(from, to *b2leg) {
	buf := make([]byte, 2048)
	for {
		n, err := from.rtp.Read(buf)
		if err != nil {
			return
		}
		b.mu.Lock()
		dest := to.dest
		b.mu.Unlock()
		if dest != nil {
			_, _ = to.rtp.WriteToUDP(buf[:n], dest)
		}
	}
}
