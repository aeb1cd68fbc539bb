package media

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

// portBase gives each test its own relay port range so parallel packages
// and leftover sockets do not collide.
func newTestRelay(t *testing.T, ports string, mod func(*Config)) (*Relay, *prometheus.Registry) {
	t.Helper()
	return newRelayAt(t, ports, mod, time.Now)
}

func newRelayAt(t *testing.T, ports string, mod func(*Config), now func() time.Time) (*Relay, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Enabled = true
	cfg.Address = "127.0.0.1"
	cfg.Ports = ports
	cfg.Workers = 2
	cfg.Datapath = DatapathUser // kernel_test.go tests the kernel path, in namespaces of its own
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	r, err := newWithClock(cfg, zaptest.NewLogger(t), reg, now)
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	t.Cleanup(r.Close)
	return r, reg
}

// fakeClock is a settable clock for the relay; its data-path workers and
// sweeper read it from their own goroutines.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newClockedRelay is newTestRelay on a fake clock: the test moves time on
// and runs the sweep itself (r.sweepOnce) instead of waiting for timers.
func newClockedRelay(t *testing.T, ports string, mod func(*Config)) (*Relay, *prometheus.Registry, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Now()}
	r, reg := newRelayAt(t, ports, mod, clk.now)
	return r, reg, clk
}

// phone is a real UDP peer on a loopback address.
type phone struct {
	t    *testing.T
	conn *net.UDPConn
	seq  uint16
	ts   uint32
	ssrc uint32
}

func newPhone(t *testing.T, ip string) *phone {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatalf("listen %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return &phone{t: t, conn: c, ssrc: uint32(time.Now().UnixNano())}
}

func (p *phone) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func rtpPacket(seq uint16, ts, ssrc uint32, payload int) []byte {
	b := make([]byte, 12+payload)
	b[0], b[1] = 0x80, 8
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return b
}

func (p *phone) sendRTP(to netip.AddrPort) {
	p.t.Helper()
	p.seq++
	p.ts += 160
	if _, err := p.conn.WriteToUDPAddrPort(rtpPacket(p.seq, p.ts, p.ssrc, 160), to); err != nil {
		p.t.Fatal(err)
	}
}

// recv waits up to d for a datagram and returns its source; ok false on timeout.
func (p *phone) recv(d time.Duration) (netip.AddrPort, []byte, bool) {
	buf := make([]byte, 2048)
	_ = p.conn.SetReadDeadline(time.Now().Add(d))
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return netip.AddrPort{}, nil, false
	}
	return from, buf[:n], true
}

// expectFrom sends from src to dst until dstPhone gets a packet (the relay
// may need a moment to register the socket) and checks the source.
func mustRelay(t *testing.T, src *phone, to netip.AddrPort, dst *phone, wantFrom netip.AddrPort) {
	t.Helper()
	for range 20 {
		src.sendRTP(to)
		if from, _, ok := dst.recv(100 * time.Millisecond); ok {
			if from != wantFrom {
				t.Fatalf("packet arrived from %s, want relay %s", from, wantFrom)
			}
			return
		}
	}
	t.Fatalf("no packet relayed from %s via %s to %s", src.addr(), to, dst.addr())
}

func mustNotReceive(t *testing.T, p *phone, d time.Duration) {
	t.Helper()
	if from, _, ok := p.recv(d); ok {
		t.Fatalf("%s unexpectedly received a packet from %s", p.addr(), from)
	}
}

func offer(ap netip.AddrPort, extra string) []byte {
	return []byte(fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n%s",
		ap.Addr(), ap.Addr(), ap.Port(), extra))
}

var mPort = regexp.MustCompile(`m=audio (\d+) `)

func sdpPort(t *testing.T, body []byte) uint16 {
	t.Helper()
	m := mPort.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no m=audio in %q", body)
	}
	p, _ := strconv.Atoi(string(m[1]))
	return uint16(p)
}

