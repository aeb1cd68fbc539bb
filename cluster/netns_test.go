package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

func other(n string) string {
	if n == "n1" {
		return "n2"
	}
	return "n1"
}

// startTrio starts n1, n2 and the witness and waits for one holder.
func (l *lab) startTrio(p1, p2 int, failback bool) string {
	l.start(l.nodeConfig("n1", p1, failback), 0, 0)
	l.start(l.nodeConfig("n2", p2, failback), 0, 0)
	l.start(l.nodeConfig("w", 0, failback), 0, 0)
	h := l.waitHolder("", 15*time.Second)
	l.waitStable(10*time.Second, "n1", "n2", "w")
	return h
}

// measureKill SIGKILLs the holder and returns how long until the twin has the VIP.
func (l *lab) measureKill(holder string) time.Duration {
	l.t.Helper()
	twin := other(holder)
	t0 := time.Now()
	l.killNode(holder)
	for time.Since(t0) < 5*time.Second {
		if l.hasVIP(twin) {
			return time.Since(t0)
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.t.Fatalf("VIP not on %s within 5s of killing %s", twin, holder)
	return 0
}

// (a) SIGKILL the holder: the twin has the VIP within 1.5 s and answers the client.
func TestFailoverSIGKILL(t *testing.T) {
	l := newLab(t)
	h := l.startTrio(150, 100, false)
	if d, got := askUntil(t, h, 3*time.Second); d < 0 {
		t.Fatalf("client got %q from the VIP, want the holder %s", got, h)
	}
	d := l.measureKill(h)
	twin := other(h)
	t.Logf("SIGKILL %s -> VIP on %s after %s", h, twin, d)
	if d > 1500*time.Millisecond {
		t.Fatalf("failover took %s, want <= 1.5s", d)
	}
	// The client's ARP entry must follow the gratuitous ARP: the first answers after the
	// takeover come from the new holder without waiting for neighbour re-resolution.
	ad, got := askUntil(t, twin, time.Second)
	if ad < 0 {
		t.Fatalf("client reached %q through the VIP, want %s (ARP entry not updated?)", got, twin)
	}
	t.Logf("client answered by %s %s after the VIP moved", twin, ad)
	if hs := l.holders(); !slices.Equal(hs, []string{twin}) {
		t.Fatalf("holders after failover: %v", hs)
	}
}

// (b) partitions: never two holders; a holder cut from everyone releases the VIP.
func TestPartition(t *testing.T) {
	l := newLab(t)
	l.broadcast = true
	h := l.startTrio(100, 100, false)
	tw := other(h)
	l.waitFullyReplicated(5 * time.Second)

	t.Run("pair cut, both see the witness", func(t *testing.T) {
		l.cut("n1", "n2")
		l.cut("n2", "n1")
		seq := l.watchNoSplit(3 * time.Second)
		t.Logf("holders seen: %v", seq)
		// The holder keeps its quorum with the witness, so nothing should move.
		if hs := l.holders(); len(hs) != 1 {
			t.Fatalf("holders with the pair cut: %v", hs)
		}
		l.heal("n1")
		l.heal("n2")
		l.watchNoSplit(2 * time.Second)
		l.waitStable(10*time.Second, "n1", "n2", "w")
		// Records broadcast while the pair was cut reach the other side after the heal.
		l.waitFullyReplicated(5 * time.Second)
	})

	t.Run("holder cut from everyone", func(t *testing.T) {
		h = l.waitHolder("", 5*time.Second)
		tw = other(h)
		l.cut(h)
		t0 := time.Now()
		seq := l.watchNoSplit(1500 * time.Millisecond)
		for time.Since(t0) < 8*time.Second && !l.hasVIP(tw) {
			seq = append(seq, l.watchNoSplit(100*time.Millisecond)...)
		}
		seq = append(seq, l.watchNoSplit(time.Second)...)
		t.Logf("holders seen (50 ms samples): %v", compact(seq))
		if l.hasVIP(h) {
			t.Fatalf("%s still holds the VIP without quorum", h)
		}
		if !l.hasVIP(tw) {
			t.Fatalf("%s did not take the VIP within 8 s", tw)
		}
		l.heal(h)
		seq = l.watchNoSplit(3 * time.Second)
		t.Logf("after heal: %v", seq)
		l.waitStable(10*time.Second, "n1", "n2", "w")
		if hs := l.holders(); len(hs) != 1 {
			t.Fatalf("holders after heal: %v", hs)
		}
		l.waitFullyReplicated(5 * time.Second)
	})
}

// Witness dies: nothing moves. Then the twin dies too: the survivor has no quorum and
// must give the VIP up.
func TestWitnessThenTwinDie(t *testing.T) {
	l := newLab(t)
	h := l.startTrio(100, 100, false)
	l.killNode("w")
	seq := l.watchNoSplit(2 * time.Second)
	if !slices.Equal(compact(seq), []string{h}) {
		t.Fatalf("witness died: VIP should stay on %s; seen %v", h, seq)
	}
	l.killNode(other(h))
	t0 := time.Now()
	for time.Since(t0) < 3*time.Second && l.hasVIP(h) {
		time.Sleep(10 * time.Millisecond)
	}
	if l.hasVIP(h) {
		t.Fatalf("%s alone (1 of 3 voters) still holds the VIP", h)
	}
	t.Logf("%s alone released the VIP %s after the second death", h, time.Since(t0).Round(time.Millisecond))
	testkit.Eventually(t, time.Second, "the lone survivor's status without quorum and VIP", func() bool {
		s := l.status(h)
		return !s.Quorum && !s.VIPHeld
	})
}

// ping_targets: a holder that cannot reach its ping targets gives the VIP to the twin.
func TestPingTargets(t *testing.T) {
	l := newLab(t)
	l.mod = func(c *Config) {
		c.PingTargets = []string{"10.213.0.100:9"} // the client: port closed, a refusal counts as reached
		c.PingInterval = 200 * time.Millisecond
		c.PingTimeout = 200 * time.Millisecond
	}
	h := l.startTrio(100, 100, false)
	tw := other(h)
	l.cut(h, "cl")
	t0 := time.Now()
	var seq []string
	for time.Since(t0) < 5*time.Second && !slices.Equal(l.holders(), []string{tw}) {
		seq = append(seq, l.watchNoSplit(100*time.Millisecond)...)
	}
	if !slices.Equal(l.holders(), []string{tw}) {
		t.Fatalf("%s lost its ping target but %s did not take the VIP; seen %v", h, tw, compact(seq))
	}
	t.Logf("%s lost its ping target; VIP on %s after %s, seen %v", h, tw, time.Since(t0).Round(time.Millisecond), compact(seq))
	testkit.Eventually(t, time.Second, h+"'s status saying ping_ok false", func() bool { return !l.status(h).PingOK })
	l.watchNoSplit(time.Second)
}

// (c) failback on: the higher priority node takes the VIP back when it returns; off:
// the survivor keeps it.
func TestFailback(t *testing.T) {
	for _, fb := range []bool{true, false} {
		t.Run("failback="+strconv.FormatBool(fb), func(t *testing.T) {
			l := newLab(t)
			h := l.startTrio(200, 100, fb)
			if fb {
				h = l.waitHolder("n1", 10*time.Second)
			}
			tw := other(h)
			l.killNode(h)
			l.waitHolder(tw, 3*time.Second)
			prio := 200
			if h == "n2" {
				prio = 100
			}
			p := l.start(l.nodeConfig(h, prio, fb), 0, 0)
			t0 := time.Now()
			if fb && h == "n1" {
				deadline := time.Now().Add(15 * time.Second)
				var seq []string
				back := func() bool { return p.ready.Load() && slices.Equal(l.holders(), []string{"n1"}) }
				for time.Now().Before(deadline) && !back() {
					seq = append(seq, l.watchNoSplit(100*time.Millisecond)...)
				}
				if !back() {
					t.Fatalf("n1 (priority 200) did not take the VIP back; seen %v", seq)
				}
				l.watchNoSplit(time.Second)
				t.Logf("failback to n1 %s after its restart, holders seen %v", time.Since(t0).Round(time.Millisecond), compact(seq))
				return
			}
			seq := l.watchNoSplit(4 * time.Second)
			if slices.Contains(seq, h) || !l.hasVIP(tw) {
				t.Fatalf("without failback %s should keep the VIP; seen %v", tw, seq)
			}
			if len(seq) > 1 {
				t.Logf("note: %s's VIP lease lapsed briefly (late quorum acks under load): %v", tw, seq)
			}
		})
	}
}

func compact(s []string) []string { return slices.Compact(slices.Clone(s)) }

// (d) state: 100k records of 300 bytes on n1; n2 joins and gets them all.
func TestStateSyncOnJoin(t *testing.T) {
	l := newLab(t)
	const n = 100000
	l.start(l.nodeConfig("n1", 100, false), n, 0)
	l.start(l.nodeConfig("w", 0, false), 0, 0)
	l.waitHolder("n1", 15*time.Second)
	p := l.start(l.nodeConfig("n2", 100, false), 0, n)
	t0 := time.Now()
	for {
		select {
		case line := <-p.lines:
			if f := strings.Fields(line); len(f) == 3 && f[0] == "STATE_COMPLETE" {
				// The figure (goal: 5 s) is measured by the JoinSync benchmark
				// (make bench); here it only has to complete, whatever else
				// shares the two cores.
				t.Logf("n2 has %s records %s ms after its Start (%s after launch)", f[1], f[2], time.Since(t0).Round(time.Millisecond))
				if f[1] != strconv.Itoa(n) {
					t.Fatalf("n2 has %s records, want %d", f[1], n)
				}
				return
			}
		case <-p.done:
			t.Fatal("n2 exited")
		case <-time.After(60 * time.Second):
			t.Fatal("n2 did not get all records within 60 s")
		}
	}
}

// Figures: 20 × SIGKILL of the holder, VIP on the twin (shipped timing defaults).
// HAPBX_BENCH=1 to run.
func TestFailoverFigures(t *testing.T) {
	if os.Getenv("HAPBX_BENCH") != "1" {
		t.Skip("figures: set HAPBX_BENCH=1")
	}
	l := newLab(t)
	h := l.startTrio(100, 100, false)
	var ds []time.Duration
	const reps = 20
	for i := 0; i < reps; i++ {
		d := l.measureKill(h)
		ds = append(ds, d)
		t.Logf("rep %d: SIGKILL %s -> VIP on %s in %s", i+1, h, other(h), d.Round(time.Millisecond))
		if d > 450*time.Millisecond && os.Getenv("HAPBX_BENCH_DEBUG") != "" {
			for _, n := range []string{other(h), "w"} {
				b, _ := os.ReadFile(filepath.Join(l.dir, n+".log"))
				var lines []string
				for _, ln := range strings.Split(string(b), "\n") {
					if !strings.Contains(ln, "failed to heartbeat") && !strings.Contains(ln, "appendEntries") && !strings.Contains(ln, "DEBUG") {
						lines = append(lines, ln)
					}
				}
				t.Logf("---- %s ----\n%s", n, strings.Join(lines[max(0, len(lines)-60):], "\n"))
			}
		}
		l.start(l.nodeConfig(h, 100, false), 0, 0)
		l.waitStable(15*time.Second, "n1", "n2", "w")
		time.Sleep(500 * time.Millisecond)
		h = l.waitHolder("", 5*time.Second)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("failover over %d SIGKILLs: min %s, median %s, p95 %s, max %s (target p95 <= 450ms)",
		reps, r(ds[0]), r(ds[reps/2]), r(ds[reps*95/100-1]), r(ds[reps-1]))
}

// A VIP left on the interface (a crash) is removed by Start before the node joins:
// n1 starts alone, so it cannot become leader, and the address must disappear while
// Start still waits (before READY), and stay gone.
func TestStaleVIPRemovedAtStart(t *testing.T) {
	l := newLab(t)
	sh(t, "ip", "-n", nsName("n1"), "addr", "add", labVIP+"/24", "dev", labIf)
	if !l.hasVIP("n1") {
		t.Fatal("could not put the stale VIP on n1")
	}
	p := l.start(l.nodeConfig("n1", 100, false), 0, 0)
	goneBeforeReady := false
	deadline := time.Now().Add(10 * time.Second)
	for !p.ready.Load() && time.Now().Before(deadline) {
		if !l.hasVIP("n1") {
			goneBeforeReady = !p.ready.Load()
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	testkit.Eventually(t, 10*time.Second, "n1 to start", p.ready.Load)
	if l.hasVIP("n1") {
		t.Fatal("the stale VIP is still on n1 after Start")
	}
	if !goneBeforeReady {
		t.Fatal("the stale VIP was not removed before Start returned")
	}
	l.watchNoSplit(500 * time.Millisecond)
	if l.hasVIP("n1") {
		t.Fatal("n1 took the VIP without a quorum")
	}
	testkit.Eventually(t, 2*time.Second, "n1's status", func() bool { return l.status("n1").Name == "n1" })
	if s := l.status("n1"); s.VIPHeld || len(s.VIPHolders) != 0 {
		t.Fatalf("n1 status: vip_held %v vip_holders %v", s.VIPHeld, s.VIPHolders)
	}
	b, err := os.ReadFile(filepath.Join(l.dir, "n1.log"))
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	stale, removed, started := strings.Index(log, "stale VIP found at start"), strings.Index(log, "VIP removed"), strings.Index(log, "cluster started")
	if stale < 0 || removed < stale || started < removed {
		t.Fatalf("log order: stale at %d, removed at %d, started at %d:\n%s", stale, removed, started, log)
	}
}
