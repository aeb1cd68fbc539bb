package proxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hapbx/hapbx/internal/testkit"
)

// rtpPhones is one UDP socket standing for the media of many phones: it
// sends a 20 ms RTP packet to every relay port in dests and notes, per
// relay port it receives from, the arrivals and the longest gap since from.
type rtpPhones struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	dests []netip.AddrPort
	last  map[uint16]time.Time
	gap   map[uint16]time.Duration
	after map[uint16]int // packets received since from
	from  time.Time
}

func newRTPPhones(b *testing.B, ip string) *rtpPhones {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip), Port: testkit.FreePort(b, ip)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	r := &rtpPhones{conn: c, last: map[uint16]time.Time{}, gap: map[uint16]time.Duration{}, after: map[uint16]int{}}
	go r.receive()
	return r
}

func (r *rtpPhones) port() int { return r.conn.LocalAddr().(*net.UDPAddr).Port }

func (r *rtpPhones) receive() {
	buf := make([]byte, 2048)
	for {
		_, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		now := time.Now()
		r.mu.Lock()
		p := from.Port()
		if l, ok := r.last[p]; ok && !r.from.IsZero() && l.After(r.from.Add(-100*time.Millisecond)) {
			r.gap[p] = max(r.gap[p], now.Sub(l))
		}
		if !r.from.IsZero() && now.After(r.from) {
			r.after[p]++
		}
		r.last[p] = now
		r.mu.Unlock()
	}
}

// send sends one packet every 20 ms to every destination until stop closes.
func (r *rtpPhones) send(stop <-chan struct{}) {
	pkt := make([]byte, 172)
	pkt[0], pkt[1] = 0x80, 8
	ssrc := uint32(time.Now().UnixNano())
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for seq := uint16(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		binary.BigEndian.PutUint16(pkt[2:], seq)
		binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
		r.mu.Lock()
		dests := r.dests
		r.mu.Unlock()
		for i, d := range dests {
			binary.BigEndian.PutUint32(pkt[8:], ssrc+uint32(i))
			_, _ = r.conn.WriteToUDPAddrPort(pkt, d)
		}
	}
}

// BenchmarkBridgedCallsSurvive prints issue 15's figures: N two-party
// calls bridged by a PBX (the test B2BUA, media relayed through it) are up
// with RTP every 20 ms both ways; the PBX is killed and HangUpBackend
// called at once (health's detection time is not included: add it). It
// prints how many calls keep audio both ways, the longest gap each phone
// hears around the kill, and the time hapbx takes from one phone's BYE to
// the BYE for the other. Run:
// go test -run '^$' -bench BridgedCallsSurvive -benchtime 1x ./proxy
func BenchmarkBridgedCallsSurvive(b *testing.B) {
	testkit.RequireSIPp(b)
	const calls = 20
	for b.Loop() {
		bridgedCallsOnce(b, calls)
	}
}

