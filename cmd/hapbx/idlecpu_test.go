package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuSeconds is the user+system CPU time of process pid so far.
func cpuSeconds(tb testing.TB, pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	u, _ := strconv.ParseFloat(f[11], 64) // utime, in clock ticks (100 Hz)
	k, _ := strconv.ParseFloat(f[12], 64) // stime
	return (u + k) / 100
}

// BenchmarkClusterIdleCPU: two `hapbx run` proxies and a witness with no
// traffic: the CPU share each proxy uses just to keep the cluster (raft
// heartbeats, lease verification, memberlist probes). It once was 0.86 of a
// core on the raft leader, when each acknowledged lease check started the
// next at once.
func BenchmarkClusterIdleCPU(b *testing.B) {
	needJoinLab(b)
	l := newJoinLab(b)
	pa := l.startProxy(0)
	l.waitJoin(pa, "pa holds the VIP with the witness", 30*time.Second, func(s joinStatus) bool {
		return s.Cluster != nil && s.Cluster.VIPHeld && s.Cluster.Quorum
	})
	pb := l.startProxy(1)
	time.Sleep(3 * time.Second)
	const span = 10 * time.Second
	a0, b0 := cpuSeconds(b, pa.proc.Cmd.Process.Pid), cpuSeconds(b, pb.proc.Cmd.Process.Pid)
	time.Sleep(span)
	a1, b1 := cpuSeconds(b, pa.proc.Cmd.Process.Pid), cpuSeconds(b, pb.proc.Cmd.Process.Pid)
	leader, follower := (a1-a0)/span.Seconds(), (b1-b0)/span.Seconds()
	b.Logf("idle cluster over %v: leader (VIP holder) %.3f of a core, follower %.3f", span, leader, follower)
	b.ReportMetric(leader, "leader-cores")
	b.ReportMetric(follower, "follower-cores")
}
