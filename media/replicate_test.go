package media

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// pipe stands in for the cluster between a holder and one standby: what the
// holder sends is applied at once to the standby, as the cluster's
// receiving side does (one ApplyState per message, serialised).
type pipe struct {
	mu   sync.Mutex
	to   *Relay
	sent int
}

func (p *pipe) send(rec []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent++
	p.to.ApplyState([][]byte{append([]byte(nil), rec...)})
	return nil
}

// replicatedPair returns a holder on 127.0.0.1 and a standby on 127.0.0.5,
// same port range (like the VIP on two hosts), the holder replicating to the
// standby. The holder's own refresh loop never fires (holder() is false):
// the tests call refreshOnce. The standby runs on clk.
func replicatedPair(t *testing.T, standbyIdle time.Duration) (holder, standby *Relay, p *pipe, clk *fakeClock) {
	holder, _ = newTestRelay(t, "32700-32749", func(c *Config) { c.Workers, c.IdleTimeout = 1, time.Minute })
	standby, _, clk = newClockedRelay(t, "32700-32749", func(c *Config) { c.Address, c.Workers, c.IdleTimeout = "127.0.0.5", 1, standbyIdle })
	p = &pipe{to: standby}
	holder.StateChanges(p.send, func() bool { return false })
	return holder, standby, p, clk
}

func standbyLatch(r *Relay, callID string) (netip.AddrPort, bool) {
	for _, s := range r.Snapshot() {
		if s.CallID == callID {
			return s.Streams[0].FromA.Latched, true
		}
	}
	return netip.AddrPort{}, false
}

// TestRefreshReplicatesLatchAndKeepsReplica: the latch the holder learns
// from the first packets (after the Anchor-time record went out) reaches
// the standby with the next refresh; the standby keeps the call past its
// idle_timeout while the holder's refreshes keep coming, though it receives
// no packets; the holder's release ends it on the standby.
func TestRefreshReplicatesLatchAndKeepsReplica(t *testing.T) {
	holder, standby, p, clk := replicatedPair(t, 300*time.Millisecond)
	a := newPhone(t, "127.0.0.2")
	nat := netip.MustParseAddrPort("10.1.1.1:5000") // A's SDP names its private address
	if _, err := holder.AnchorFrom("call", true, a.addr().Addr(), offer(nat, "")); err != nil {
		t.Fatal(err)
	}
	ans, err := holder.Anchor("call", false, offer(netip.MustParseAddrPort("127.0.0.3:7000"), ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "call"); !ok {
		t.Fatal("the Anchor-time record did not reach the standby")
	}
	// A's first RTP packet latches its real (NAT) address on the holder.
	forA := relayAP(sdpPort(t, ans))
	testkit.Eventually(t, 3*time.Second, "holder latched A", func() bool {
		a.sendRTP(forA)
		s := holder.Snapshot()
		return len(s) == 1 && s[0].Streams[0].FromA.Latched == a.addr()
	})
	if got, _ := standbyLatch(standby, "call"); got.IsValid() {
		t.Fatalf("standby latched %s before any refresh", got)
	}

	if recs, alive := holder.refreshOnce(holder.out); recs != 1 || alive != 0 {
		t.Fatalf("refresh after the latch: %d records, %d keep-alives; want 1, 0", recs, alive)
	}
	if got, _ := standbyLatch(standby, "call"); got != a.addr() {
		t.Fatalf("standby latch after refresh = %s, want %s", got, a.addr())
	}
	// 2 s of refreshes, well past the standby's 300 ms idle_timeout.
	p.sent = 0
	for range 8 {
		sweepAfter(standby, clk, 250*time.Millisecond)
		if recs, alive := holder.refreshOnce(holder.out); recs != 0 || alive != 1 {
			t.Fatalf("refresh without changes: %d records, %d keep-alives; want 0, 1", recs, alive)
		}
	}
	if _, ok := standbyLatch(standby, "call"); !ok {
		t.Fatal("standby dropped the replicated call while the holder still has it")
	}
	if p.sent != 8 {
		t.Fatalf("%d keep-alive messages, want 8", p.sent)
	}

	if err := holder.Release("call", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "call"); ok {
		t.Fatal("standby kept the call after the holder released it")
	}
}

// TestReleaseOutranksAheadClock: a session that came from a previous
// holder whose clock ran ahead carries versions above this holder's clock;
// its release must still end it on the standby.
func TestReleaseOutranksAheadClock(t *testing.T) {
	holder, standby, _, _ := replicatedPair(t, time.Minute)
	ahead := uint64(time.Now().Add(time.Hour).UnixNano())
	rec := SessionRecord{CallID: "ahead", State: StateAnswered, Version: ahead,
		Streams: []StreamRecord{{Ports: [2]int{32740, 32742}}}}
	if err := holder.Import(rec); err != nil { // this proxy was the standby then
		t.Fatal(err)
	}
	if recs, _ := holder.refreshOnce(holder.out); recs != 1 {
		t.Fatalf("takeover refresh sent %d records, want 1", recs)
	}
	if _, ok := standbyLatch(standby, "ahead"); !ok {
		t.Fatal("standby did not get the session")
	}
	if err := holder.Release("ahead", "bye"); err != nil {
		t.Fatal(err)
	}
	if _, ok := standbyLatch(standby, "ahead"); ok {
		t.Fatal("release ignored by the standby: its version is below the session's")
	}
}
