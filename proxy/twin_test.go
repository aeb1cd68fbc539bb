package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// A proxy dies with an INVITE in flight and its twin takes its address (the
// VIP): the phone's retransmission, forwarded by the twin, is a
// retransmission for the backend (the same branch), and the backend's
// responses to the dead proxy's request reach the phone through the twin.

var twinSecret = []byte("0123456789abcdef0123456789abcdef")

// twinPeer is a raw UDP socket playing a phone or a backend.
type twinPeer struct {
	t    *testing.T
	conn *net.UDPConn
	addr string
}

func newTwinPeer(t *testing.T, ip string) *twinPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(t, ip))))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &twinPeer{t: t, conn: c, addr: c.LocalAddr().String()}
}

func (tp *twinPeer) send(to, msg string) {
	tp.t.Helper()
	msg = strings.ReplaceAll(msg, "\r\n", "\n")
	msg = strings.ReplaceAll(msg, "\n", "\r\n")
	if _, err := tp.conn.WriteTo([]byte(msg), mustUDPAddr(tp.t, to)); err != nil {
		tp.t.Fatal(err)
	}
}

// next returns the next message received whose first line starts with
// prefix; others are skipped.
func (tp *twinPeer) next(prefix string) sip.Message {
	tp.t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_ = tp.conn.SetReadDeadline(deadline)
		n, _, err := tp.conn.ReadFrom(buf)
		if err != nil {
			tp.t.Fatalf("%s: no %q: %v", tp.addr, prefix, err)
		}
		if !bytes.HasPrefix(buf[:n], []byte(prefix)) {
			continue
		}
		m, err := sip.NewParser().ParseSIP(bytes.Clone(buf[:n]))
		if err != nil {
			tp.t.Fatalf("%s: %v", tp.addr, err)
		}
		return m
	}
}

func twinBranch(m sip.Message) string {
	b, _ := m.Via().Params.Get("branch")
	return b
}

// backendResponse is the backend's response code to the forwarded invite, addressed
// to its top Via (the proxies' shared address).
func backendResponse(invite *sip.Request, code int, branch string) (string, string) {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\n", code, map[int]string{100: "Trying", 180: "Ringing", 200: "OK", 487: "Request Terminated"}[code])
	for i, h := range invite.GetHeaders("Via") {
		v := h.Value()
		if i == 0 && branch != "" {
			v = strings.Replace(v, twinBranch(invite), branch, 1)
		}
		b.WriteString("Via: " + v + "\n")
	}
	to := invite.To().Value()
	if code > 100 {
		to += ";tag=be1"
	}
	fmt.Fprintf(&b, "From: %s\nTo: %s\nCall-ID: %s\nCSeq: %s\n", invite.From().Value(), to, invite.CallID().Value(), invite.CSeq().Value())
	body := ""
	if code == 200 {
		body = "v=0\no=- 1 1 IN IP4 127.0.2.11\ns=-\nc=IN IP4 127.0.2.11\nt=0 0\nm=audio 4000 RTP/AVP 0\n"
		fmt.Fprintf(&b, "Contact: <sip:asterisk@%s>\nContent-Type: application/sdp\n", invite.Destination())
	}
	fmt.Fprintf(&b, "Content-Length: %d\n\n%s", len(strings.ReplaceAll(body, "\n", "\r\n")), body)
	v := invite.Via()
	return b.String(), net.JoinHostPort(v.Host, strconv.Itoa(v.Port))
}

// twins runs the proxies of a pair one after the other on one address.
type twins struct {
	t    *testing.T
	be   Backend
	port int
}

// newTwins returns the pair, a phone and their backend.
func newTwins(t *testing.T) (tw *twins, phone, backend *twinPeer) {
	phone, backend = newTwinPeer(t, phoneIP), newTwinPeer(t, be1IP)
	be := Backend{Name: "asterisk1", Address: backend.addr, Transport: "udp"}
	return &twins{t: t, be: be, port: testkit.FreePort(t, proxyIP)}, phone, backend
}

func (tw *twins) addr() string { return net.JoinHostPort(proxyIP, strconv.Itoa(tw.port)) }

func (tw *twins) start(opts ...Option) *testProxy {
	return startProxyWith(tw.t, []string{"udp"}, []Backend{tw.be}, NewStaticRouter([]string{tw.be.Name}, false), func(c *Config) {
		c.Listen = []string{"udp://" + tw.addr()}
	}, append([]Option{WithDialogSecret(twinSecret)}, opts...)...)
}

// callInFlight starts the pair's first proxy and has the phone call
// through it: the INVITE the phone sent and the one the backend got.
func callInFlight(t *testing.T) (tw *twins, phone, backend *twinPeer, first *testProxy, invite string, sent *sip.Request) {
	tw, phone, backend = newTwins(t)
	first = tw.start()
	invite = twinInvite(phone, tw.addr())
	phone.send(tw.addr(), invite)
	return tw, phone, backend, first, invite, backend.next("INVITE ").(*sip.Request)
}

func twinInvite(phone *twinPeer, to string) string {
	return fmt.Sprintf(`INVITE sip:600@%s SIP/2.0
Via: SIP/2.0/UDP %s;branch=z9hG4bK-twin-%d;rport
From: <sip:201@%s>;tag=a1
To: <sip:600@%s>
Call-ID: twin-%d@test
CSeq: 1 INVITE
Contact: <sip:201@%s>
Max-Forwards: 70
Content-Length: 0

`, to, phone.addr, time.Now().UnixNano(), phone.addr, to, time.Now().UnixNano(), phone.addr)
}

