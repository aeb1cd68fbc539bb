package media

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// rebase moves a record's ports by delta, for a standby that has its own
// port range in a test (both relays share 127.0.0.1).
func rebase(rec SessionRecord, delta int) SessionRecord {
	rec.Streams = slices.Clone(rec.Streams)
	for i := range rec.Streams {
		rec.Streams[i].Ports[0] += delta
		rec.Streams[i].Ports[1] += delta
	}
	return rec
}

func setReplicaTTL(r *Relay, d time.Duration) {
	r.mu.Lock()
	r.replicaTTL = d
	r.mu.Unlock()
}

func hasSession(r *Relay, callID string) bool {
	for _, s := range r.Snapshot() {
		if s.CallID == callID {
			return true
		}
	}
	return false
}

// sweepAfter moves r's clock on by d and runs one sweep.
func sweepAfter(r *Relay, clk *fakeClock, d time.Duration) {
	clk.advance(d)
	r.sweepOnce()
}

// mustBeGone fails unless callID has left r.
func mustBeGone(t *testing.T, r *Relay, callID string) {
	t.Helper()
	if hasSession(r, callID) {
		t.Fatalf("session %q still present", callID)
	}
}

func answeredRecord(callID string, ports [2]int, a, b netip.AddrPort, version uint64) SessionRecord {
	return SessionRecord{
		CallID: callID, State: StateAnswered, Created: time.Now().Add(-10 * time.Minute), Version: version,
		Streams: []StreamRecord{{Ports: ports, SDP: [2]netip.AddrPort{a, b}, Clock: [2]uint32{8000, 8000}}},
	}
}

