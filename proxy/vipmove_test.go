package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
)

// A proxy that joined the calls of a dead PBX loses the VIP while alive
// (a stall, a partition, `hapbx standby`): the twin answers for the calls
// from then on, and the proxy, should it take the VIP back, acts on what
// the twin left.

// twinRelayIP is the second relay's address: on one host the twins' relays
// cannot share the VIP.
const twinRelayIP = "127.0.2.3"

// pipe delivers what one proxy of a pair sends to the other's apply, in
// order and asynchronously, as the cluster does.
func pipe(t *testing.T, apply func([][]byte)) func([]byte) error {
	ch, stop := make(chan []byte, 4096), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case b := <-ch:
				apply([][]byte{b})
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func(b []byte) error {
		select {
		case ch <- b:
		case <-stop:
		}
		return nil
	}
}

// vipPair is proxies A and B of a pair with their relays, replicating
// dialogs both ways and media from A to B (so that only dialog records
// tell A of the calls B ends), with a phone on each side of the calls.
type vipPair struct {
	a, b         *testProxy
	ra, rb       *media.Relay
	holdA, holdB atomic.Bool
	pbx          Backend
	caller       *vipPhone // in the calls to the PBX (leg A of each)
	callee       *vipPhone // in the calls the PBX placed (leg B of each)
}

func newVIPPair(t *testing.T) *vipPair {
	pr := &vipPair{caller: newVIPPhone(t), callee: newVIPPhone(t)}
	pr.pbx, _ = backendOn(t, "asterisk1", be1IP, "udp")
	pr.ra = startRelay(t, "35100-35163", prometheus.NewRegistry())
	mc := media.DefaultConfig()
	mc.Enabled, mc.Address, mc.Ports = true, twinRelayIP, "35100-35163"
	rb, err := media.New(mc, quietInBenchmarks(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, rb.Run)
	pr.rb = rb
	start := func(r *media.Relay) *testProxy {
		return startProxyWith(t, []string{"udp"}, []Backend{pr.pbx}, NewStaticRouter([]string{pr.pbx.Name}, false), nil,
			WithMediaAnchor(r), WithDialogSecret(twinSecret))
	}
	pr.a, pr.b = start(pr.ra), start(pr.rb)
	pr.holdA.Store(true)
	pr.ra.StateChanges(pipe(t, pr.rb.ApplyState), pr.holdA.Load)
	pr.rb.StateChanges(func([]byte) error { return nil }, pr.holdB.Load)
	pr.a.DialogReplica().StateChanges(pipe(t, pr.b.DialogReplica().ApplyState), pr.holdA.Load)
	pr.b.DialogReplica().StateChanges(pipe(t, pr.a.DialogReplica().ApplyState), pr.holdB.Load)
	testkit.Run(t, pr.a.DialogReplica().Run)
	testkit.Run(t, pr.b.DialogReplica().Run)
	return pr
}

// bridged is a call through A and the PBX bridging the caller's call (x)
// to the callee's (y): the state A has once both are answered.
type bridged struct{ x, y string }

// call sets up on A the calls of bridged pair n, as A sees them once the
// PBX answered the caller and the callee answered the PBX; the PBX is the
// callee's RFC 4028 refresher (2 s), so hapbx refreshes the callee when
// the PBX is gone.
func (pr *vipPair) call(t *testing.T, n int) bridged {
	t.Helper()
	c := bridged{x: fmt.Sprintf("x%d@vip", n), y: fmt.Sprintf("y%d@vip", n)}
	a := pr.a
	a.links.link(c.y, c.x) // X-Hapbx-Bridge on the PBX's INVITE
	inv := vipMessage(t, fmt.Sprintf(`INVITE sip:600@%s SIP/2.0
Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s;rport
From: <sip:201@%s>;tag=%s
To: <sip:600@%s>
Call-ID: %s
CSeq: 1 INVITE
Contact: <sip:201@%s>
Max-Forwards: 70
Content-Length: 0

`, a.addr, pr.caller.addr, c.x, phoneIP, phoneTag(c.x), proxyIP, c.x, pr.caller.addr)).(*sip.Request)
	inv.SetSource(pr.caller.addr)
	inv.SetTransport("UDP")
	res := sip.NewResponseFromRequest(inv, 200, "OK", nil)
	res.To().Params.Add("tag", pbxTag(c.x))
	res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "asterisk", Host: be1IP, Port: portOf(pr.pbx.Address)}})
	a.dialogs.confirm(inv, res, pr.pbx.Name, a.isLocal)

	out := vipMessage(t, fmt.Sprintf(`INVITE sip:202@%s SIP/2.0
Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s
From: <sip:600@%s>;tag=%s
To: <sip:202@%s>
Call-ID: %s
CSeq: 10 INVITE
Contact: <sip:asterisk@%s>
Max-Forwards: 70
Content-Length: 0

`, pr.callee.addr, pr.pbx.Address, c.y, be1IP, pbxTag(c.y), phoneIP, c.y, pr.pbx.Address)).(*sip.Request)
	out.SetSource(pr.pbx.Address)
	ok := sip.NewResponseFromRequest(out, 200, "OK", nil)
	ok.To().Params.Add("tag", phoneTag(c.y))
	ok.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "202", Host: phoneIP, Port: portOf(pr.callee.addr)}})
	ok.AppendHeader(sip.NewHeader("Session-Expires", "2;refresher=uac"))
	a.dialogs.confirmInbound(out, ok, pr.pbx.Name, pr.callee.addr, "udp", a.isLocal)

	// The relay anchored both calls: the caller and the callee talk PCMA
	// with the PBX.
	phone, pbx := netip.MustParseAddr(phoneIP), netip.MustParseAddr(be1IP)
	for _, s := range []struct {
		callID     string
		fromCaller bool
		signal     netip.Addr
		sdp        string
	}{{c.x, true, phone, vipSDP(phoneIP, 40000+4*n)}, {c.x, false, pbx, vipSDP(be1IP, 41000+4*n)},
		{c.y, true, pbx, vipSDP(be1IP, 41002+4*n)}, {c.y, false, phone, vipSDP(phoneIP, 40002+4*n)}} {
		if _, err := pr.ra.AnchorFrom(s.callID, s.fromCaller, s.signal, []byte(s.sdp)); err != nil {
			t.Fatalf("anchor %s: %v", s.callID, err)
		}
	}
	return c
}