func relayAP(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

func TestRelayBothWaysNATLatchAndStranger(t *testing.T) {
	r, reg := newTestRelay(t, "31000-31099", nil)
	a := newPhone(t, "127.0.0.2") // behind NAT: its SDP names another address
	b := newPhone(t, "127.0.0.3")
	stranger := newPhone(t, "127.0.0.4")

	// A's INVITE came from 127.0.0.2, its NAT's public address.
	offerOut, err := r.AnchorFrom("call-1", true, a.addr().Addr(), offer(netip.MustParseAddrPort("10.9.9.9:4000"), ""))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(offerOut), "10.9.9.9") || !strings.Contains(string(offerOut), "c=IN IP4 127.0.0.1") {
		t.Fatalf("offer not rewritten to the relay only:\n%s", offerOut)
	}
	answerOut, err := r.Anchor("call-1", false, offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(answerOut), "127.0.0.3") {
		t.Fatalf("answer leaks B's address:\n%s", answerOut)
	}
	relayForB := relayAP(sdpPort(t, offerOut))  // B sends here
	relayForA := relayAP(sdpPort(t, answerOut)) // A sends here
	if relayForA == relayForB {
		t.Fatalf("both legs got port %s", relayForA)
	}

	// A -> B; A's real source (127.0.0.2) latches, not the SDP's 10.9.9.9.
	mustRelay(t, a, relayForA, b, relayForB)
	// B -> A arrives at A's real address.
	mustRelay(t, b, relayForB, a, relayForA)

	// A stranger sending to A's relay port is ignored and counted.
	for range 5 {
		stranger.sendRTP(relayForA)
	}
	mustNotReceive(t, b, 200*time.Millisecond)
	mustNotReceive(t, stranger, 50*time.Millisecond)
	// Non-RTP bytes from the latched phone are dropped too.
	if _, err := a.conn.WriteToUDPAddrPort([]byte("hello, not rtp"), relayForA); err != nil {
		t.Fatal(err)
	}
	mustNotReceive(t, b, 200*time.Millisecond)
	// The genuine phone still gets through.
	mustRelay(t, a, relayForA, b, relayForB)

	snap := r.Snapshot()
	if len(snap) != 1 || len(snap[0].Streams) != 1 {
		t.Fatalf("snapshot: %+v", snap)
	}
	fa := snap[0].Streams[0].FromA
	if fa.Stranger != 5 || fa.Invalid != 1 || fa.Latched != a.addr() || fa.Packets < 2 {
		t.Fatalf("from A status = %+v; want 5 stranger, 1 invalid, latched %s", fa, a.addr())
	}
	if got := metricValue(t, reg, "hapbx_media_dropped_total", "stranger"); got != 5 {
		t.Fatalf("hapbx_media_dropped_total{reason=stranger} = %v, want 5", got)
	}
	if snap[0].State != StateAnswered {
		t.Fatalf("state %q", snap[0].State)
	}
	if err := r.Release("call-1", "bye"); err != nil {
		t.Fatal(err)
	}
	a.sendRTP(relayForA)
	mustNotReceive(t, b, 200*time.Millisecond)
	if err := r.Release("call-1", "bye"); !errors.Is(err, ErrNoSession) {
		t.Fatalf("second release: %v, want ErrNoSession", err)
	}
}

// metricValue returns the sample of name whose first label is label ("" for none).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if len(m.Label) == 0 && label == "" || len(m.Label) > 0 && m.Label[0].GetValue() == label {
				v := m.GetCounter().GetValue()
				if m.Gauge != nil {
					v = m.GetGauge().GetValue()
				}
				return v
			}
		}
	}
	t.Fatalf("metric %s{%s} not found", name, label)
	return 0
}

func TestRelayIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	r, reg, clk := newClockedRelay(t, "31100-31199", func(c *Config) { c.IdleTimeout = idle })
	if _, err := r.Anchor("idle", true, offer(netip.MustParseAddrPort("127.0.0.2:4000"), "")); err != nil {
		t.Fatal(err)
	}
	// Ringing without early media is not idle: the callee has the offer's ports.
	clk.advance(700 * time.Millisecond)
	r.sweepOnce()
	if len(r.Snapshot()) != 1 {
		t.Fatal("unanswered session ended by idle_timeout")
	}
	if _, err := r.Anchor("idle", false, offer(netip.MustParseAddrPort("127.0.0.3:4000"), "")); err != nil {
		t.Fatal(err)
	}
	clk.advance(idle)
	r.sweepOnce()
	if len(r.Snapshot()) != 1 {
		t.Fatal("session ended before idle_timeout")
	}
	clk.advance(time.Millisecond)
	r.sweepOnce()
	if len(r.Snapshot()) != 0 {
		t.Fatal("idle session still present after idle_timeout")
	}
	if got := metricValue(t, reg, "hapbx_media_idle_timeouts_total", ""); got != 1 {
		t.Fatalf("idle timeouts = %v", got)
	}
	if n := r.pool.free(); n != r.pool.size() {
		t.Fatalf("%d of %d port pairs free after idle release", n, r.pool.size())
	}
}

func TestRelayActiveSessionNotIdle(t *testing.T) {
	r, _, clk := newClockedRelay(t, "31200-31299", func(c *Config) { c.IdleTimeout = 600 * time.Millisecond })
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, _ := r.Anchor("busy", true, offer(a.addr(), ""))
	ans, _ := r.Anchor("busy", false, offer(b.addr(), ""))
	for range 30 { // 1.5 s of media, more than two idle timeouts long
		mustRelay(t, a, relayAP(sdpPort(t, ans)), b, relayAP(sdpPort(t, o)))
		clk.advance(50 * time.Millisecond)
		r.sweepOnce()
	}
	if len(r.Snapshot()) != 1 {
		t.Fatal("session with media flowing was ended as idle")
	}
}

