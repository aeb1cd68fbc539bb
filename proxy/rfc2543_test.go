package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// phone2543 is an RFC 2543 client on a UDP socket or a TCP connection: no
// branch in its Via, no From tag.
type phone2543 struct {
	t     *testing.T
	write func([]byte) error
	read  func() (string, error) // the next message, within 10 s
	via   string
	cid   string
	ruri  string
	from  string // From header line
	to    string // the proxy's address
}

func newPhone2543(t *testing.T, transport, proxyAddr, cid string) *phone2543 {
	ph := &phone2543{t: t, to: proxyAddr, cid: cid, ruri: "sip:202@example.com", from: "From: <sip:201@example.com>"}
	if transport == "tcp" {
		c := dialFrom(t, phoneIP, proxyAddr)
		r := bufio.NewReader(c)
		ph.via = "Via: SIP/2.0/TCP " + c.LocalAddr().String()
		ph.write = func(b []byte) error { _, err := c.Write(b); return err }
		ph.read = func() (string, error) {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			return readStreamMessage(r)
		}
		return ph
	}
	port := testkit.FreePort(t, phoneIP)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(phoneIP), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	to := mustUDPAddr(t, proxyAddr)
	ph.via = fmt.Sprintf("Via: SIP/2.0/UDP %s:%d", phoneIP, port)
	ph.write = func(b []byte) error { _, err := c.WriteTo(b, to); return err }
	buf := make([]byte, 65535)
	ph.read = func() (string, error) {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := c.ReadFrom(buf)
		return string(buf[:n]), err
	}
	return ph
}

// readStreamMessage reads one message framed by its Content-Length.
func readStreamMessage(r *bufio.Reader) (string, error) {
	var msg strings.Builder
	length := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if msg.Len() == 0 && line == "\r\n" {
			continue // a keep-alive
		}
		msg.WriteString(line)
		if line == "\r\n" {
			break
		}
		if name, value, ok := strings.Cut(line, ":"); ok && (strings.EqualFold(name, "Content-Length") || name == "l") {
			length, _ = strconv.Atoi(strings.TrimSpace(value))
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", err
	}
	return msg.String() + string(body), nil
}

func (ph *phone2543) send(method, cseqMethod, toTag string) {
	ph.t.Helper()
	ph.sendTo(ph.ruri, method, "1 "+cseqMethod, toTag)
}

// sendTo sends method to ruri with the CSeq and To tag given and the extra
// header lines.
func (ph *phone2543) sendTo(ruri, method, cseq, toTag string, extra ...string) {
	ph.t.Helper()
	to := "<sip:202@example.com>"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	lines := append([]string{
		method + " " + ruri + " SIP/2.0",
		ph.via,
		ph.from,
		"To: " + to,
		"Call-ID: " + ph.cid,
		"CSeq: " + cseq,
		"Max-Forwards: 70",
		"Contact: <sip:201@" + phoneIP + ">",
	}, extra...)
	msg := strings.Join(append(lines, "Content-Length: 0"), "\r\n") + "\r\n\r\n"
	if err := ph.write([]byte(msg)); err != nil {
		ph.t.Fatal(err)
	}
}

var toTagRe = regexp.MustCompile(`(?m)^To:.*;tag=([^;\s]+)`)

// await reads responses until one with code and CSeq method; every
// response read must carry the Via exactly as the phone sent it.
func (ph *phone2543) await(code int, cseqMethod string) (toTag string) {
	ph.t.Helper()
	tag, _ := ph.awaitResponse(code, "1 "+cseqMethod)
	return tag
}

func (ph *phone2543) awaitResponse(code int, cseq string) (toTag, res string) {
	ph.t.Helper()
	for {
		res, err := ph.read()
		if err != nil {
			ph.t.Fatalf("no %d to %s: %v", code, cseq, err)
		}
		vias := regexp.MustCompile(`(?m)^Via:.*$`).FindAllString(strings.ReplaceAll(res, "\r", ""), -1)
		if len(vias) != 1 || vias[0] != ph.via {
			ph.t.Fatalf("response's Via is not the phone's %q:\n%s", ph.via, res)
		}
		if strings.HasPrefix(res, "SIP/2.0 "+strconv.Itoa(code)+" ") && strings.Contains(res, "CSeq: "+cseq+"\r\n") {
			if m := toTagRe.FindStringSubmatch(res); m != nil {
				return m[1], res
			}
			return "", res
		}
	}
}