// TestReplicaLivesWhileHolderHasIt: a standby receives no packets, so an
// imported session must outlive idle_timeout as long as the holder's
// keep-alives come, end when they stop (bounded expiry), end at once on a
// released record, and never come back from a stale record reordered
// behind the release.
func TestReplicaLivesWhileHolderHasIt(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	r, _, clk := newClockedRelay(t, "32200-32299", func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	setReplicaTTL(r, ttl)
	a, b := netip.MustParseAddrPort("10.1.1.1:5000"), netip.MustParseAddrPort("10.2.2.2:6000")
	old := answeredRecord("old", [2]int{32200, 32202}, a, b, 1)
	rel := answeredRecord("rel", [2]int{32204, 32206}, a, b, 1)
	for _, rec := range []SessionRecord{old, rel} {
		if err := r.Import(rec); err != nil {
			t.Fatal(err)
		}
	}
	// 2.5 s: longer than idle_timeout and than the replica lifetime, kept
	// alive by the holder's keep-alives only.
	for range 10 {
		sweepAfter(r, clk, 250*time.Millisecond)
		if stale := r.KeepAlive(KeepAlive{Sessions: []AliveSession{{CallID: "old", Version: 1}, {CallID: "rel", Version: 1}}}); stale != 0 {
			t.Fatalf("keep-alive reported %d stale sessions", stale)
		}
	}
	if !hasSession(r, "old") || !hasSession(r, "rel") {
		t.Fatalf("replicas ended although the holder keeps them: %+v", r.Snapshot())
	}

	if err := r.Import(releasedRecord("rel", 0)); err != nil {
		t.Fatal(err)
	}
	if hasSession(r, "rel") {
		t.Fatal("released record did not end the replica")
	}
	if err := r.Import(rel); err != nil { // a stale record arriving late
		t.Fatal(err)
	}
	if hasSession(r, "rel") {
		t.Fatal("a record older than the release brought the session back")
	}

	// The holder stops mentioning "old" (it died, or lost the release):
	// it still lives for a while, then expires.
	sweepAfter(r, clk, ttl)
	if !hasSession(r, "old") {
		t.Fatal("replica expired before its lifetime without keep-alives")
	}
	sweepAfter(r, clk, time.Millisecond)
	mustBeGone(t, r, "old")
	if n := r.pool.free(); n != r.pool.size() {
		t.Fatalf("%d of %d port pairs free after the replicas ended", n, r.pool.size())
	}
}

// TestReplicaTakesIdleRulesOnPackets: once packets reach a replica (this
// proxy now holds the VIP), idle_timeout applies as for any session.
func TestReplicaTakesIdleRulesOnPackets(t *testing.T) {
	const idle = 300 * time.Millisecond
	r, _, clk := newClockedRelay(t, "32300-32399", func(c *Config) { c.IdleTimeout = idle })
	setReplicaTTL(r, 30*time.Second)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	rec := answeredRecord("live", [2]int{32300, 32302}, a.addr(), b.addr(), 1)
	if err := r.Import(rec); err != nil {
		t.Fatal(err)
	}
	// Packets arrive (after the import): leg A sends to the port facing A,
	// B gets it from the port facing B.
	clk.advance(time.Millisecond)
	mustRelay(t, a, relayAP(32300), b, relayAP(32302))
	sweepAfter(r, clk, idle)
	if !hasSession(r, "live") {
		t.Fatal("session ended before idle_timeout")
	}
	sweepAfter(r, clk, time.Millisecond) // idle 300 ms, not the 30 s replica lifetime
	mustBeGone(t, r, "live")
}

// TestRefreshAdoptsReplicas: the holder's Refresh makes replicas its own, so
// a new holder applies idle_timeout from the takeover on.
func TestRefreshAdoptsReplicas(t *testing.T) {
	const idle = 300 * time.Millisecond
	r, _, clk := newClockedRelay(t, "32400-32449", func(c *Config) { c.IdleTimeout = idle })
	setReplicaTTL(r, 30*time.Second)
	rec := answeredRecord("held", [2]int{32400, 32402}, netip.MustParseAddrPort("10.1.1.1:5000"), netip.MustParseAddrPort("10.2.2.2:6000"), 7)
	rec.CallerTag = "tagA"
	if err := r.Import(rec); err != nil {
		t.Fatal(err)
	}
	sweepAfter(r, clk, 700*time.Millisecond)
	if !hasSession(r, "held") {
		t.Fatal("replica ended by idle_timeout on the standby")
	}
	changed, alive := r.Refresh()
	// Nothing changed here since the import: the new holder re-announces
	// the session at the version it got, the twin ignores it as not newer.
	if len(changed) != 1 || changed[0].Version != 7 || changed[0].CallerTag != "tagA" || len(alive) != 0 {
		t.Fatalf("first Refresh after takeover: changed %+v alive %+v", changed, alive)
	}
	sweepAfter(r, clk, idle)
	if !hasSession(r, "held") {
		t.Fatal("adopted session ended before idle_timeout from the takeover")
	}
	sweepAfter(r, clk, time.Millisecond)
	mustBeGone(t, r, "held")
}

// TestRefreshReportsLatchChanges: the holder's Refresh reports the records
// whose latches changed since the previous Refresh (the Anchor-time record
// has none yet) and a keep-alive for the rest; the standby learns the
// latched NAT address from it.
func TestRefreshReportsLatchChanges(t *testing.T) {
	r1, _ := newTestRelay(t, "32450-32499", nil)
	r2, _ := newTestRelay(t, "32500-32599", nil)
	a, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
	r1.SetCallerTag("c1", "from-a")
	o, _ := r1.AnchorFrom("c1", true, a.addr().Addr(), offer(netip.MustParseAddrPort("10.1.1.1:5000"), "")) // NATed A
	ans, _ := r1.Anchor("c1", false, offer(b.addr(), ""))
	if _, err := r1.Anchor("c2", true, offer(netip.MustParseAddrPort("10.1.1.1:5002"), "")); err != nil {
		t.Fatal(err)
	}
	changed, alive := r1.Refresh()
	if len(changed) != 2 || len(alive) != 0 {
		t.Fatalf("first Refresh: %d changed, %d alive; want 2, 0", len(changed), len(alive))
	}
	v1 := changed[0].Version
	if changed[0].CallerTag != "from-a" || changed[0].Streams[0].Latched[LegA].IsValid() || changed[0].Streams[0].Signal[LegA] != a.addr().Addr() {
		t.Fatalf("first record: %+v", changed[0])
	}
	if tag, ok := r1.CallerTag("c1"); !ok || tag != "from-a" {
		t.Fatalf("CallerTag = %q %v", tag, ok)
	}
	for _, rec := range changed {
		if err := r2.Import(rebase(rec, 50)); err != nil {
			t.Fatal(err)
		}
	}
	if changed, alive := r1.Refresh(); len(changed) != 0 || len(alive) != 2 || alive[0] != (AliveSession{CallID: "c1", Version: v1}) {
		t.Fatalf("Refresh without changes: changed %+v alive %+v", changed, alive)
	}

	mustRelay(t, a, relayAP(sdpPort(t, ans)), b, relayAP(sdpPort(t, o))) // A latches
	changed, alive = r1.Refresh()
	if len(changed) != 1 || len(alive) != 1 || changed[0].CallID != "c1" || changed[0].Version <= v1 {
		t.Fatalf("Refresh after latching: changed %+v alive %+v", changed, alive)
	}
	if got := changed[0].Streams[0].Latched[LegA]; got != a.addr() {
		t.Fatalf("latch in refreshed record = %s, want %s", got, a.addr())
	}
	if err := r2.Import(rebase(changed[0], 50)); err != nil {
		t.Fatal(err)
	}
	var got netip.AddrPort
	var signal netip.Addr
	for _, s := range r2.Snapshot() {
		if s.CallID == "c1" {
			got, signal = s.Streams[0].FromA.Latched, s.Streams[0].FromA.Signal
		}
	}
	if got != a.addr() || signal != a.addr().Addr() {
		t.Fatalf("standby latch = %s, signal %s; want %s", got, signal, a.addr())
	}
	if tag, ok := r2.CallerTag("c1"); !ok || tag != "from-a" {
		t.Fatalf("standby CallerTag = %q %v", tag, ok)
	}
	if stale := r2.KeepAlive(KeepAlive{Sessions: alive}); stale != 0 {
		t.Fatalf("standby reports %d stale sessions", stale)
	}
}

// TestImportVersionsKeepSocketsAndCounters: a newer record with the same
// ports updates endpoints and latches in place (counters and sockets stay);
// an older or equal one is ignored.
func TestImportVersionsKeepSocketsAndCounters(t *testing.T) {
	r, _ := newTestRelay(t, "32600-32649", nil)
	a, b, c := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3"), newPhone(t, "127.0.0.4")
	v10 := answeredRecord("v", [2]int{32600, 32602}, a.addr(), b.addr(), 10)
	if err := r.Import(v10); err != nil {
		t.Fatal(err)
	}
	mustRelay(t, a, relayAP(32600), b, relayAP(32602))
	packets := func() uint64 { return r.Snapshot()[0].Streams[0].FromA.Packets }
	before := packets()
	if before == 0 {
		t.Fatal("no packets counted")
	}
	// The holder learned that B really sends from c (latched).
	v20 := v10
	v20.Version = 20
	v20.Streams = slices.Clone(v10.Streams)
	v20.Streams[0].Latched[LegB] = c.addr()
	if err := r.Import(v20); err != nil {
		t.Fatal(err)
	}
	if got := packets(); got != before {
		t.Fatalf("counters reset by an import that only changed a latch: %d -> %d", before, got)
	}
	if got := r.Snapshot()[0].Streams[0].FromB.Latched; got != c.addr() {
		t.Fatalf("latch after v20 = %s, want %s", got, c.addr())
	}
	// A stale record (reordered) names another B endpoint: ignored.
	v15 := v10
	v15.Version = 15
	v15.Streams = slices.Clone(v10.Streams)
	v15.Streams[0].SDP[LegB] = netip.MustParseAddrPort("10.9.9.9:9")
	if err := r.Import(v15); err != nil {
		t.Fatal(err)
	}
	if err := r.Import(v10); err != nil {
		t.Fatal(err)
	}
	st := r.Snapshot()[0].Streams[0].FromB
	if st.Latched != c.addr() || st.SDP != b.addr() {
		t.Fatalf("older record applied: %+v", st)
	}
	// Media now goes to the latched c, through the same sockets.
	mustRelay(t, a, relayAP(32600), c, relayAP(32602))
	if got := packets(); got <= before {
		t.Fatalf("counter did not continue: %d -> %d", before, got)
	}
}

// TestRefreshReportsIdleReleases: a session idle_timeout ended on the holder
// is announced as released by the next Refresh, so the standby does not keep
// it until its replica lifetime runs out.
func TestRefreshReportsIdleReleases(t *testing.T) {
	const idle = 300 * time.Millisecond
	r, _, clk := newClockedRelay(t, "32650-32699", func(c *Config) { c.IdleTimeout = idle })
	if _, err := r.Anchor("quiet", true, offer(netip.MustParseAddrPort("10.1.1.1:5000"), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Anchor("quiet", false, offer(netip.MustParseAddrPort("10.2.2.2:6000"), "")); err != nil {
		t.Fatal(err)
	}
	if changed, _ := r.Refresh(); len(changed) != 1 || changed[0].State != StateAnswered {
		t.Fatalf("first Refresh: %+v", changed)
	}
	sweepAfter(r, clk, idle+time.Millisecond)
	mustBeGone(t, r, "quiet")
	changed, alive := r.Refresh()
	if len(changed) != 1 || changed[0].CallID != "quiet" || changed[0].State != StateReleased || changed[0].Version == 0 || len(alive) != 0 {
		t.Fatalf("Refresh after idle release: changed %+v alive %+v", changed, alive)
	}
	if changed, _ := r.Refresh(); len(changed) != 0 {
		t.Fatalf("idle release reported twice: %+v", changed)
	}
}