func TestRelayReinviteHoldResumeKeepsPorts(t *testing.T) {
	r, _ := newTestRelay(t, "31300-31399", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o1, _ := r.Anchor("hold", true, offer(a.addr(), ""))
	ans1, _ := r.Anchor("hold", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans1)), relayAP(sdpPort(t, o1))
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	free := r.pool.free()

	// B holds with a=sendonly (re-INVITE from B), then RFC 2543 style with c=0.0.0.0.
	h, err := r.Anchor("hold", false, offer(b.addr(), "a=sendonly\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if relayAP(sdpPort(t, h)) != forA || !strings.Contains(string(h), "a=sendonly") {
		t.Fatalf("hold changed the port or lost the direction:\n%s", h)
	}
	h0, err := r.Anchor("hold", false, offer(netip.MustParseAddrPort("0.0.0.0:"+strconv.Itoa(int(b.addr().Port()))), "a=inactive\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(h0), "c=IN IP4 0.0.0.0") {
		t.Fatalf("c=0.0.0.0 hold not passed on:\n%s", h0)
	}
	if r.pool.free() != free {
		t.Fatalf("hold changed free port pairs %d -> %d", free, r.pool.free())
	}
	// Resume from a new port of B: the relay must follow the new SDP endpoint.
	b2 := newPhone(t, "127.0.0.3")
	res, err := r.Anchor("hold", false, offer(b2.addr(), "a=sendrecv\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if relayAP(sdpPort(t, res)) != forA {
		t.Fatal("resume changed the relay port")
	}
	mustRelay(t, a, forA, b2, forB)
	mustRelay(t, b2, forB, a, forA)
	// The old B socket is no longer latched: it is a stranger now.
	b.sendRTP(forB)
	mustNotReceive(t, a, 200*time.Millisecond)
	// A codec change from A (PCMU only) keeps ports and passes codecs as they are.
	cc, err := r.Anchor("hold", true, []byte(strings.Replace(string(offer(a.addr(), "")), "RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000", "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if relayAP(sdpPort(t, cc)) != forB || !strings.Contains(string(cc), "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000") || r.pool.free() != free {
		t.Fatalf("codec change re-INVITE mangled:\n%s", cc)
	}
	mustRelay(t, a, forA, b2, forB)
	// A re-INVITE from A with the same SDP keeps everything.
	o2, _ := r.Anchor("hold", true, offer(a.addr(), ""))
	if relayAP(sdpPort(t, o2)) != forB || r.pool.free() != free {
		t.Fatal("identical re-INVITE changed ports")
	}
	mustRelay(t, b2, forB, a, forA)
}

func TestRelayRelatchAfterSilence(t *testing.T) {
	r, _, clk := newClockedRelay(t, "31400-31499", func(c *Config) { c.RelatchAfter = 300 * time.Millisecond })
	// a2 is A after a NAT rebinding: same address, another port.
	a, a2, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, _ := r.Anchor("roam", true, offer(a.addr(), ""))
	ans, _ := r.Anchor("roam", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	a2.sendRTP(forA) // latched source just spoke: a2 is a stranger
	mustNotReceive(t, b, 150*time.Millisecond)
	clk.advance(400 * time.Millisecond) // a silent longer than relatch_after
	mustRelay(t, a2, forA, b, forB)
	mustRelay(t, b, forB, a2, forA) // B's media now goes to the new source
	// Another address never takes the leg, not even after the silence: A's
	// SDP and signalling named 127.0.0.2 only.
	time.Sleep(400 * time.Millisecond)
	mustBeStranger(t, r, newPhone(t, "127.0.0.5"), forA, b, forB, a2, 2)
}

func TestRelayPortExhaustion(t *testing.T) {
	// 31500-31503: two pairs, exactly one session with one stream.
	r, reg := newTestRelay(t, "31500-31503", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, err := r.Anchor("first", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	ans, _ := r.Anchor("first", false, offer(b.addr(), ""))
	_, err = r.Anchor("second", true, offer(a.addr(), ""))
	if !errors.Is(err, ErrNoPorts) {
		t.Fatalf("second call: %v, want ErrNoPorts", err)
	}
	if len(r.Snapshot()) != 1 {
		t.Fatal("failed anchor left a session behind")
	}
	mustRelay(t, a, relayAP(sdpPort(t, ans)), b, relayAP(sdpPort(t, o)))
	mustRelay(t, b, relayAP(sdpPort(t, o)), a, relayAP(sdpPort(t, ans)))
	if got := metricValue(t, reg, "hapbx_media_port_exhausted_total", ""); got != 1 {
		t.Fatalf("port exhausted = %v", got)
	}
	// Once the first call ends, its ports serve the next one.
	if err := r.Release("first", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Anchor("second", true, offer(a.addr(), "")); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestRelayMaxSessions(t *testing.T) {
	r, _ := newTestRelay(t, "31600-31699", func(c *Config) { c.MaxSessions = 1 })
	if _, err := r.Anchor("one", true, offer(netip.MustParseAddrPort("127.0.0.2:4000"), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Anchor("two", true, offer(netip.MustParseAddrPort("127.0.0.2:4002"), "")); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("got %v, want ErrNoPorts", err)
	}
	// Updates of the existing session are not new sessions.
	if _, err := r.Anchor("one", false, offer(netip.MustParseAddrPort("127.0.0.3:4000"), "")); err != nil {
		t.Fatal(err)
	}
}

func TestRelayBadSDP(t *testing.T) {
	r, reg := newTestRelay(t, "31700-31799", nil)
	for _, body := range []string{"", "garbage", "v=0\r\n", string(offer(netip.MustParseAddrPort("127.0.0.2:4000"), ""))[:40],
		"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"} {
		if _, err := r.Anchor("bad", true, []byte(body)); !errors.Is(err, ErrBadSDP) {
			t.Errorf("%q: got %v, want ErrBadSDP", body, err)
		}
	}
	if got := metricValue(t, reg, "hapbx_media_sdp_errors_total", ""); got != 5 {
		t.Fatalf("sdp errors = %v, want 5", got)
	}
	if len(r.Snapshot()) != 0 || r.pool.free() != r.pool.size() {
		t.Fatal("bad SDP created a session or took ports")
	}
}

func TestRelayExportImport(t *testing.T) {
	r1, _ := newTestRelay(t, "31800-31899", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, _ := r1.AnchorFrom("ha", true, a.addr().Addr(), offer(netip.MustParseAddrPort("10.1.1.1:5000"), "")) // NATed A
	ans, _ := r1.Anchor("ha", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	recs := r1.Export()
	if len(recs) != 1 || recs[0].Streams[0].Latched[LegA] != a.addr() {
		t.Fatalf("export: %+v", recs)
	}
	wire, err := recs[0].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	r1.Close() // the active dies

	r2, _ := newTestRelay(t, "31800-31899", nil)
	var rec SessionRecord
	if err := rec.UnmarshalBinary(wire); err != nil {
		t.Fatal(err)
	}
	if err := r2.Import(rec); err != nil {
		t.Fatal(err)
	}
	// B -> A works at once: A's latched NAT address was carried over.
	mustRelay(t, b, forB, a, forA)
	mustRelay(t, a, forA, b, forB)
	if st := r2.Snapshot(); len(st) != 1 || st[0].Streams[0].Ports != recs[0].Streams[0].Ports {
		t.Fatalf("imported ports differ: %+v", st)
	}
	// A fresh call on the standby does not get the imported ports.
	o2, err := r2.Anchor("new", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if p := sdpPort(t, o2); int(p) == rec.Streams[0].Ports[0] || int(p) == rec.Streams[0].Ports[1] {
		t.Fatalf("new call got imported port %d", p)
	}
}

func TestImportFreebindNonLocalAddress(t *testing.T) {
	// 192.0.2.1 (TEST-NET-1) is not on this host, like a VIP the standby does
	// not own yet; IP_FREEBIND must let Import bind it anyway.
	cfg := DefaultConfig()
	cfg.Address = "192.0.2.1"
	cfg.Ports = "31900-31999"
	cfg.Workers = 1
	cfg.Datapath = DatapathUser
	r, err := New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	defer r.Close()
	rec := SessionRecord{CallID: "vip", State: StateAnswered, Streams: []StreamRecord{{Ports: [2]int{31910, 31912}}}}
	if err := r.Import(rec); err != nil {
		t.Fatalf("import on non-local address: %v", err)
	}
	if err := r.Import(SessionRecord{CallID: "clash", Streams: []StreamRecord{{Ports: [2]int{31910, 31914}}}}); err == nil {
		t.Fatal("import of a port already in use succeeded")
	}
	if n := len(r.Snapshot()); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}

// TestRelayConcurrentControlAndTraffic exercises every control-plane call
// while media flows, for the race detector, and checks nothing leaks.
func TestRelayConcurrentControlAndTraffic(t *testing.T) {
	r, reg := newTestRelay(t, "30200-30399", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, _ := r.Anchor("steady", true, offer(a.addr(), ""))
	ans, _ := r.Anchor("steady", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	done := make(chan struct{})
	errc := make(chan error, 4)
	for g := range 3 {
		go func() {
			for i := range 40 {
				id := fmt.Sprintf("churn-%d-%d", g, i)
				if _, err := r.Anchor(id, true, offer(netip.MustParseAddrPort("127.0.0.9:7000"), "")); err != nil {
					errc <- err
					return
				}
				if _, err := r.Anchor(id, false, offer(netip.MustParseAddrPort("127.0.0.9:7002"), "a=sendonly\r\n")); err != nil {
					errc <- err
					return
				}
				_ = r.Snapshot()
				_ = r.Export()
				_, _ = reg.Gather()
				if err := r.Release(id, "bye"); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	go func() {
		defer close(done)
		for range 100 {
			a.sendRTP(forA)
			b.sendRTP(forB)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	for range 3 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	<-done
	mustRelay(t, a, forA, b, forB)
	if err := r.Release("steady", "bye"); err != nil {
		t.Fatal(err)
	}
	if n := r.pool.free(); n != r.pool.size() {
		t.Fatalf("%d of %d port pairs free after all releases", n, r.pool.size())
	}
	if got := metricValue(t, reg, "hapbx_media_sessions", ""); got != 0 {
		t.Fatalf("hapbx_media_sessions = %v", got)
	}
}

// TestRelayLateOffer: INVITE without SDP, the offer in B's 200 OK and the
// answer in A's ACK.
func TestRelayLateOffer(t *testing.T) {
	r, _ := newTestRelay(t, "30400-30499", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	offerToA, err := r.Anchor("late", false, offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if st := r.Snapshot()[0].State; st != StateOffered {
		t.Fatalf("state %q after the 200 OK offer", st)
	}
	answerToB, err := r.Anchor("late", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	forA, forB := relayAP(sdpPort(t, offerToA)), relayAP(sdpPort(t, answerToB))
	mustRelay(t, b, forB, a, forA)
	mustRelay(t, a, forA, b, forB)
}

// TestRelaySkipsPortsHeldElsewhere: a pair bound by another process is
// skipped, not fatal; when every pair is held, Anchor says ErrNoPorts.
func TestRelaySkipsPortsHeldElsewhere(t *testing.T) {
	// 30500-30507: four pairs; hold the RTCP port of the first pair.
	held, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.0.0.1"), Port: 30501})
	if err != nil {
		t.Skipf("port 30501 busy: %v", err)
	}
	defer held.Close()
	r, _ := newTestRelay(t, "30500-30507", nil)
	o, err := r.Anchor("c1", true, offer(netip.MustParseAddrPort("127.0.0.2:4000"), ""))
	if err != nil {
		t.Fatal(err)
	}
	ports := r.Snapshot()[0].Streams[0].Ports
	if ports[0] == 30500 || ports[1] == 30500 {
		t.Fatalf("got the held pair: %v", ports)
	}
	_ = o
	// One pair left besides the held one: a second call (two pairs) cannot fit.
	if _, err := r.Anchor("c2", true, offer(netip.MustParseAddrPort("127.0.0.2:4002"), "")); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("got %v, want ErrNoPorts", err)
	}
	if len(r.Snapshot()) != 1 {
		t.Fatal("failed call left a session")
	}
}

// TestRecordAndReleasedImport: Record gives the one session a change is
// about; importing a released record ends the session on the standby and
// frees its ports; an unknown released record is a no-op.
func TestRecordAndReleasedImport(t *testing.T) {
	r1, _ := newTestRelay(t, "31900-31949", nil)
	r2, _ := newTestRelay(t, "31950-31999", nil)
	if _, ok := r1.Record("none"); ok {
		t.Fatal("Record of an unknown call")
	}
	if _, err := r1.Anchor("c1", true, offer(netip.MustParseAddrPort("10.1.1.1:5000"), "")); err != nil {
		t.Fatal(err)
	}
	rec, ok := r1.Record("c1")
	if !ok || rec.CallID != "c1" || len(rec.Streams) != 1 {
		t.Fatalf("Record: %+v %v", rec, ok)
	}
	// The standby has its own port range in this test: rebase the ports.
	rec.Streams[0].Ports = [2]int{31950, 31952}
	if err := r2.Import(rec); err != nil {
		t.Fatal(err)
	}
	if n := len(r2.Snapshot()); n != 1 {
		t.Fatalf("standby sessions after import: %d", n)
	}
	if err := r2.Import(SessionRecord{CallID: "c1", State: StateReleased}); err != nil {
		t.Fatal(err)
	}
	if n := len(r2.Snapshot()); n != 0 {
		t.Fatalf("standby sessions after released record: %d", n)
	}
	if err := r2.Import(SessionRecord{CallID: "unknown", State: StateReleased}); err != nil {
		t.Fatalf("released record of an unknown call: %v", err)
	}
	// The ports are free again: importing the same ports succeeds.
	rec.State = StateAnswered
	if err := r2.Import(rec); err != nil {
		t.Fatalf("ports not freed by the released record: %v", err)
	}
}

// udpPeers lists the remote addresses of the connected IPv4 UDP sockets
// bound to port (from /proc/net/udp, so it sees the kernel's view).
func udpPeers(t *testing.T, port uint16) []netip.AddrPort {
	t.Helper()
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		t.Skipf("needs /proc/net/udp: %v", err)
	}
	var out []netip.AddrPort
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) || f[2] == "00000000:0000" {
			continue
		}
		ip, errIP := strconv.ParseUint(f[2][:8], 16, 32)
		p, errP := strconv.ParseUint(f[2][9:], 16, 16)
		if errIP != nil || errP != nil {
			t.Fatalf("bad /proc/net/udp line %q", line)
		}
		// /proc shows the address as a host-order (little-endian) word.
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip), byte(ip >> 8), byte(ip >> 16), byte(ip >> 24)}), uint16(p)))
	}
	return out
}

// TestRelayConnectedSocketKeepsStrangersAndRelatch checks the connected
// socket the relay opens towards a latched peer: it exists once the relay
// sends to that peer, strangers are still dropped and counted, and after
// relatch_after of silence a new source takes over, the connected socket
// follows it and the old source becomes a stranger.
func TestRelayConnectedSocketKeepsStrangersAndRelatch(t *testing.T) {
	r, reg, clk := newClockedRelay(t, "31900-31999", func(c *Config) { c.RelatchAfter = 300 * time.Millisecond })
	// a2 is A after a NAT rebinding: same address, another port.
	a, a2, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	stranger := newPhone(t, "127.0.0.4")
	o, err := r.Anchor("conn", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	ans, err := r.Anchor("conn", false, offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	if got := udpPeers(t, forA.Port()); len(got) != 0 {
		t.Fatalf("port %d connected to %v before the relay sent to A", forA.Port(), got)
	}
	mustRelay(t, b, forB, a, forA)
	if got := udpPeers(t, forA.Port()); len(got) != 1 || got[0] != a.addr() {
		t.Fatalf("port %d connected to %v, want [%s]", forA.Port(), got, a.addr())
	}
	for range 3 {
		stranger.sendRTP(forA)
	}
	mustNotReceive(t, b, 200*time.Millisecond)
	mustRelay(t, a, forA, b, forB) // keeps the latch fresh; B is latched now, so B's port connects
	if got := udpPeers(t, forB.Port()); len(got) != 1 || got[0] != b.addr() {
		t.Fatalf("port %d connected to %v, want [%s]", forB.Port(), got, b.addr())
	}
	a2.sendRTP(forA) // latched source just spoke: a2 is a stranger too
	mustNotReceive(t, b, 200*time.Millisecond)
	if got := metricValue(t, reg, "hapbx_media_dropped_total", "stranger"); got != 4 {
		t.Fatalf("hapbx_media_dropped_total{reason=stranger} = %v, want 4", got)
	}

	clk.advance(400 * time.Millisecond) // a silent longer than relatch_after
	mustRelay(t, a2, forA, b, forB)
	mustRelay(t, b, forB, a2, forA)
	if got := udpPeers(t, forA.Port()); len(got) != 1 || got[0] != a2.addr() {
		t.Fatalf("after relatch port %d connected to %v, want [%s]", forA.Port(), got, a2.addr())
	}
	a.sendRTP(forA) // the old source is a stranger now
	mustNotReceive(t, b, 200*time.Millisecond)
	if got := metricValue(t, reg, "hapbx_media_dropped_total", "stranger"); got != 5 {
		t.Fatalf("hapbx_media_dropped_total{reason=stranger} = %v, want 5", got)
	}
	fa := r.Snapshot()[0].Streams[0].FromA
	if fa.Latched != a2.addr() || fa.Stranger != 5 {
		t.Fatalf("from A status = %+v; want latched %s, 5 stranger", fa, a2.addr())
	}

	// Another socket cannot take the port: SO_REUSEPORT was only set while binding.
	if c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(forA)); err == nil {
		c.Close()
		t.Fatalf("could bind relay port %s", forA)
	}
	if err := r.Release("conn", "bye"); err != nil {
		t.Fatal(err)
	}
	if got := udpPeers(t, forA.Port()); len(got) != 0 {
		t.Fatalf("port %d still connected to %v after release", forA.Port(), got)
	}
	if got := r.workers[0].budget.used.Load(); got != 0 {
		t.Fatalf("%d connected sockets still counted after release", got)
	}
}

// TestRelayConnectedPeerGoneAndBack checks the connected socket when the
// latched peer's port closes (the kernel reports ICMP port unreachable on a
// connected socket, and the data path reads it) and a phone opens that
// address again: the relay relays to it again over the same connected socket.
func TestRelayConnectedPeerGoneAndBack(t *testing.T) {
	r, reg := newTestRelay(t, "32000-32099", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, err := r.Anchor("gone", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	ans, err := r.Anchor("gone", false, offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	if got := udpPeers(t, forA.Port()); len(got) != 1 || got[0] != a.addr() {
		t.Fatalf("port %d connected to %v, want [%s]", forA.Port(), got, a.addr())
	}
	addrA := a.addr()
	a.conn.Close()
	for range 10 {
		b.sendRTP(forB)
		time.Sleep(5 * time.Millisecond)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addrA))
	if err != nil {
		t.Skipf("cannot rebind %s after closing it: %v", addrA, err)
	}
	t.Cleanup(func() { c.Close() })
	a2 := &phone{t: t, conn: c, ssrc: 7}
	mustRelay(t, b, forB, a2, forA)
	mustRelay(t, a2, forA, b, forB)
	// The ICMP errors were read off the connected socket and did not close it.
	if got := udpPeers(t, forA.Port()); len(got) != 1 || got[0] != addrA {
		t.Fatalf("port %d connected to %v, want [%s]", forA.Port(), got, addrA)
	}
	for _, reason := range []string{"stranger", "not_rtp"} {
		if got := metricValue(t, reg, "hapbx_media_dropped_total", reason); got != 0 {
			t.Fatalf("hapbx_media_dropped_total{reason=%s} = %v, want 0", reason, got)
		}
	}
}

// TestRelayConnBudgetSpent checks the fallback when the descriptor budget
// for connected sockets is spent: the relay sends from the bound socket with
// the address, in both directions.
func TestRelayConnBudgetSpent(t *testing.T) {
	r, _ := newTestRelay(t, "32100-32199", nil)
	if b := r.workers[0].budget; b.max < 1000 {
		t.Fatalf("budget %d connected sockets; want room for at least 1000 under RLIMIT_NOFILE", b.max)
	}
	for _, w := range r.workers {
		w.budget.max = 0
	}
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, err := r.Anchor("budget", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	ans, err := r.Anchor("budget", false, offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	mustRelay(t, a, forA, b, forB)
	for _, p := range []uint16{forA.Port(), forB.Port()} {
		if got := udpPeers(t, p); len(got) != 0 {
			t.Fatalf("port %d connected to %v with no budget", p, got)
		}
	}
	if got := r.workers[0].budget.used.Load(); got != 0 {
		t.Fatalf("budget used %d, want 0", got)
	}
}

// rtcpRR is a minimal RTCP receiver report (no report blocks).
var rtcpRR = []byte{0x80, 201, 0, 1, 0, 0, 0, 7}

func sendRTCP(t *testing.T, p *phone, to netip.AddrPort) {
	t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(rtcpRR, to); err != nil {
		t.Fatal(err)
	}
}

// TestRelayRTCPRelatchFollowsRTP: RTCP comes every few seconds, so a
// stranger must not take a leg's RTCP port while the leg's RTP is flowing,
// even when the RTCP socket itself has been silent for relatch_after. Once
// RTP moved to a new source (NAT rebinding), RTCP from that host is taken at
// once; once the whole leg is silent, a new source at the leg's address may
// re-latch, a stranger elsewhere still may not.
func TestRelayRTCPRelatchFollowsRTP(t *testing.T) {
	const relatch = 300 * time.Millisecond
	r, _, clk := newClockedRelay(t, "32200-32299", func(c *Config) { c.RelatchAfter = relatch })
	a, b, bRTCP := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3"), newPhone(t, "127.0.0.3")
	stranger := newPhone(t, "127.0.0.4")
	a2, a2RTCP := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.2") // A after a NAT rebinding
	o, err := r.Anchor("rtcp", true, offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	ans, err := r.Anchor("rtcp", false, offer(b.addr(), fmt.Sprintf("a=rtcp:%d IN IP4 127.0.0.3\r\n", bRTCP.addr().Port())))
	if err != nil {
		t.Fatal(err)
	}
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	rtcpForA := relayAP(forA.Port() + 1)
	mustRelay(t, a, forA, b, forB)
	sendRTCP(t, a, rtcpForA) // A's RTCP latches
	if _, _, ok := bRTCP.recv(time.Second); !ok {
		t.Fatal("A's RTCP not relayed to B's RTCP address")
	}

	// A's RTP keeps flowing for longer than relatch_after; its RTCP does not.
	for range 20 { // 400 ms
		mustRelay(t, a, forA, b, forB)
		clk.advance(20 * time.Millisecond)
	}
	sendRTCP(t, stranger, rtcpForA)
	mustNotReceive(t, bRTCP, 200*time.Millisecond)
	if st := r.Snapshot()[0].Streams[0].FromA.Stranger; st != 1 {
		t.Fatalf("stranger drops from A = %d, want the stranger's RTCP", st)
	}

	// A's NAT rebinds: its RTP re-latches after the silence, and RTCP
	// from the same host follows at once, while a stranger still cannot.
	clk.advance(relatch + 100*time.Millisecond)
	mustRelay(t, a2, forA, b, forB)
	sendRTCP(t, stranger, rtcpForA)
	mustNotReceive(t, bRTCP, 200*time.Millisecond)
	sendRTCP(t, a2RTCP, rtcpForA)
	if _, _, ok := bRTCP.recv(time.Second); !ok {
		t.Fatal("RTCP from the host RTP re-latched to was not relayed")
	}

	// The whole leg silent: a new source at A's address may take RTCP
	// over, a stranger still may not.
	clk.advance(relatch + 100*time.Millisecond)
	sendRTCP(t, stranger, rtcpForA)
	mustNotReceive(t, bRTCP, 200*time.Millisecond)
	sendRTCP(t, newPhone(t, "127.0.0.2"), rtcpForA)
	if _, _, ok := bRTCP.recv(time.Second); !ok {
		t.Fatal("RTCP not re-latched after the leg's RTP and RTCP were silent")
	}
	if st := r.Snapshot()[0].Streams[0].FromA.Stranger; st != 3 {
		t.Fatalf("stranger drops from A = %d, want the stranger's 3 RTCP packets", st)
	}
}

// histogram returns the sample count and sum of histogram name{leg}.
func histogram(t *testing.T, reg *prometheus.Registry, name, leg string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if len(m.Label) > 0 && m.Label[0].GetValue() == leg {
				return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	t.Fatalf("histogram %s{leg=%q} not found", name, leg)
	return 0, 0
}

// TestRelayLossAndJitterMetrics: sequence gaps count as lost packets of the
// sending leg, a late packet does not make the counter go back, a new SSRC
// starts afresh, and each RTP direction's jitter is observed at release.
func TestRelayLossAndJitterMetrics(t *testing.T) {
	r, reg := newTestRelay(t, "32300-32399", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	o, _ := r.Anchor("loss", true, offer(a.addr(), ""))
	ans, _ := r.Anchor("loss", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	send := func(seq uint16, ssrc uint32) {
		t.Helper()
		if _, err := a.conn.WriteToUDPAddrPort(rtpPacket(seq, uint32(seq)*160, ssrc, 160), forA); err != nil {
			t.Fatal(err)
		}
		if _, _, ok := b.recv(time.Second); !ok {
			t.Fatalf("packet seq %d not relayed", seq)
		}
	}
	base := a.seq
	send(base+4, a.ssrc) // base+1..base+3 lost
	send(base+2, a.ssrc) // late: RFC 3550 loss drops to 2, the counter stays
	send(base+7, a.ssrc) // base+5, base+6 lost
	// RFC 3550 cumulative loss is now 4 (base+1, +3, +5, +6); the counter
	// added only growth beyond its high-water mark of 3, so it reads 4 too.
	if got := metricValue(t, reg, "hapbx_media_lost_packets_total", "a"); got != 4 {
		t.Fatalf("lost{leg=a} = %v, want 4", got)
	}
	// A new SSRC (e.g. after a re-INVITE) restarts the statistics: its gaps add.
	send(1000, 99)
	send(1003, 99)
	if got := metricValue(t, reg, "hapbx_media_lost_packets_total", "a"); got != 6 {
		t.Fatalf("lost{leg=a} after a new SSRC = %v, want 6", got)
	}
	if got := metricValue(t, reg, "hapbx_media_lost_packets_total", "b"); got != 0 {
		t.Fatalf("lost{leg=b} = %v, want 0", got)
	}
	if n, _ := histogram(t, reg, "hapbx_media_jitter_seconds", "a"); n != 0 {
		t.Fatalf("jitter observed before release: %d", n)
	}
	if err := r.Release("loss", "bye"); err != nil {
		t.Fatal(err)
	}
	for _, leg := range []string{"a", "b"} {
		if n, sum := histogram(t, reg, "hapbx_media_jitter_seconds", leg); n != 1 || sum < 0 {
			t.Fatalf("jitter{leg=%s}: %d samples (sum %v), want 1", leg, n, sum)
		}
	}
}

// TestForwardDoesNotAllocate: the per-packet path, loss counting included,
// allocates nothing.
func TestForwardDoesNotAllocate(t *testing.T) {
	r, _ := newTestRelay(t, "32400-32499", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	if _, err := r.Anchor("alloc", true, offer(a.addr(), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Anchor("alloc", false, offer(b.addr(), "")); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	s := r.sessions["alloc"]
	r.mu.Unlock()
	w, k := s.w, s.streams[0].socks[LegA][0]
	src := rawFromAddrPort(a.addr())
	pkt := rtpPacket(0, 0, 5, 160)
	seq := uint16(0)
	w.mu.Lock()
	defer w.mu.Unlock()
	allocs := testing.AllocsPerRun(200, func() {
		seq += 2 // a gap each time: loss is counted on every packet
		binary.BigEndian.PutUint16(pkt[2:], seq)
		binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
		n := copy(w.rxBuf[0][:], pkt)
		w.rxHdr[0].Len, w.rxHdr[0].Hdr.Flags, w.rxName[0] = uint32(n), 0, src
		w.forward(k, 1, w.nanotime())
	})
	if allocs != 0 {
		t.Fatalf("forward allocates %v times per packet", allocs)
	}
	if w.lost[LegA] == 0 {
		t.Fatal("no loss counted: the test did not reach the loss path")
	}
}

// TestRelayFailedUpdateKeepsSession: a bad or unaffordable SDP for a call
// that has a session says so with ErrSessionKept and changes nothing; for a
// new call it does not.
func TestRelayFailedUpdateKeepsSession(t *testing.T) {
	r, reg := newTestRelay(t, "32500-32503", nil) // two pairs: one stream
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	v6 := []byte("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
	if _, err := r.Anchor("kept", true, v6); !errors.Is(err, ErrBadSDP) || errors.Is(err, ErrSessionKept) {
		t.Fatalf("new call, bad SDP: %v, want ErrBadSDP only", err)
	}
	o, _ := r.Anchor("kept", true, offer(a.addr(), ""))
	ans, _ := r.Anchor("kept", false, offer(b.addr(), ""))
	forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
	if _, err := r.Anchor("kept", false, v6); !errors.Is(err, ErrBadSDP) || !errors.Is(err, ErrSessionKept) {
		t.Fatalf("re-offer, bad SDP: %v, want ErrBadSDP and ErrSessionKept", err)
	}
	video := offer(b.addr(), "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
	if _, err := r.Anchor("kept", false, video); !errors.Is(err, ErrNoPorts) || !errors.Is(err, ErrSessionKept) {
		t.Fatalf("re-offer with a stream beyond the ports: %v, want ErrNoPorts and ErrSessionKept", err)
	}
	if _, err := r.Anchor("other", true, offer(a.addr(), "")); !errors.Is(err, ErrNoPorts) || errors.Is(err, ErrSessionKept) {
		t.Fatalf("new call, no ports: %v, want ErrNoPorts only", err)
	}
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	for _, reason := range []string{"bad_sdp", "no_ports"} {
		if got := metricValue(t, reg, "hapbx_media_updates_refused_total", reason); got != 1 {
			t.Fatalf("updates refused{%s} = %v, want 1", reason, got)
		}
	}
}
