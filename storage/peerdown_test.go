package storage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// stepOps lists a report's steps as "step/op".
func stepOps(r Report) []string {
	var out []string
	for _, s := range r.Steps {
		out = append(out, s.Step+"/"+s.Op)
	}
	return out
}

func fenceStep(r Report) (StepReport, bool) {
	for _, s := range r.Steps {
		if s.Step == "fence" {
			return s, true
		}
	}
	return StepReport{}, false
}

// countCalls counts calls.log lines of node with the exact command and exit.
func countCalls(calls []testkit.DRBDCall, node, what string, exit int) int {
	n := 0
	for _, cl := range calls {
		if cl.Node == node && cl.What == what && cl.Exit == exit {
			n++
		}
	}
	return n
}

// With a fence command configured, node B's peer A is not connected: told
// by the coordinator that A was stopped, B promotes without running the
// fence command; without that word (an operator's start) it fences A
// first, as before; a mere disconnection wait by the coordinator does not
// replace B's fence command; and with A back Primary, B refuses whatever
// it is told.
func TestPeerDownSkipsFenceCommand(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "B") // A is off
	pb := testkit.FreePort(t, "127.0.0.1")
	b := c.start("B", c.config("B", pb), pb)
	ctx := context.Background()

	res, err := b.client.Start(ctx, StartOptions{PeerDown: &PeerDown{Node: "asterisk1", How: PeerStopped}})
	if err != nil {
		t.Fatalf("start B with A stopped by the coordinator: %v", err)
	}
	if got := strings.Join(stepOps(res.Report), " "); !strings.HasPrefix(got, "fence/skipped drbd/start") {
		t.Fatalf("steps %s, want fence/skipped first", got)
	}
	calls := c.drbd.Calls()
	if testkit.FindCall(calls, "B", "fence A", 0) >= 0 || testkit.FindCall(calls, "B", "fence", 1) >= 0 {
		t.Fatalf("B ran its fence command although the coordinator stopped A: %+v", calls)
	}
	if testkit.FindCall(calls, "B", "drbdadm primary r0", 0) < 0 {
		t.Fatal("B not promoted")
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop B: %v", err)
	}

	// No word from the coordinator: fence first, as before.
	res, err = b.client.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatalf("start B without PeerDown: %v", err)
	}
	if fs, ok := fenceStep(res.Report); !ok || fs.Op != "start" || fs.Error != "" {
		t.Fatalf("steps %v, want a fence/start", stepOps(res.Report))
	}
	calls = c.drbd.Calls()
	fence := testkit.FindCall(calls, "B", "fence A", 0)
	if fence < 0 {
		t.Fatalf("B did not fence A without the coordinator's word: %+v", calls)
	}
	if p := testkit.LastCall(calls, "B", "drbdadm primary r0", 0); p < fence {
		t.Fatalf("B promoted (call %d) before fencing A (call %d)", p, fence)
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop B: %v", err)
	}

	// A disconnection wait is weaker than B's power-off: B still fences.
	res, err = b.client.Start(ctx, StartOptions{PeerDown: &PeerDown{Node: "asterisk1", How: PeerDisconnected, SafetyDelay: time.Hour}})
	if err != nil {
		t.Fatalf("start B after the coordinator's disconnection wait: %v", err)
	}
	if fs, ok := fenceStep(res.Report); !ok || fs.Op != "start" {
		t.Fatalf("steps %v, want a fence/start", stepOps(res.Report))
	}
	if n := countCalls(c.drbd.Calls(), "B", "fence A", 0); n != 2 {
		t.Fatalf("%d fence calls by B, want 2 (no word, disconnection wait)", n)
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop B: %v", err)
	}

	// A is back and Primary: never two primaries, whatever B is told.
	c.drbd.Write("role.A", RolePrimary)
	c.drbd.Write("up.A", "1")
	waitStatus(t, b, "B sees A Primary", func(s Status) bool { return s.PeerRole == RolePrimary && s.Connection == ConnConnected })
	before := countCalls(c.drbd.Calls(), "B", "drbdadm primary r0", 0)
	for _, how := range []string{PeerStopped, PeerFenced, PeerDisconnected} {
		res, err = b.client.Start(ctx, StartOptions{PeerDown: &PeerDown{Node: "asterisk1", How: how}})
		if !errors.Is(err, ErrPeerPrimary) || res.Code != "peer_primary" {
			t.Fatalf("start B told A %s while DRBD shows A Primary: %v (code %q), want ErrPeerPrimary", how, err, res.Code)
		}
	}
	if n := countCalls(c.drbd.Calls(), "B", "drbdadm primary r0", 0); n != before {
		t.Fatalf("B promoted while A Primary (%d promotions, was %d)", n, before)
	}
	testkit.NeverTwoPrimaries(t, c.drbd.Calls())
}

