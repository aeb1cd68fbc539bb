package app

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
)

// statePipe stands in for the cluster between a holder and one standby: a
// Broadcast is applied at once to the standby's channel, as the cluster's
// receiving side does (one Apply per message, serialised per channel).
type statePipe struct {
	mu    sync.Mutex
	chans map[string]cluster.StateSource
	sent  map[string]int
}

func (p *statePipe) Broadcast(name string, rec []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch, ok := p.chans[name]
	if !ok {
		return fmt.Errorf("%w: %q", cluster.ErrUnknownChannel, name)
	}
	p.sent[name]++
	ch.Apply([][]byte{append([]byte(nil), rec...)})
	return nil
}

func testRelay(t *testing.T, addr, ports string, idle time.Duration) *media.Relay {
	t.Helper()
	cfg := media.DefaultConfig()
	cfg.Enabled, cfg.Address, cfg.Ports, cfg.Workers, cfg.IdleTimeout = true, addr, ports, 1, idle
	r, err := media.New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

var mAudio = regexp.MustCompile(`m=audio (\d+) `)

func sdpOffer(ap netip.AddrPort) []byte {
	return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
		ap.Addr(), ap.Addr(), ap.Port())
}

func audioPort(t *testing.T, body []byte) int {
	t.Helper()
	m := mAudio.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no m=audio in %q", body)
	}
	p, _ := strconv.Atoi(string(m[1]))
	return p
}

func standbyLatch(r *media.Relay, callID string) (netip.AddrPort, bool) {
	for _, s := range r.Snapshot() {
		if s.CallID == callID {
			return s.Streams[0].FromA.Latched, true
		}
	}
	return netip.AddrPort{}, false
}

// TestMediaRefreshReplicatesLatchAndKeepsReplica: the latch the holder
// learns from the first packets (after the Anchor-time record went out)
// reaches the standby with the next refresh; the standby keeps the call
// past its idle_timeout while the holder's refreshes keep coming, though it
// receives no packets; the holder's release ends it on the standby.
func TestMediaRefreshReplicatesLatchAndKeepsReplica(t *testing.T) {
	// Holder and standby on two loopback addresses, same port range, like
	// the VIP on two hosts.
	holder := testRelay(t, "127.0.0.1", "32700-32749", time.Minute)
	standby := testRelay(t, "127.0.0.5", "32700-32749", 300*time.Millisecond)
	log := zaptest.NewLogger(t)
	pipe := &statePipe{sent: map[string]int{}, chans: map[string]cluster.StateSource{
		chanMedia:      mediaState{r: standby, log: log},
		chanMediaAlive: mediaAliveState{r: standby, log: log},
	}}
	rr := replicatedRelay{Relay: holder, c: pipe, log: log}

	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	nat := netip.MustParseAddrPort("10.1.1.1:5000") // A's SDP names its private address
	if _, err := rr.Anchor("call", media.LegA, sdpOffer(nat)); err != nil {
		t.Fatal(err)
	}
	ans, err := rr.Anchor("call", media.LegB, sdpOffer(netip.MustParseAddrPort("127.0.0.3:7000")))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "call"); !ok {
		t.Fatal("the Anchor-time record did not reach the standby")
	}
	// A's first RTP packet latches its real (NAT) address on the holder.
	forA := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(audioPort(t, ans)))
	pkt := make([]byte, 172)
	pkt[0], pkt[1] = 0x80, 8
	aAddr := a.LocalAddr().(*net.UDPAddr).AddrPort()
	testkit.Eventually(t, 3*time.Second, "holder latched A", func() bool {
		if _, err := a.WriteToUDPAddrPort(pkt, forA); err != nil {
			t.Fatal(err)
		}
		s := holder.Snapshot()
		return len(s) == 1 && s[0].Streams[0].FromA.Latched == aAddr
	})
	if got, _ := standbyLatch(standby, "call"); got.IsValid() {
		t.Fatalf("standby latched %s before any refresh", got)
	}

	if recs, alive := refreshMediaOnce(holder, pipe, log); recs != 1 || alive != 0 {
		t.Fatalf("refresh after the latch: %d records, %d keep-alives; want 1, 0", recs, alive)
	}
	if got, _ := standbyLatch(standby, "call"); got != aAddr {
		t.Fatalf("standby latch after refresh = %s, want %s", got, aAddr)
	}
	// 2 s of refreshes, well past the standby's 300 ms idle_timeout.
	for range 8 {
		time.Sleep(250 * time.Millisecond)
		if recs, alive := refreshMediaOnce(holder, pipe, log); recs != 0 || alive != 1 {
			t.Fatalf("refresh without changes: %d records, %d keep-alives; want 0, 1", recs, alive)
		}
	}
	if _, ok := standbyLatch(standby, "call"); !ok {
		t.Fatal("standby dropped the replicated call while the holder still has it")
	}
	if pipe.sent[chanMediaAlive] != 8 {
		t.Fatalf("%d keep-alive messages, want 8", pipe.sent[chanMediaAlive])
	}

	if err := rr.Release("call", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "call"); ok {
		t.Fatal("standby kept the call after the holder released it")
	}
}

// TestMediaReleaseOutranksAheadClock: a session that came from a previous
// holder whose clock ran ahead carries versions above this holder's clock;
// its release must still end it on the standby.
func TestMediaReleaseOutranksAheadClock(t *testing.T) {
	holder := testRelay(t, "127.0.0.1", "32700-32749", time.Minute)
	standby := testRelay(t, "127.0.0.5", "32700-32749", time.Minute)
	log := zaptest.NewLogger(t)
	pipe := &statePipe{sent: map[string]int{}, chans: map[string]cluster.StateSource{
		chanMedia:      mediaState{r: standby, log: log},
		chanMediaAlive: mediaAliveState{r: standby, log: log},
	}}
	rr := replicatedRelay{Relay: holder, c: pipe, log: log}
	ahead := uint64(time.Now().Add(time.Hour).UnixNano())
	rec := media.SessionRecord{CallID: "ahead", State: media.StateAnswered, Version: ahead,
		Streams: []media.StreamRecord{{Ports: [2]int{32740, 32742}}}}
	if err := holder.Import(rec); err != nil { // this proxy was the standby then
		t.Fatal(err)
	}
	if recs, _ := refreshMediaOnce(holder, pipe, log); recs != 1 {
		t.Fatalf("takeover refresh sent %d records, want 1", recs)
	}
	if _, ok := standbyLatch(standby, "ahead"); !ok {
		t.Fatal("standby did not get the session")
	}
	if err := rr.Release("ahead", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "ahead"); ok {
		t.Fatal("release ignored by the standby: its version is below the session's")
	}
}