// ping waits for hapbx to answer an OPTIONS from the phone's socket: what
// the phone sent before has been read.
func (ph *phone2543) ping() {
	ph.t.Helper()
	msg := "OPTIONS sip:" + ph.to + " SIP/2.0\r\n" + ph.via + ";branch=z9hG4bKping" + ph.cid + "\r\nFrom: <sip:201@example.com>;tag=p\r\nTo: <sip:" + ph.to + ">\r\nCall-ID: ping-" + ph.cid + "\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	if err := ph.write([]byte(msg)); err != nil {
		ph.t.Fatal(err)
	}
	for {
		res, err := ph.read()
		if err != nil {
			ph.t.Fatalf("no answer to OPTIONS: %v", err)
		}
		if strings.Contains(res, "Call-ID: ping-"+ph.cid) && strings.HasPrefix(res, "SIP/2.0 200 ") {
			return
		}
	}
}

// TestRFC2543Transactions: an RFC 2543 client's INVITE (no branch, no From
// tag, RFC 4475 inv2543) is processed as RFC 3261 §17.2.3 says: sent twice,
// it reaches the backend once; the 486 comes back (again for the
// retransmission) with the Via exactly as sent; its ACK ends the
// transaction at hapbx and goes no further. The ACK of a 200 and the BYE
// reach the backend. A CANCEL of a ringing INVITE gets 200 and the INVITE
// 487, both with the Via as sent. Over UDP and over TCP (where the stream
// wrapper, conns.go, gives the branch and takes it out again).
func TestRFC2543Transactions(t *testing.T) {
	testkit.RequireSIPp(t)
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) { rfc2543Over(t, tr) })
	}
}

func rfc2543Over(t *testing.T, transport string) {
	t.Run("486 and ACK", func(t *testing.T) {
		p, backend, ph := start2543(t, transport, "uas_486.xml", "rfc2543-busy@test")
		ph.send("INVITE", "INVITE", "")
		tag := ph.await(486, "INVITE")
		if transport == "udp" { // no retransmissions over TCP (RFC 3261 §17.1.1.2)
			ph.send("INVITE", "INVITE", "")
			ph.await(486, "INVITE")
		}
		ph.send("ACK", "ACK", tag)
		ph.ping()
		ackAbsorbed(t, p, backend, ph.cid, transport, "INVITE", "ACK")
		if n := testutil.ToFloat64(p.m.requests.WithLabelValues("INVITE")); n != 1 {
			t.Errorf("hapbx handled %v INVITEs, want 1 (the retransmission matches the transaction)", n)
		}
	})
	t.Run("200, ACK and BYE", func(t *testing.T) {
		_, backend, ph := start2543(t, transport, "uas_call.xml", "rfc2543-call@test")
		// With a From tag: in-dialog requests need the dialog token, which
		// token.go binds to a non-empty tag.
		ph.from += ";tag=f2543"
		ph.send("INVITE", "INVITE", "")
		tag, ok := ph.awaitResponse(200, "1 INVITE")
		var route []string
		for _, rr := range regexp.MustCompile(`(?m)^Record-Route: (.*?)\r$`).FindAllStringSubmatch(ok, -1) {
			route = append(route, "Route: "+rr[1])
		}
		contact := regexp.MustCompile(`(?m)^Contact: <([^>]+)>`).FindStringSubmatch(ok)
		if len(route) == 0 || contact == nil {
			t.Fatalf("200 without Record-Route or Contact:\n%s", ok)
		}
		// The ACK of a 2xx is its own transaction: forwarded end to end.
		ph.sendTo(contact[1], "ACK", "1 ACK", tag, route...)
		// The BYE only once the ACK is there: hapbx forwards each on its
		// own goroutine, and SIPp wants them in order.
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(backend.Trace(), "bytes :\n\nACK "); {
			if time.Now().After(deadline) {
				t.Fatalf("the ACK of the 200 did not reach the backend:\n%s", backend.Trace())
			}
			time.Sleep(20 * time.Millisecond)
		}
		ph.sendTo(contact[1], "BYE", "2 BYE", tag, route...)
		ph.awaitResponse(200, "2 BYE")
		if code := backend.Wait(10 * time.Second); code != 0 {
			t.Errorf("SIPp backend did not get ACK and BYE (exit %d):\n%s", code, backend.Output())
		}
	})
	t.Run("CANCEL", func(t *testing.T) {
		p, backend, ph := start2543(t, transport, "uas_cancel.xml", "rfc2543-cancel@test")
		ph.send("INVITE", "INVITE", "")
		ph.await(180, "INVITE")
		ph.send("CANCEL", "CANCEL", "")
		ph.await(200, "CANCEL")
		tag := ph.await(487, "INVITE")
		ph.send("ACK", "ACK", tag)
		ph.ping()
		ackAbsorbed(t, p, backend, ph.cid, transport, "INVITE", "CANCEL", "ACK")
	})
}

