package trunk

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
)

type transition struct {
	host string
	up   bool
}

// Two provider hosts, the first configured one silent: the keepalive
// finds it down and Targets lists the live one first; when the live one
// dies and comes back, it goes down and up again.
func TestKeepaliveHostStates(t *testing.T) {
	live := testkit.StartOptionsUAS(t, "127.0.0.1", 0, 200, "udp")
	dead := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1"))
	send, _ := sipStack(t)
	tr, err := NewTrunk(trunkConfig(dead, live.Addr()), nil)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan transition, 100)
	m, _ := NewMetrics(nil)
	cfg := KeepaliveConfig{Interval: 100 * time.Millisecond, Timeout: 300 * time.Millisecond, Fall: 2, Rise: 1, From: "127.0.0.1"}
	k, err := NewKeepalive(tr, cfg, send, m, zaptest.NewLogger(t), WithTransitions(func(t Target, up bool) {
		events <- transition{t.Addr.String(), up}
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	if ts, _ := tr.Targets(ctx); ts[0].Addr.String() != dead {
		t.Fatalf("before any probe, targets %v: want the configured order", ts)
	}
	wait := func(want transition) {
		t.Helper()
		deadline := time.After(eventWait)
		for {
			select {
			case e := <-events:
				if e == want {
					return
				}
				t.Errorf("unexpected transition %+v while waiting for %+v", e, want)
			case <-deadline:
				t.Fatalf("no transition %+v within %v", want, eventWait)
			}
		}
	}
	wait(transition{dead, false})
	ts, err := tr.Targets(ctx)
	if err != nil || len(ts) != 2 || ts[0].Addr.String() != live.Addr() {
		t.Fatalf("targets %v, %v: want the live host first", ts, err)
	}
	if !k.Up(ts[0]) || k.Up(ts[1]) {
		t.Errorf("Up: live %v, dead %v", k.Up(ts[0]), k.Up(ts[1]))
	}
	live.Kill()
	wait(transition{live.Addr(), false})
	if got := testutil.ToFloat64(m.hostsUp.WithLabelValues("p1")); got != 0 {
		t.Errorf("hapbx_trunk_hosts_up = %v with both hosts down", got)
	}
	live.Restart()
	wait(transition{live.Addr(), true})
	if got := testutil.ToFloat64(m.keepalives.WithLabelValues("p1", resultTimeout)); got < 4 {
		t.Errorf("keepalive timeouts %v: want at least the 2+2 that took the hosts down", got)
	}
}
