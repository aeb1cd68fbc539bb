package proxy

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// benchUAS is a minimal UDP user agent server standing for a backend: it
// answers INVITE with 100, 180 and 200 (a To tag, a Contact, the Record-Route
// rows copied) and BYE with 200, and ignores ACK. It parses only the
// header rows it copies, so its own cost per call stays small next to the
// proxy's.
type benchUAS struct {
	conn    *net.UDPConn
	contact string
}

func startBenchUAS(b *testing.B, ip string) (*benchUAS, Backend) {
	port := testkit.FreePort(b, ip)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip), Port: port})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	u := &benchUAS{conn: c, contact: "Contact: <sip:uas@" + addr + ">\r\n"}
	go u.serve()
	return u, Backend{Name: "asterisk1", Address: addr, Transport: "udp"}
}

func (u *benchUAS) serve() {
	buf := make([]byte, 65535)
	var out []byte
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		msg := buf[:n]
		switch {
		case bytes.HasPrefix(msg, []byte("INVITE ")):
			for _, st := range []string{"100 Trying", "180 Ringing", "200 OK"} {
				out = u.response(out[:0], msg, st)
				u.conn.WriteToUDPAddrPort(out, from)
			}
		case bytes.HasPrefix(msg, []byte("BYE ")):
			out = u.response(out[:0], msg, "200 OK")
			u.conn.WriteToUDPAddrPort(out, from)
		}
	}
}

// response appends to out the response status to req: Via, Record-Route,
// From, Call-ID and CSeq copied, To tagged beyond 100.
func (u *benchUAS) response(out, req []byte, status string) []byte {
	out = append(out, "SIP/2.0 "...)
	out = append(out, status...)
	out = append(out, "\r\n"...)
	head, _, _ := bytes.Cut(req, []byte("\r\n\r\n"))
	_, head, _ = bytes.Cut(head, []byte("\r\n")) // the request line
	for len(head) > 0 {
		var line []byte
		line, head, _ = bytes.Cut(head, []byte("\r\n"))
		name, _, _ := bytes.Cut(line, []byte(":"))
		switch string(name) {
		case "Via", "v", "Record-Route", "From", "f", "Call-ID", "i", "CSeq":
			out = append(out, line...)
			out = append(out, "\r\n"...)
		case "To", "t":
			out = append(out, line...)
			if status != "100 Trying" && !bytes.Contains(line, []byte(";tag=")) {
				out = append(out, ";tag=uas1"...)
			}
			out = append(out, "\r\n"...)
		}
	}
	if status == "200 OK" {
		out = append(out, u.contact...)
	}
	return append(out, "Content-Length: 0\r\n\r\n"...)
}

// benchUAC is a phone placing calls one after the other over UDP and
// honouring the Record-Route of the 200 as uac_call.xml does.
type benchUAC struct {
	conn  *net.UDPConn
	proxy *net.UDPAddr
	local string
	buf   []byte
	out   []byte
}

func newBenchUAC(b *testing.B, ip, proxyAddr string) *benchUAC {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip), Port: testkit.FreePort(b, ip)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	pa, err := net.ResolveUDPAddr("udp4", proxyAddr)
	if err != nil {
		b.Fatal(err)
	}
	return &benchUAC{conn: c, proxy: pa, local: c.LocalAddr().String(), buf: make([]byte, 65535)}
}

const benchSDP = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.2.50\r\ns=-\r\nc=IN IP4 127.0.2.50\r\n" +
	"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

// call places call n: INVITE, 100/180/200, ACK, BYE, 200.
func (c *benchUAC) call(b *testing.B, n int) {
	id := strconv.Itoa(n)
	m := c.out[:0]
	m = append(m, "INVITE sip:202@"+c.proxy.String()+" SIP/2.0\r\n"...)
	m = c.common(m, id, "i", "<sip:202@"+c.proxy.String()+">", "1 INVITE")
	m = append(m, "Content-Type: application/sdp\r\nContent-Length: "+strconv.Itoa(len(benchSDP))+"\r\n\r\n"+benchSDP...)
	c.send(b, m)
	ok := c.await(b, "200", "INVITE")
	to, routes, target := header(ok, "To"), routeSet(ok), header(ok, "Contact")
	target = strings.Trim(target, "<>")

	m = c.inDialog(m[:0], "ACK", target, routes, id, to, "1")
	c.send(b, m)
	m = c.inDialog(m[:0], "BYE", target, routes, id, to, "2")
	c.send(b, m)
	c.await(b, "200", "BYE")
	c.out = m
}