// start2543 runs a SIPp backend playing scen for one call, a proxy in
// front of it and an RFC 2543 phone.
func start2543(t *testing.T, transport, scen, cid string) (*testProxy, *testkit.SIPp, *phone2543) {
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario(scen), "-trace_msg", "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p := startProxy(t, []Backend{be}, nil)
	return p, backend, newPhone2543(t, transport, p.addr, cid+"-"+transport)
}

// ackAbsorbed checks that the backend ended its call having received
// exactly want (the last ACK is hapbx's own, hop by hop) and, over UDP,
// that the phone's ACK never reached hapbx's handler. Over TCP sipgo ends
// an INVITE server transaction with its final response: the ACK reaches
// the handler, which drops it as the ACK of a non-2xx it answered (the
// synthetic branch is the INVITE's).
func ackAbsorbed(t *testing.T, p *testProxy, backend *testkit.SIPp, cid, transport string, want ...string) {
	t.Helper()
	if code := backend.Wait(10 * time.Second); code != 0 {
		t.Errorf("SIPp backend exit %d:\n%s", code, backend.Output())
	}
	if got := backendRequests(t, backend.Trace())[cid]; !slices.Equal(got, want) {
		t.Errorf("backend received %v, want %v (the last ACK hapbx's own)", got, want)
	}
	if n := testutil.ToFloat64(p.m.requests.WithLabelValues("ACK")); n != 0 && transport == "udp" {
		t.Errorf("the phone's ACK reached hapbx's handler (%v): not absorbed by the INVITE's transaction", n)
	}
}

// TestRestoreVia: what leaves hapbx loses the synthetic branch, and keeps
// the client's own.
func TestRestoreVia(t *testing.T) {
	p := sanityProxy(t)
	mark := ";branch=" + p.rfc2543
	syn := p.rfc2543 + "0123456789abcdef"
	for in, want := range map[string]string{
		"Via: SIP/2.0/UDP a;branch=" + syn + "\r\n":              "Via: SIP/2.0/UDP a\r\n",
		"Via: SIP/2.0/UDP a;branch=" + syn + ";received=b\r\n":   "Via: SIP/2.0/UDP a;received=b\r\n",
		"Via: SIP/2.0/UDP a;branch=" + syn + "390skdjuw;x\r\n":   "Via: SIP/2.0/UDP a;branch=390skdjuw;x\r\n",
		"Via: SIP/2.0/UDP a;branch=z9hG4bKmine\r\nVia: x" + mark: "Via: SIP/2.0/UDP a;branch=z9hG4bKmine\r\nVia: x",
	} {
		var w recordingConn
		r := restoreVia{PacketConn: &w, mark: []byte(mark)}
		n, err := r.WriteTo([]byte(in), nil)
		if err != nil || n != len(in) || string(w.got) != want {
			t.Errorf("WriteTo(%q) = %d, %v, wrote %q, want %q", in, n, err, w.got, want)
		}
	}
	if _, err := sip.ParseMessage([]byte("OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=" + syn + "\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
}

type recordingConn struct {
	net.PacketConn
	got []byte
}

func (c *recordingConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.got = append([]byte(nil), b...)
	return len(b), nil
}