// Without a fence command (the shipped default: wait safety_delay after
// the disconnection), the coordinator's word that it fenced A spares the
// whole wait; its own disconnection wait counts towards B's safety delay;
// without a word B waits its full safety delay, as before.
func TestPeerDownSkipsSafetyDelay(t *testing.T) {
	needRoot(t)
	const delay = 3 * time.Second
	c := newCluster(t, "B") // A is off
	pb := testkit.FreePort(t, "127.0.0.1")
	cfg := c.config("B", pb)
	cfg.Fence = FenceConfig{Timeout: 5 * time.Second, SafetyDelay: delay}
	b := c.start("B", cfg, pb)
	ctx := context.Background()

	res, err := b.client.Start(ctx, StartOptions{PeerDown: &PeerDown{Node: "asterisk1", How: PeerFenced}})
	if err != nil {
		t.Fatalf("start B with A fenced by the coordinator: %v", err)
	}
	if fs, ok := fenceStep(res.Report); !ok || fs.Op != "skipped" {
		t.Fatalf("steps %v, want fence/skipped", stepOps(res.Report))
	}
	if res.Report.Duration >= delay {
		t.Fatalf("start took %s: waited the safety delay (%s) although A was fenced", res.Report.Duration, delay)
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop B: %v", err)
	}

	// The coordinator waited 2 s of B's 3: B waits the last second.
	res, err = b.client.Start(ctx, StartOptions{PeerDown: &PeerDown{Node: "asterisk1", How: PeerDisconnected, SafetyDelay: 2 * time.Second}})
	if err != nil {
		t.Fatalf("start B after the coordinator's 2s wait: %v", err)
	}
	if fs, ok := fenceStep(res.Report); !ok || fs.Op != "start" || fs.Duration < time.Second || fs.Duration >= delay {
		t.Fatalf("fence step %+v (steps %v), want a fence/start of 1s..3s", fs, stepOps(res.Report))
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop B: %v", err)
	}

	res, err = b.client.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatalf("start B without PeerDown: %v", err)
	}
	if fs, ok := fenceStep(res.Report); !ok || fs.Op != "start" || fs.Duration < delay {
		t.Fatalf("fence step %+v (steps %v), want a fence/start of at least the safety delay %s", fs, stepOps(res.Report), delay)
	}
}

// peerFencer's rules on DRBD views the stand-ins do not produce.
func TestPeerFencerRules(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Fence = FenceConfig{Timeout: time.Second, SafetyDelay: 5 * time.Second}
	a, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	one := DRBDState{Peers: []PeerState{{Name: "a", Connection: "Connecting", Role: RoleUnknown}}}
	two := DRBDState{Peers: []PeerState{{Name: "a", Connection: "Connecting"}, {Name: "c", Connection: "Connecting"}}}
	for _, tc := range []struct {
		name string
		st   DRBDState
		pd   *PeerDown
		// wantDelay: -1 = no fencer, else the PeerDisconnectFencer's delay
		wantDelay time.Duration
	}{
		{"no word", one, nil, 5 * time.Second},
		{"stopped", one, &PeerDown{Node: "x", How: PeerStopped}, -1},
		{"fenced", one, &PeerDown{Node: "x", How: PeerFenced}, -1},
		{"longer wait", one, &PeerDown{Node: "x", How: PeerDisconnected, SafetyDelay: 6 * time.Second}, -1},
		{"shorter wait", one, &PeerDown{Node: "x", How: PeerDisconnected, SafetyDelay: 2 * time.Second}, 3 * time.Second},
		{"two peers gone", two, &PeerDown{Node: "x", How: PeerFenced}, 5 * time.Second},
		{"unknown how", one, &PeerDown{Node: "x", How: "rebooted"}, 5 * time.Second},
		{"no node", one, &PeerDown{How: PeerStopped}, 5 * time.Second},
	} {
		f, why := a.peerFencer(tc.st, tc.pd)
		switch {
		case tc.wantDelay < 0 && f != nil:
			t.Errorf("%s: fencer %+v, want none", tc.name, f)
		case tc.wantDelay >= 0 && f == nil:
			t.Errorf("%s: no fencer, want one waiting %s", tc.name, tc.wantDelay)
		case tc.wantDelay >= 0:
			if pf, ok := f.(PeerDisconnectFencer); !ok || pf.SafetyDelay != tc.wantDelay {
				t.Errorf("%s: fencer %+v, want a PeerDisconnectFencer waiting %s", tc.name, f, tc.wantDelay)
			}
			if (tc.pd == nil) != (why == "") {
				t.Errorf("%s: why %q", tc.name, why)
			}
		}
	}
}