// TestTwinForwardsRetransmissionWithSameBranch: the phone had no response
// when the proxy died (no 100 Trying before the backend's), so it
// retransmits; the twin sends the backend the same branch, and the
// backend's 200 to it goes up through the twin's transaction.
func TestTwinForwardsRetransmissionWithSameBranch(t *testing.T) {
	tw, phone, backend, first, invite, sent := callInFlight(t)
	first.close() // SIGKILL: the twin takes the address

	twin := tw.start()
	phone.send(tw.addr(), invite) // the phone's retransmission
	again := backend.next("INVITE ").(*sip.Request)
	if twinBranch(again) != twinBranch(sent) {
		t.Fatalf("twin forwarded the retransmission with branch %s, the dead proxy with %s: a merged request for the backend", twinBranch(again), twinBranch(sent))
	}
	res, to := backendResponse(again, 200, "")
	backend.send(to, res)
	ok := phone.next("SIP/2.0 200 ").(*sip.Response)
	if vias := viaHops(ok); len(vias) != 1 || !strings.Contains(vias[0].Value(), phone.addr) {
		t.Fatalf("200 reached the phone with Vias %v", vias)
	}
	if got := testutil.ToFloat64(twin.m.strays.WithLabelValues("forwarded")); got != 0 {
		t.Errorf("the backend's 200 went up as a stray (%v), want through the twin's client transaction", got)
	}
}

// fakeAnchor is a relay that holds the session of one call (replicated from
// the dead twin).
type fakeAnchor struct {
	mu         sync.Mutex
	callID     string
	fromCaller []bool
}

func (a *fakeAnchor) AnchorFrom(callID string, fromCaller bool, _ netip.Addr, body []byte) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fromCaller = append(a.fromCaller, fromCaller)
	return bytes.ReplaceAll(body, []byte("127.0.2.11"), []byte(proxyIP)), nil
}

func (a *fakeAnchor) Release(string, string) error { return nil }
func (a *fakeAnchor) SetCallerTag(string, string)  {}

func (a *fakeAnchor) CallerTag(callID string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return "a1", callID == a.callID
}

// TestTwinForwardsStrayResponses: the phone had the backend's 100 Trying
// from the proxy that died, so it no longer retransmits; the backend's 200
// reaches the twin, which has no transaction for it and forwards its
// retransmission statelessly (the first copy is held), its SDP anchored on the session replicated from the dead
// proxy. A response whose branch the pair did not make is dropped, and so
// are a 487 (the caller has its 487 from hapbx itself), a provisional and
// a 2xx to a REGISTER.
func TestTwinForwardsStrayResponses(t *testing.T) {
	tw, phone, backend, first, _, sent := callInFlight(t)
	trying, to := backendResponse(sent, 100, "")
	backend.send(to, trying)
	phone.next("SIP/2.0 100 ") // the backend has the INVITE: the phone stops retransmitting
	first.close()

	anchor := &fakeAnchor{callID: sent.CallID().Value()}
	twin := tw.start(WithMediaAnchor(anchor))
	b := twinBranch(sent)
	flip := "0"
	if strings.HasSuffix(b, "0") {
		flip = "1"
	}
	forged, _ := backendResponse(sent, 200, b[:len(b)-1]+flip) // a stranger's guess
	backend.send(to, forged)
	testkit.Eventually(t, 5*time.Second, "forged 200 dropped", func() bool {
		return testutil.ToFloat64(twin.m.strays.WithLabelValues("dropped")) == 1
	})
	for i, code := range []int{487, 180} {
		res, _ := backendResponse(sent, code, "") // a 487: chan_sip's, to a BYE that overtook the ACK of its 200
		backend.send(to, res)
		testkit.Eventually(t, 5*time.Second, fmt.Sprintf("stray %d dropped", code), func() bool {
			return testutil.ToFloat64(twin.m.strays.WithLabelValues("dropped")) == float64(2+i)
		})
	}
	// A stray 2xx to a REGISTER is never forwarded, not even its
	// retransmission: its binding was not stored (issue 13.3).
	reg, _ := backendResponse(sent, 200, "")
	reg = strings.Replace(reg, "CSeq: "+sent.CSeq().Value(), fmt.Sprintf("CSeq: %d REGISTER", sent.CSeq().SeqNo), 1)
	for i := range 2 {
		backend.send(to, reg)
		testkit.Eventually(t, 5*time.Second, "stray 200 to a REGISTER dropped", func() bool {
			return testutil.ToFloat64(twin.m.strays.WithLabelValues("dropped")) == float64(4+i)
		})
	}
	ok, _ := backendResponse(sent, 200, "")
	backend.send(to, ok)
	testkit.Eventually(t, 5*time.Second, "first copy of the stray 200 held", func() bool {
		return testutil.ToFloat64(twin.m.strays.WithLabelValues("held")) == 1
	})
	backend.send(to, ok) // the backend's retransmission: no ACK came
	got := phone.next("SIP/2.0 200 ").(*sip.Response)
	if vias := viaHops(got); len(vias) != 1 || !strings.Contains(vias[0].Value(), phone.addr) {
		t.Fatalf("stray 200 reached the phone with Vias %v", vias)
	}
	if !bytes.Contains(got.Body(), []byte("c=IN IP4 "+proxyIP)) {
		t.Errorf("stray 200's SDP not anchored:\n%s", got.Body())
	}
	// Counted once the write returned, which may be after the phone read it.
	testkit.Eventually(t, 5*time.Second, "hapbx_proxy_stray_responses_total{outcome=forwarded} = 1", func() bool {
		return testutil.ToFloat64(twin.m.strays.WithLabelValues("forwarded")) == 1
	})
	anchor.mu.Lock()
	defer anchor.mu.Unlock()
	if len(anchor.fromCaller) != 1 || anchor.fromCaller[0] {
		t.Errorf("anchored as fromCaller %v, want one answer from the callee", anchor.fromCaller)
	}
}