// inDialog appends to m an in-dialog request (no body) along routes.
func (c *benchUAC) inDialog(m []byte, method, target, routes, id, to, cseq string) []byte {
	m = append(m, method+" "+target+" SIP/2.0\r\n"...)
	m = append(m, routes...)
	m = c.common(m, id, method, to, cseq+" "+method)
	return append(m, "Content-Length: 0\r\n\r\n"...)
}

func (c *benchUAC) common(m []byte, id, branch, to, cseq string) []byte {
	return append(m, "Via: SIP/2.0/UDP "+c.local+";branch=z9hG4bK-bench-"+id+"-"+branch+";rport\r\n"+
		"From: \"201\" <sip:201@"+c.local+">;tag=bench"+id+"\r\n"+
		"To: "+to+"\r\n"+
		"Call-ID: bench-"+id+"@"+c.local+"\r\n"+
		"CSeq: "+cseq+"\r\n"+
		"Contact: <sip:201@"+c.local+">\r\n"+
		"Max-Forwards: 70\r\n"...)
}

func (c *benchUAC) send(b *testing.B, m []byte) {
	if _, err := c.conn.WriteToUDP(m, c.proxy); err != nil {
		b.Fatal(err)
	}
}

// await reads responses until one with status for method; provisional
// responses and retransmissions of earlier ones are skipped.
func (c *benchUAC) await(b *testing.B, status, method string) string {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, err := c.conn.Read(c.buf)
		if err != nil {
			b.Fatalf("awaiting %s to %s: %v", status, method, err)
		}
		msg := string(c.buf[:n])
		if strings.HasPrefix(msg, "SIP/2.0 "+status) && strings.HasSuffix(header(msg, "CSeq"), method) {
			return msg
		}
		if !strings.HasPrefix(msg, "SIP/2.0 1") && !strings.HasPrefix(msg, "SIP/2.0 2") {
			b.Fatalf("awaiting %s to %s, got:\n%s", status, method, msg)
		}
	}
}

// header returns the value of msg's first header row name.
func header(msg, name string) string {
	for line := range strings.SplitSeq(msg, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// routeSet returns the Route rows for the Record-Route rows of a 200 as a
// UAC uses them (reversed).
func routeSet(msg string) string {
	var rr []string
	for line := range strings.SplitSeq(msg, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Record-Route") {
			for r := range strings.SplitSeq(v, ",") {
				rr = append(rr, strings.TrimSpace(r))
			}
		}
	}
	var s strings.Builder
	for i := len(rr) - 1; i >= 0; i-- {
		s.WriteString("Route: " + rr[i] + "\r\n")
	}
	return s.String()
}

// BenchmarkCall is the proxy's cost of one whole call over loopback UDP
// (INVITE, 100/180/200, ACK, BYE, 200) between a phone and one backend,
// calls one after the other. allocs/op and B/op count the whole process,
// the two minimal user agents included (a few dozen allocations); ns/op is
// mostly round-trip latency and scheduling, so it moves with the machine's
// load; cpu-ns/op is the process's CPU time per call.
func BenchmarkCall(b *testing.B) {
	_, be := startBenchUAS(b, be1IP)
	p := startProxyWith(b, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil)
	uac := newBenchUAC(b, phoneIP, p.addr)
	uac.call(b, -1) // warm up: sockets, connections, pools
	b.ReportAllocs()
	cpu0 := processCPU(b)
	n := 0
	for b.Loop() {
		uac.call(b, n)
		n++
	}
	// The process's CPU time (user + system, every goroutine, the two user
	// agents included) per call: unlike ns/op it does not count the time
	// spent waiting for the cores that other jobs of the machine hold.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(n), "cpu-ns/op")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
