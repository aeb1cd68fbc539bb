package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logTimes returns the times of node n's log lines that contain msg.
func (l *lab) logTimes(n, msg string) []time.Time {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir, n+".log"))
	if err != nil {
		l.t.Fatal(err)
	}
	var ts []time.Time
	for _, ln := range strings.Split(string(b), "\n") {
		if !strings.Contains(ln, "\t"+msg) {
			continue
		}
		stamp, _, _ := strings.Cut(ln, "\t")
		at, err := time.Parse("2006-01-02T15:04:05.000Z0700", stamp)
		if err != nil {
			l.t.Fatalf("log line of %s without a time: %q", n, ln)
		}
		ts = append(ts, at)
	}
	return ts
}

// (c) Issue: a starved holder's lease lapsed and the VIP flapped. A holder that stalls
// for less than the lease allows (leader_lease less the heartbeat period: heartbeats
// sent before the stall still count) keeps the VIP: no removal at all. A holder whose
// heartbeats stop for longer (cut off) removes the VIP before the twin adds it.
func TestHolderStall(t *testing.T) {
	l := newLab(t)
	h := l.startTrio(100, 100, false)
	tw := other(h)
	cfg := DefaultConfig().Timing
	stall := cfg.LeaderLease - cfg.HeartbeatTimeout/5 - 70*time.Millisecond // 80 ms: shorter than the old 100 ms lease plus its tick, 70 ms of slack for scheduling
	l.mu.Lock()
	pid := l.procs[h].cmd.Process.Pid
	l.mu.Unlock()
	removed := len(l.logTimes(h, "VIP removed"))
	const stalls = 10
	for range stalls {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(stall)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if n := len(l.logTimes(h, "VIP removed")) - removed; n != 0 {
		t.Fatalf("%s removed the VIP %d times over %d stalls of %s (leader_lease %s)", h, n, stalls, stall, cfg.LeaderLease)
	}
	if hs := l.holders(); len(hs) != 1 || hs[0] != h {
		t.Fatalf("holders after the stalls: %v, want %s", hs, h)
	}

	// Longer than the lease: no heartbeat reaches a follower any more.
	l.cut(h)
	t0 := time.Now()
	for time.Since(t0) < 8*time.Second && !l.hasVIP(tw) {
		time.Sleep(10 * time.Millisecond)
	}
	if !l.hasVIP(tw) {
		t.Fatalf("%s did not take the VIP within 8 s of cutting %s off", tw, h)
	}
	rm, add := l.logTimes(h, "VIP removed"), l.logTimes(tw, "VIP added")
	if len(rm) == removed || len(add) == 0 {
		t.Fatalf("%s removals %v, %s additions %v", h, rm, tw, add)
	}
	last, took := rm[len(rm)-1], add[len(add)-1]
	if !last.Before(took) {
		t.Fatalf("%s removed the VIP at %s, %s added it at %s: two holders", h, last.Format("15:04:05.000"), tw, took.Format("15:04:05.000"))
	}
	t.Logf("cut off: %s removed the VIP %s after the cut, %s added it %s after that",
		h, last.Sub(t0).Round(time.Millisecond), tw, took.Sub(last).Round(time.Millisecond))
	l.heal(h)
}

// Figures: the trio idles for 20 s beside CPU hogs (HAPBX_BENCH_HOGS busy loops, default
// 6, on top of whatever else runs); how often the holder removed the VIP and how often
// raft's leader changed. HAPBX_BENCH=1 to run.
func TestStarvedHolderFigures(t *testing.T) {
	if os.Getenv("HAPBX_BENCH") != "1" {
		t.Skip("figures: set HAPBX_BENCH=1")
	}
	hogs := 6
	if v := os.Getenv("HAPBX_BENCH_HOGS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		hogs = n
	}
	l := newLab(t)
	h := l.startTrio(100, 100, false)
	count := func(msg string) (n int) {
		for _, node := range []string{"n1", "n2", "w"} {
			n += len(l.logTimes(node, msg))
		}
		return n
	}
	removed, leaders := count("VIP removed"), count("raft leader")
	for range hogs {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	const d = 20 * time.Second
	time.Sleep(d)
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%s idle beside %d CPU hogs (load average %s): VIP removed %d times, raft leader changes seen %d, holder at start %s, holders now %v",
		d, hogs, strings.Fields(string(load))[0], count("VIP removed")-removed, count("raft leader")-leaders, h, l.holders())
}