// phoneTag and pbxTag are the tags of a call's phone and PBX sides.
func phoneTag(callID string) string { return "ph-" + strings.TrimSuffix(callID, "@vip") }
func pbxTag(callID string) string   { return "pbx-" + strings.TrimSuffix(callID, "@vip") }

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

func vipSDP(ip string, port int) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n", ip, ip, port)
}

func vipMessage(t *testing.T, msg string) sip.Message {
	t.Helper()
	m, err := sip.NewParser().ParseSIP([]byte(strings.ReplaceAll(msg, "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// vipPhone is a phone's UDP socket: it answers every request 200 and
// reports it, and checks that the requests of each call come in CSeq
// order, whichever proxy sends them (RFC 3261 §12.2.2: a phone refuses a
// lower one).
type vipPhone struct {
	*twinPeer
	reqs  chan phoneRequest
	resps chan *sip.Response

	mu   sync.Mutex
	cseq map[string]uint32
	errs []string
}

// phoneRequest is a request a phone received, and the port of the proxy
// that sent it (its top Via).
type phoneRequest struct {
	method sip.RequestMethod
	callID string
	cseq   uint32
	port   int
}

func newVIPPhone(t *testing.T) *vipPhone {
	ph := &vipPhone{twinPeer: newTwinPeer(t, phoneIP), reqs: make(chan phoneRequest, 256), resps: make(chan *sip.Response, 256), cseq: map[string]uint32{}}
	go ph.serve()
	return ph
}

func (ph *vipPhone) serve() {
	buf := make([]byte, 65535)
	for {
		n, from, err := ph.conn.ReadFrom(buf)
		if err != nil {
			return // closed at the test's end
		}
		m, err := sip.NewParser().ParseSIP(bytes.Clone(buf[:n]))
		if err != nil {
			continue
		}
		switch m := m.(type) {
		case *sip.Response:
			ph.resps <- m
		case *sip.Request:
			if m.IsAck() {
				continue
			}
			seq := m.CSeq().SeqNo
			ph.mu.Lock()
			last, seen := ph.cseq[m.CallID().Value()]
			if seen && seq < last {
				ph.errs = append(ph.errs, fmt.Sprintf("%s of %s with CSeq %d after %d", m.Method, m.CallID().Value(), seq, last))
			}
			ph.cseq[m.CallID().Value()] = max(last, seq)
			ph.mu.Unlock()
			_, _ = ph.conn.WriteTo([]byte(sip.NewResponseFromRequest(m, 200, "OK", nil).String()), from)
			ph.reqs <- phoneRequest{method: m.Method, callID: m.CallID().Value(), cseq: seq, port: m.Via().Port}
		}
	}
}

// next is the next request the phone received.
func (ph *vipPhone) next(t *testing.T) phoneRequest {
	t.Helper()
	select {
	case r := <-ph.reqs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("phone %s: no request", ph.addr)
		return phoneRequest{}
	}
}

// drain forgets the requests received so far.
func (ph *vipPhone) drain() {
	for {
		select {
		case <-ph.reqs:
		default:
			return
		}
	}
}

func (ph *vipPhone) check(t *testing.T) {
	t.Helper()
	ph.mu.Lock()
	defer ph.mu.Unlock()
	for _, e := range ph.errs {
		t.Errorf("phone %s: %s", ph.addr, e)
	}
}

// request sends an in-dialog request of the caller's call x (From the
// caller) to proxy p, as the caller's route set has it, and returns the
// final response (a 2xx to an INVITE is ACKed).
func (pr *vipPair) request(t *testing.T, p *testProxy, method sip.RequestMethod, x string, cseq int, sdp string) *sip.Response {
	t.Helper()
	pr.caller.send(p.addr, pr.inDialog(p, method, x, cseq, sdp))
	deadline := time.After(10 * time.Second)
	for {
		select {
		case res := <-pr.caller.resps:
			if res.CallID().Value() != x || res.CSeq().SeqNo != uint32(cseq) || res.StatusCode < 200 {
				continue
			}
			if method == sip.INVITE && res.StatusCode == 200 {
				pr.caller.send(p.addr, pr.inDialog(p, sip.ACK, x, cseq, ""))
			}
			return res
		case <-deadline:
			t.Fatalf("%s of %s to %s: no final response", method, x, p.addr)
			return nil
		}
	}
}

// inDialog is the caller's request in call x to proxy p.
func (pr *vipPair) inDialog(p *testProxy, method sip.RequestMethod, x string, cseq int, sdp string) string {
	tok := p.dialogToken(x, phoneTag(x), pr.pbx.Name) // both proxies of the pair share twinSecret
	ctype := ""
	if sdp != "" {
		ctype = "Content-Type: application/sdp\n"
	}
	return fmt.Sprintf(`%s sip:asterisk@%s SIP/2.0
Via: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d-%d;rport
Route: <sip:%s;lr;hpxd=%s>
From: <sip:201@%s>;tag=%s
To: <sip:600@%s>;tag=%s
Call-ID: %s
CSeq: %d %s
Contact: <sip:201@%s>
Max-Forwards: 70
%sContent-Length: %d

`, method, pr.pbx.Address, pr.caller.addr, x, cseq, time.Now().UnixNano(), p.addr, tok, phoneIP, phoneTag(x), proxyIP, pbxTag(x), x, cseq, method, pr.caller.addr, ctype, len(sdp)) + sdp
}

// hangUp has the caller of c hang up through p (the VIP holder): p
// answers, and the callee gets the BYE from p and nothing from the other.
func (pr *vipPair) hangUp(t *testing.T, p *testProxy, c bridged, cseq int) {
	t.Helper()
	if res := pr.request(t, p, sip.BYE, c.x, cseq, ""); res.StatusCode != 200 {
		t.Fatalf("BYE of %s through %s: %d", c.x, p.addr, res.StatusCode)
	}
	for {
		r := pr.callee.next(t)
		if r.port != p.port {
			t.Fatalf("callee got %s of %s from port %d, not from the VIP holder (%d)", r.method, r.callID, r.port, p.port)
		}
		if r.method == sip.BYE {
			if r.callID != c.y {
				t.Fatalf("BYE of %s, want %s", r.callID, c.y)
			}
			return
		}
	}
}

// TestJoinedCallsFollowTheVIP: A joined two calls of a dead PBX and
// refreshes their callee's session for it; A loses the VIP to B: A stops
// (no refresh, no BYE from A while B refreshes), B answers for both; the
// caller of the first hangs up through B; A learns it from B's records
// (dialogs and relay join released) and, taking the VIP back, does not
// revive that call but answers for the second again (hold answered from
// its relay, the callee's session refreshed in CSeq order after B's, the
// hang-up passed on), while B, parked, lets the second call go when it
// ends on A.
func TestJoinedCallsFollowTheVIP(t *testing.T) {
	pr := newVIPPair(t)
	a, b := pr.a, pr.b
	c1, c2 := pr.call(t, 1), pr.call(t, 2)
	testkit.Eventually(t, 10*time.Second, "B has A's dialogs and media sessions", func() bool {
		_, ok1 := pr.rb.Record(c2.y)
		other, ok2 := b.links.partner(c2.y)
		return b.dialogs.len() == 4 && ok1 && ok2 && other == c2.x
	})

	// The PBX dies: A joins the calls, B (standby) notes the death.
	if n := b.HangUpBackend(pr.pbx.Name, HangUpReasonBackendDown); n != 0 {
		t.Fatalf("standby hung up %d dialogs", n)
	}
	if n := a.HangUpBackend(pr.pbx.Name, HangUpReasonBackendDown); n != 0 || a.takeovers.len() != 4 {
		t.Fatalf("A hung up %d dialogs and joined %d legs, want 0 and 4", n, a.takeovers.len())
	}
	for seen := map[string]bool{}; len(seen) < 2; {
		r := pr.callee.next(t)
		if r.method != sip.UPDATE || r.port != a.port {
			t.Fatalf("callee got %s of %s from port %d, want A's (%d) session refresh", r.method, r.callID, r.port, a.port)
		}
		seen[r.callID] = true
	}

	// The VIP moves to B with A alive, right after A refreshed both
	// sessions (their timers run in step: the next fire is a second away).
	pr.holdA.Store(false)
	pr.holdB.Store(true)
	testkit.Eventually(t, 10*time.Second, "B answers for the joined calls", func() bool { return b.takeovers.len() == 4 })
	pr.callee.drain()
	pr.caller.drain()
	for refreshes := map[string]int{}; refreshes[c1.y] < 2 || refreshes[c2.y] < 2; {
		r := pr.callee.next(t)
		if r.port != b.port {
			t.Fatalf("callee got %s of %s (CSeq %d) from A after it lost the VIP", r.method, r.callID, r.cseq)
		}
		if r.method != sip.UPDATE {
			t.Fatalf("callee got %s of %s from B, want session refreshes", r.method, r.callID)
		}
		refreshes[r.callID]++
	}
	testkit.Eventually(t, 5*time.Second, "A parked the joined calls", func() bool { return a.takeovers.len() == 0 && a.dialogs.len() == 4 })
	select {
	case r := <-pr.caller.reqs:
		t.Fatalf("caller got %s of %s from port %d", r.method, r.callID, r.port)
	default:
	}

	// The first call's caller hangs up: B answers and passes it on.
	pr.hangUp(t, b, c1, 2)
	testkit.Eventually(t, 10*time.Second, "A's replica of the first call released", func() bool {
		_, joined := pr.ra.Joined(c1.x)
		_, kept := pr.ra.Record(c1.y)
		return a.dialogs.len() == 2 && a.dialogs.onBackend(c1.x, pr.pbx.Name) == nil && !joined && !kept
	})

	// A takes the VIP back, right after B refreshed the callee's session
	// (so no refresh of B's is under way: the next is a second away).
	pr.callee.drain()
	for {
		if r := pr.callee.next(t); r.method == sip.UPDATE && r.callID == c2.y && r.port == b.port {
			break
		}
	}
	pr.holdB.Store(false)
	pr.holdA.Store(true)
	testkit.Eventually(t, 10*time.Second, "A answers for the second call again, B parked it", func() bool {
		return a.takeovers.len() == 2 && b.takeovers.len() == 0
	})
	if a.takeovers.get(c1.x) != nil || a.takeovers.get(c1.y) != nil {
		t.Fatal("A revived the call B ended")
	}
	if got := testutil.ToFloat64(a.dialogs.ended.WithLabelValues(HangUpReasonBackendDown)); got != 0 {
		t.Errorf("A hung up %v dialogs on taking the VIP back, want 0", got)
	}
	if got := testutil.ToFloat64(a.takeovers.refuse.WithLabelValues("media")); got != 0 {
		t.Errorf("A refused %v joins, want 0", got)
	}
	pr.callee.drain()
	res := pr.request(t, a, sip.INVITE, c2.x, 3, strings.Replace(vipSDP(phoneIP, 40008), "PCMA/8000\r\n", "PCMA/8000\r\na=sendonly\r\n", 1))
	if res.StatusCode != 200 || !bytes.Contains(res.Body(), []byte("a=recvonly")) {
		t.Fatalf("hold through A: %d\n%s", res.StatusCode, res.Body())
	}
	if r := pr.callee.next(t); r.method != sip.UPDATE || r.callID != c2.y || r.port != a.port {
		t.Fatalf("callee got %s of %s from port %d, want A's (%d) refresh of %s", r.method, r.callID, r.port, a.port, c2.y)
	}
	pr.hangUp(t, a, c2, 4)
	testkit.Eventually(t, 10*time.Second, "B's parked second call released", func() bool {
		_, joined := pr.rb.Joined(c2.x)
		return b.dialogs.len() == 0 && !joined
	})
	pr.caller.check(t)
	pr.callee.check(t)
}

// TestJoinedCallTakesTheTwinsRecords: records of the twin reach a proxy
// answering for a joined call (both held the VIP for a moment, or they
// were sent before it took the VIP back): a newer record of a joined
// dialog raises the CSeq hapbx refreshes the phone with, and is not
// tracked as a second dialog; a released one ends the call here without a
// BYE from this proxy (the twin sent them) and releases its relay join.
func TestJoinedCallTakesTheTwinsRecords(t *testing.T) {
	pr := newVIPPair(t)
	a, b := pr.a, pr.b
	c := pr.call(t, 1)
	testkit.Eventually(t, 10*time.Second, "B has A's dialogs", func() bool { return b.dialogs.len() == 2 })
	if n := a.HangUpBackend(pr.pbx.Name, HangUpReasonBackendDown); n != 0 || a.takeovers.len() != 2 {
		t.Fatalf("A hung up %d dialogs and joined %d legs, want 0 and 2", n, a.takeovers.len())
	}
	twinRecord := func(callID string, released bool, change func(*dialogRecord)) [][]byte {
		d := b.dialogs.onBackend(callID, pr.pbx.Name)
		if d == nil {
			t.Fatalf("B has no dialog of %s", callID)
		}
		rec := b.DialogReplica().record(d, released)
		if change != nil {
			change(&rec)
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		return [][]byte{raw}
	}
	a.DialogReplica().ApplyState(twinRecord(c.y, false, func(r *dialogRecord) { r.CSeq = 100 }))
	if n := a.dialogs.len(); n != 0 {
		t.Fatalf("A tracks %d dialogs besides its joined call, want 0", n)
	}
	for i := 0; ; i++ {
		r := pr.callee.next(t)
		if r.method != sip.UPDATE || r.port != a.port || i == 3 {
			t.Fatalf("callee got %s of %s from port %d (CSeq %d), want A's refresh above the twin's CSeq 100", r.method, r.callID, r.port, r.cseq)
		}
		if r.cseq > 100 {
			break // earlier ones were sent before the record came
		}
	}
	a.DialogReplica().ApplyState(twinRecord(c.x, true, nil))
	if n := a.takeovers.len(); n != 0 {
		t.Fatalf("A still answers for %d legs of the call the twin ended", n)
	}
	for _, id := range []string{c.x, c.y} {
		if _, ok := pr.ra.Record(id); ok {
			t.Errorf("A's relay kept the session of %s", id)
		}
	}
	for _, reason := range []string{joinEndBye, joinEndExpired} {
		if got := testutil.ToFloat64(a.takeovers.ended.WithLabelValues(reason)); got != 0 {
			t.Errorf("A ended %v joined calls (%s) itself, want 0: the twin did", got, reason)
		}
	}
	pr.callee.check(t)
}
