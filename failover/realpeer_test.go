package failover_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
	"go.uber.org/zap/zaptest"
)

// Two SIPp backends watched by a real Checker feeding a Selector: the
// preferred one is killed, the standby takes over with a BackendDown event;
// when the preferred one returns, failback decides who is active.
func TestFailoverWithRealChecker(t *testing.T) {
	for _, failback := range []bool{true, false} {
		name := "failback"
		if !failback {
			name = "no-failback"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ip := testkit.RandomIP()
			pbx1 := testkit.StartOptionsUAS(t, ip, 0, 200, "udp")
			pbx2 := testkit.StartOptionsUAS(t, ip, 0, 200, "udp")
			hcfg := health.DefaultConfig()
			hcfg.Require = []string{health.CheckSIP}
			log := zaptest.NewLogger(t)
			chk, err := health.New(hcfg, []health.Target{
				{Name: "pbx1", Address: pbx1.Addr()}, {Name: "pbx2", Address: pbx2.Addr()},
			}, log.Named("health"), nil)
			if err != nil {
				t.Fatal(err)
			}
			// Selector and Checker start together, as in hapbx run: whichever
			// backend rises first, pbx1 (preferred) must be active once
			// both have a verdict, with or without failback.
			sel, err := failover.New(failover.Config{Routing: failover.RoutingActiveStandby, Failback: failback},
				[]string{"pbx1", "pbx2"}, log.Named("failover"), nil, failover.WithStartupSettle(failover.StartupSettle(hcfg)), failover.WithHealth(chk))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{}, 2)
			go func() { _ = sel.Run(ctx); done <- struct{}{} }()
			go func() { _ = chk.Run(ctx); done <- struct{}{} }()
			t.Cleanup(func() { cancel(); <-done; <-done })
			events := sel.Subscribe(ctx)

			testkit.Eventually(t, 3*time.Second, "both up, pbx1 active", func() bool {
				return sel.Active() == "pbx1" && slices.Equal(sel.Candidates("k"), []string{"pbx1", "pbx2"})
			})
			pbx1.Kill()
			killed := time.Now()
			testkit.Eventually(t, 2*time.Second, "pbx2 active", func() bool {
				return sel.Active() == "pbx2" && slices.Equal(sel.Candidates("k"), []string{"pbx2"})
			})
			t.Logf("switched %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
			sawDown := false
			for !sawDown {
				select {
				case e := <-events:
					sawDown = e.Kind == failover.BackendDown && e.Backend == "pbx1"
				case <-time.After(time.Second):
					t.Fatal("no BackendDown event for pbx1")
				}
			}

			pbx1.Restart()
			testkit.Eventually(t, 3*time.Second, "pbx1 routable again", func() bool { return slices.Contains(sel.Candidates("k"), "pbx1") })
			want := "pbx2"
			if failback {
				want = "pbx1"
			}
			time.Sleep(hcfg.Interval) // a few more probes must not change it
			if got := sel.Active(); got != want {
				t.Fatalf("after pbx1 returned: active %q, want %q", got, want)
			}
			if c := sel.Candidates("k"); c[0] != want {
				t.Fatalf("candidates %v, want %s first", c, want)
			}
		})
	}
}