func bridgedCallsOnce(b *testing.B, calls int) {
	be, bePort := backendOn(b, "asterisk1", be1IP, "udp")
	reg := prometheus.NewRegistry()
	relay := startRelay(b, "34600-34799", reg)
	p := startProxyWith(b, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil, WithMediaAnchor(relay))
	callers, callees := newRTPPhones(b, phoneIP), newRTPPhones(b, phoneIP)
	calleePort := testkit.FreePort(b, phoneIP)
	b2b := testkit.StartB2BUA(b, be1IP, bePort, p.addr, fmt.Sprintf("sip:202@%s:%d", phoneIP, calleePort))
	n := strconv.Itoa(calls)
	callee := testkit.StartSIPp(b, phoneIP, calleePort, "-sf", scenario("uas_bench_joined.xml"),
		"-key", "rtp_port", strconv.Itoa(callees.port()), "-m", n, "-timeout", "60", "-timeout_error")
	testkit.WaitListening(b, "udp", callee.Addr, 5*time.Second)
	caller := testkit.StartSIPp(b, phoneIP, testkit.FreePort(b, phoneIP), "-sf", scenario("uac_bench_joined.xml"), "-s", "300",
		"-key", "rtp_port", strconv.Itoa(callers.port()), "-m", n, "-l", n, "-r", n, "-timeout", "60", "-timeout_error", p.addr)
	if !testkit.Poll(10*time.Second, func() bool { return p.dialogs.len() == 2*calls }) {
		b.Fatalf("%d dialogs confirmed, want %d\n%s\n%s", p.dialogs.len(), 2*calls, caller.Output(), callee.Output())
	}
	// Each phone sends to its relay port: the caller's faces leg A of the
	// incoming call, the callee's leg B of the B2BUA's outgoing call.
	port := map[string]uint16{}
	for _, s := range relay.Snapshot() {
		if strings.HasPrefix(s.CallID, "b2b-") {
			port[s.CallID] = uint16(s.Streams[0].Ports[1])
			callees.dests = append(callees.dests, netip.AddrPortFrom(netip.MustParseAddr(proxyIP), port[s.CallID]))
		} else {
			port[s.CallID] = uint16(s.Streams[0].Ports[0])
			callers.dests = append(callers.dests, netip.AddrPortFrom(netip.MustParseAddr(proxyIP), port[s.CallID]))
		}
	}
	stop := make(chan struct{})
	defer close(stop)
	go callers.send(stop)
	go callees.send(stop)
	time.Sleep(500 * time.Millisecond) // media flows through the PBX
	killed := time.Now()
	for _, r := range []*rtpPhones{callers, callees} {
		r.mu.Lock()
		r.from = killed
		r.mu.Unlock()
	}
	b2b.Kill()
	if n := p.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 0 {
		b.Errorf("%d dialogs hung up, want 0", n)
	}
	took := time.Since(killed)
	time.Sleep(time.Second)
	// A call is kept when each phone heard the other after the join.
	kept := 0
	var gaps []time.Duration
	p.takeovers.mu.Lock()
	seen := map[*joinedCall]bool{}
	for _, c := range p.takeovers.byID {
		if seen[c] {
			continue
		}
		seen[c] = true
		ok := true
		for _, d := range c.d {
			r := callers
			if strings.HasPrefix(d.callID, "b2b-") {
				r = callees
			}
			r.mu.Lock()
			ok = ok && r.after[port[d.callID]] >= 25 // 0.5 s of the 1 s
			gaps = append(gaps, r.gap[port[d.callID]])
			r.mu.Unlock()
		}
		if ok {
			kept++
		}
	}
	p.takeovers.mu.Unlock()
	if code := caller.Wait(30 * time.Second); code != 0 {
		b.Errorf("callers exit %d\n%s", code, caller.Output())
	}
	if code := callee.Wait(10 * time.Second); code != 0 {
		b.Errorf("callees exit %d\n%s", code, callee.Output())
	}
	var m dto.Metric
	if err := p.takeovers.bye.Write(&m); err != nil {
		b.Fatal(err)
	}
	h := m.GetHistogram()
	byeMean := time.Duration(0)
	if h.GetSampleCount() > 0 {
		byeMean = time.Duration(h.GetSampleSum() / float64(h.GetSampleCount()) * float64(time.Second))
	}
	byeMax := "over 250ms"
	for _, bk := range h.GetBucket() {
		if bk.GetCumulativeCount() == h.GetSampleCount() {
			byeMax = fmt.Sprintf("under %v", time.Duration(bk.GetUpperBound()*float64(time.Second)))
			break
		}
	}
	slices.Sort(gaps)
	if len(gaps) == 0 {
		b.Fatal("no joined call")
	}
	med, worst := gaps[len(gaps)/2], gaps[len(gaps)-1]
	fmt.Printf("issue 15: %d two-party calls bridged by a PBX that is killed (RTP every 20 ms both ways; detection not included):\n", calls)
	fmt.Printf("  calls kept with audio both ways:        %d of %d (HangUpBackend took %v)\n", kept, calls, took.Round(time.Microsecond))
	fmt.Printf("  longest gap a phone hears at the kill:  median %v  max %v (20 ms is no gap)\n", med.Round(time.Millisecond), worst.Round(time.Millisecond))
	fmt.Printf("  one phone's BYE -> other's BYE (hapbx): mean %v, all %s (%d BYEs)\n", byeMean.Round(time.Microsecond), byeMax, h.GetSampleCount())
	b.ReportMetric(float64(kept), "calls-kept")
	b.ReportMetric(float64(worst.Microseconds())/1000, "gap-max-ms")
	b.ReportMetric(float64(med.Microseconds())/1000, "gap-median-ms")
	b.ReportMetric(float64(byeMean.Microseconds())/1000, "bye-mean-ms")
}
