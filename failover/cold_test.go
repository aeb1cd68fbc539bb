package failover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/storage"
)

// The coordinator's ordering, against fake agents that record what they
// are asked; the real agents are exercised end to end in cmd/hapbx.

type journal struct {
	mu    sync.Mutex
	steps []string
}

func (j *journal) add(s string) { j.mu.Lock(); j.steps = append(j.steps, s); j.mu.Unlock() }
func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.steps...)
}

type fakeAgent struct {
	name string
	j    *journal
	hs   *fakeHealth

	mu          sync.Mutex
	st          storage.Status
	unreachable bool
	stopKeeps   bool                   // stop "succeeds" but DRBD stays Primary
	startErr    error                  // Start answers it (the group did not start)
	starts      []storage.StartOptions // as asked, in order
}

// startOpts is what the last Start was asked with.
func (a *fakeAgent) startOpts(t *testing.T) storage.StartOptions {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.starts) == 0 {
		t.Fatalf("agent %s never asked to start", a.name)
	}
	return a.starts[len(a.starts)-1]
}

func (a *fakeAgent) Status(ctx context.Context) (storage.Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.unreachable {
		return storage.Status{}, errors.New("connection refused")
	}
	return a.st, nil
}

func (a *fakeAgent) Start(ctx context.Context, opts storage.StartOptions) (storage.Result, error) {
	a.j.add("start " + a.name)
	a.mu.Lock()
	a.starts = append(a.starts, opts)
	if a.unreachable {
		a.mu.Unlock()
		return storage.Result{}, errors.New("connection refused")
	}
	if a.startErr != nil {
		a.mu.Unlock()
		return storage.Result{}, a.startErr
	}
	a.st.State, a.st.DRBDRole = storage.StateStarted, storage.RolePrimary
	st := a.st
	a.mu.Unlock()
	a.hs.send(a.name, health.StateUp)
	return storage.Result{Status: st, Report: storage.Report{Steps: []storage.StepReport{{Step: "service", ReadyAfter: 5 * time.Millisecond}}}}, nil
}

func (a *fakeAgent) Stop(ctx context.Context) (storage.Result, error) {
	a.j.add("stop " + a.name)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.unreachable {
		return storage.Result{}, errors.New("connection refused")
	}
	a.st.State = storage.StateStopped
	if !a.stopKeeps {
		a.st.DRBDRole = storage.RoleSecondary
	}
	return storage.Result{Status: a.st}, nil
}

type fakeFence struct {
	name string
	j    *journal
	err  error
}

func (f fakeFence) Fence(context.Context) error {
	if f.err != nil {
		f.j.add("fence " + f.name + " failed")
		return f.err
	}
	f.j.add("fence " + f.name)
	return nil
}

type fakeHealth struct{ ch chan health.Change }

func (h *fakeHealth) Subscribe(ctx context.Context) <-chan health.Change { return h.ch }
func (h *fakeHealth) send(name string, to health.State) {
	h.ch <- health.Change{Name: name, To: to, Reason: "test", At: time.Now()}
}

type rig struct {
	j      *journal
	hs     *fakeHealth
	a, b   *fakeAgent
	c      *Coordinator
	leader bool
	mu     sync.Mutex
}

// newRig: A holds the group (started, Primary, up in health), B is a
// fit standby.
func newRig(t *testing.T, fenceErr error, opts ...ColdOption) *rig {
	return newRigFence(t, fenceErr, false, opts...)
}

// newRigFence: with peerWait, the nodes have no fence command and the
// coordinator falls back to waiting for the DRBD disconnection.
func newRigFence(t *testing.T, fenceErr error, peerWait bool, opts ...ColdOption) *rig {
	r := &rig{j: &journal{}, hs: &fakeHealth{ch: make(chan health.Change, 64)}, leader: true}
	r.a = &fakeAgent{name: "A", j: r.j, hs: r.hs, st: storage.Status{State: storage.StateStarted, DRBDRole: storage.RolePrimary, Disk: storage.DiskUpToDate}}
	r.b = &fakeAgent{name: "B", j: r.j, hs: r.hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: storage.DiskUpToDate}}
	cfg := DefaultColdConfig()
	cfg.Enabled, cfg.PollInterval, cfg.UpTimeout = true, 20*time.Millisecond, 2*time.Second
	opts = append([]ColdOption{WithLeader(func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.leader })}, opts...)
	nodes := []ColdNode{
		{Name: "A", Agent: r.a, Fence: fakeFence{"A", r.j, fenceErr}},
		{Name: "B", Agent: r.b, Fence: fakeFence{"B", r.j, fenceErr}},
	}
	if peerWait {
		for i := range nodes {
			nodes[i].Fence, nodes[i].FenceTimeout, nodes[i].SafetyDelay = nil, 300*time.Millisecond, 50*time.Millisecond
		}
	}
	c, err := NewCoordinator(cfg, nodes, zaptest.NewLogger(t), nil, append(opts, WithColdHealth(r.hs))...)
	if err != nil {
		t.Fatal(err)
	}
	r.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	r.hs.send("A", health.StateUp)
	r.hs.send("B", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "holder A learnt", func() bool { return c.Holder() == "A" && c.Status().Nodes[0].Health == "up" })
	return r
}

func (r *rig) want(t *testing.T, steps ...string) {
	t.Helper()
	if got := r.j.get(); strings.Join(got, ", ") != strings.Join(steps, ", ") {
		t.Fatalf("steps %q, want %q", got, steps)
	}
}

func TestColdDownHolderStoppedThenStandbyStarted(t *testing.T) {
	r := newRig(t, nil)
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "B holds and is up", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Phase == PhaseIdle && s.Last != nil })
	r.want(t, "stop A", "start B")
	if l := r.c.Status().Last; l.Fenced || l.From != "A" || l.To != "B" || l.UpAt.IsZero() || l.ServiceReady != 5*time.Millisecond {
		t.Fatalf("report %+v", l)
	}
}

func TestColdUnreachableHolderFencedFirst(t *testing.T) {
	r := newRig(t, nil)
	r.a.mu.Lock()
	r.a.unreachable = true
	r.a.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Phase == PhaseIdle && s.Last != nil })
	r.want(t, "stop A", "fence A", "start B")
	if !r.c.Status().Last.Fenced {
		t.Fatal("report does not say fenced")
	}
}

func TestColdStopLeavingPrimaryIsFenced(t *testing.T) {
	r := newRig(t, nil)
	r.a.mu.Lock()
	r.a.stopKeeps = true
	r.a.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil })
	r.want(t, "stop A", "fence A", "start B")
}

func TestColdFenceFailureBlocks(t *testing.T) {
	r := newRig(t, errors.New("BMC unreachable"))
	r.a.mu.Lock()
	r.a.unreachable = true
	r.a.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "blocked", func() bool { return strings.Contains(r.c.Status().Blocked, "fencing failed") })
	time.Sleep(100 * time.Millisecond) // polls must not retry at once
	r.want(t, "stop A", "fence A failed")
	if s := r.c.Status(); s.Holder != "A" || s.Phase != PhaseBlocked {
		t.Fatalf("status %+v", s)
	}
}

func TestColdSplitBrainBlocksBeforeTouchingA(t *testing.T) {
	r := newRig(t, nil)
	r.b.mu.Lock()
	r.b.st.SplitBrain, r.b.st.SplitBrainReason = true, "events2: StandAlone"
	r.b.mu.Unlock()
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "blocked", func() bool { return strings.Contains(r.c.Status().Blocked, "split brain") })
	r.want(t)
}

func TestColdNotLeaderDoesNothing(t *testing.T) {
	r := newRig(t, nil)
	r.mu.Lock()
	r.leader = false
	r.mu.Unlock()
	r.hs.send("A", health.StateDown)
	time.Sleep(150 * time.Millisecond)
	r.want(t)
	if _, err := r.c.Switchover(context.Background(), "B"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("switchover as follower: %v", err)
	}
}

// polls runs n polls of the coordinator (besides its own Run loop's), so
// a test knows that at least n have seen the state it set.
func (r *rig) polls(n int) {
	for range n {
		r.c.poll(context.Background())
	}
}

func (r *rig) setLeader(v bool) {
	r.mu.Lock()
	r.leader = v
	r.mu.Unlock()
}

// droppedLog tees the coordinator's log into an observer, so a test can
// wait until a follower has dropped a failover trigger.
func droppedLog(t *testing.T) (ColdOption, func() int) {
	core, logs := observer.New(zap.InfoLevel)
	opt := func(c *Coordinator) { c.log = zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)) }
	return opt, func() int {
		return logs.FilterMessage("cold standby: not the leader; leaving the failover to it").Len()
	}
}

// loseHolderAsFollower: A goes down while this proxy does not lead, and
// the coordinator has dropped the trigger.
func loseHolderAsFollower(t *testing.T, opts ...ColdOption) *rig {
	t.Helper()
	opt, dropped := droppedLog(t)
	r := newRig(t, nil, append(opts, opt)...)
	r.setLeader(false)
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "trigger dropped as follower", func() bool { return dropped() == 1 })
	return r
}

// The holder went down while this proxy's leadership had lapsed (a raft
// lease under CPU load): once it leads again, the group must still move.
func TestColdHolderLostWhileFollowerMovedOnLeadership(t *testing.T) {
	r := loseHolderAsFollower(t)
	r.want(t)
	r.setLeader(true)
	testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
	r.want(t, "stop A", "start B")
	if l := r.c.Status().Last; l.From != "A" || l.To != "B" || l.UpAt.IsZero() {
		t.Fatalf("report %+v", l)
	}
}

// An idle leader whose holder is up does nothing however often it polls,
// also right after it became leader again; nor does one whose holder went
// down as follower but came back before it led again.
func TestColdIdlePollWithHealthyHolderDoesNothing(t *testing.T) {
	t.Run("holder up", func(t *testing.T) {
		r := newRig(t, nil)
		r.setLeader(false)
		r.c.poll(context.Background())
		r.setLeader(true)
		r.polls(5)
		r.want(t)
		if s := r.c.Status(); s.Holder != "A" || s.Phase != PhaseIdle || s.Last != nil {
			t.Fatalf("status %+v", s)
		}
	})
	t.Run("holder back up before leadership", func(t *testing.T) {
		r := loseHolderAsFollower(t)
		r.hs.send("A", health.StateUp)
		testkit.Eventually(t, 3*time.Second, "A up again", func() bool { return r.c.Status().Nodes[0].Health == "up" })
		r.setLeader(true)
		r.polls(5)
		r.want(t)
		if s := r.c.Status(); s.Holder != "A" || s.Last != nil {
			t.Fatalf("status %+v", s)
		}
	})
}

// The retry is one failover: when it fails (B's group does not start) the
// next polls do not move the group again (no stop of B, no start of A).
func TestColdMissedFailoverRetriedOnce(t *testing.T) {
	r := loseHolderAsFollower(t)
	r.b.mu.Lock()
	r.b.startErr = errors.New("service start: timeout")
	r.b.mu.Unlock()
	r.setLeader(true)
	testkit.Eventually(t, 3*time.Second, "retry ran", func() bool { s := r.c.Status(); return s.Last != nil && s.Phase == PhaseIdle })
	r.polls(5)
	r.want(t, "stop A", "start B")
	if l := r.c.Status().Last; l.From != "A" || l.To != "B" || !strings.Contains(l.Error, "service start") {
		t.Fatalf("report %+v", l)
	}
}

// When this proxy leads again while the previous leader's move is still
// under way (an agent stopping or starting the group), the agents' state
// says so and it does not start a second move; once that move is done
// the group is where the other proxy put it.
func TestColdMissedFailoverLeavesOtherLeadersMove(t *testing.T) {
	r := loseHolderAsFollower(t)
	r.setLeader(true)
	for _, st := range []struct {
		what          string
		aState, aRole string
		bState, bRole string
		holder        string
	}{
		{"the other proxy asked A to stop", storage.StateStopping, storage.RolePrimary, storage.StateStopped, storage.RoleSecondary, "A"},
		{"A stopped, B starting", storage.StateStopped, storage.RoleSecondary, storage.StateStarting, storage.RolePrimary, "B"},
		{"B started, not yet up in health", storage.StateStopped, storage.RoleSecondary, storage.StateStarted, storage.RolePrimary, "B"},
		// The loss seen long ago is over: A, still down in health here,
		// is not moved again.
		{"the other proxy moved the group back to A", storage.StateStarted, storage.RolePrimary, storage.StateStopped, storage.RoleSecondary, "A"},
	} {
		for _, x := range []struct {
			a           *fakeAgent
			state, role string
		}{{r.a, st.aState, st.aRole}, {r.b, st.bState, st.bRole}} {
			x.a.mu.Lock()
			x.a.st.State, x.a.st.DRBDRole = x.state, x.role
			x.a.mu.Unlock()
		}
		r.polls(5)
		if got := r.j.get(); len(got) != 0 {
			t.Fatalf("%s: steps %q, want none", st.what, got)
		}
		if h := r.c.Holder(); h != st.holder {
			t.Fatalf("%s: holder %q, want %s", st.what, h, st.holder)
		}
	}
}

func TestColdSwitchoverNeverFences(t *testing.T) {
	r := newRig(t, nil)
	r.a.mu.Lock()
	r.a.unreachable = true
	r.a.mu.Unlock()
	if _, err := r.c.Switchover(context.Background(), "B"); err == nil {
		t.Fatal("switchover with A's agent unreachable succeeded")
	}
	r.want(t, "stop A")
	r.a.mu.Lock()
	r.a.unreachable = false
	r.a.mu.Unlock()
	rep, err := r.c.Switchover(context.Background(), "")
	if err != nil || rep.To != "B" || rep.UpAt.IsZero() {
		t.Fatalf("switchover: %+v %v", rep, err)
	}
	r.want(t, "stop A", "stop A", "start B")
	if _, err := r.c.Switchover(context.Background(), "C"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("unknown node: %v", err)
	}
}

func TestColdInitialStartOnFirstFitNode(t *testing.T) {
	j := &journal{}
	hs := &fakeHealth{ch: make(chan health.Change, 64)}
	a := &fakeAgent{name: "A", j: j, hs: hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: "Outdated"}}
	b := &fakeAgent{name: "B", j: j, hs: hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: storage.DiskUpToDate}}
	cfg := DefaultColdConfig()
	cfg.Enabled, cfg.PollInterval = true, 20*time.Millisecond
	c, err := NewCoordinator(cfg, []ColdNode{{Name: "A", Agent: a}, {Name: "B", Agent: b}}, zaptest.NewLogger(t), nil, WithColdHealth(hs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	testkit.Eventually(t, 3*time.Second, "B started", func() bool { return c.Holder() == "B" && c.Status().Phase == PhaseIdle })
	if got := fmt.Sprint(j.get()); got != "[start B]" {
		t.Fatalf("steps %s", got)
	}
}

func TestColdConfigValidate(t *testing.T) {
	c := DefaultColdConfig()
	c.StartTimeout, c.PollInterval = 0, -1
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "start_timeout: must be > 0") || !strings.Contains(err.Error(), "poll_interval: must be > 0") {
		t.Fatalf("validate: %v", err)
	}
	if err := DefaultColdConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// Without a fence command the old node counts as fenced only once the new
// node's DRBD shows it disconnected (plus the safety delay).
func TestColdPeerDisconnectFencing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		peer    storage.PeerState
		promote bool
	}{
		{"peer gone", storage.PeerState{Name: "a", Connection: "Connecting", Role: storage.RoleUnknown}, true},
		{"peer still Primary", storage.PeerState{Name: "a", Connection: storage.ConnConnected, Role: storage.RolePrimary}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRigFence(t, nil, true)
			r.a.mu.Lock()
			r.a.unreachable = true
			r.a.mu.Unlock()
			r.b.mu.Lock()
			r.b.st.DRBD.Peers = []storage.PeerState{tc.peer}
			r.b.mu.Unlock()
			r.hs.send("A", health.StateDown)
			if tc.promote {
				testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
				r.want(t, "stop A", "start B")
				return
			}
			testkit.Eventually(t, 3*time.Second, "blocked", func() bool { return strings.Contains(r.c.Status().Blocked, "fencing failed") })
			r.want(t, "stop A")
		})
	}
}

// The holder's agent reporting its group failed (its monitor saw Asterisk
// stop serving) moves the group even before health says down.
func TestColdAgentFailedMovesGroup(t *testing.T) {
	r := newRig(t, nil)
	r.a.mu.Lock()
	r.a.st.State, r.a.st.LastError = storage.StateFailed, "monitor: sip: connection refused"
	r.a.mu.Unlock()
	testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
	r.want(t, "stop A", "start B")
	if l := r.c.Status().Last; !strings.Contains(l.Reason, "agent reports the group failed") {
		t.Fatalf("reason %q", l.Reason)
	}
}

// A reload (SIGHUP) replaces the nodes: a third node C added in place of B
// is the one a failover now starts; removing the holder is refused.
func TestColdSetNodes(t *testing.T) {
	r := newRig(t, nil)
	c := &fakeAgent{name: "C", j: r.j, hs: r.hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: storage.DiskUpToDate}}
	if err := r.c.SetNodes([]ColdNode{{Name: "B", Agent: r.b}}); !errors.Is(err, ErrInvalidBackends) || !strings.Contains(err.Error(), `"A" holds`) {
		t.Fatalf("removing the holder A: %v", err)
	}
	if err := r.c.SetNodes([]ColdNode{{Name: "A", Agent: r.a}, {Name: "C", Agent: c}, {Name: "C", Agent: c}}); !errors.Is(err, ErrInvalidBackends) {
		t.Fatalf("duplicate node: %v", err)
	}
	if err := r.c.SetNodes([]ColdNode{{Name: "A", Agent: r.a, Fence: fakeFence{"A", r.j, nil}}, {Name: "C", Agent: c}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 3*time.Second, "status lists A and C", func() bool {
		s := r.c.Status()
		return len(s.Nodes) == 2 && s.Nodes[1].Name == "C" && s.Nodes[1].Reachable
	})
	r.hs.send("C", health.StateDown)
	r.hs.send("A", health.StateDown)
	testkit.Eventually(t, 3*time.Second, "C holds", func() bool { s := r.c.Status(); return s.Holder == "C" && s.Last != nil && s.Last.To == "C" })
	r.want(t, "stop A", "start C")
}

// The new node's agent is told what was done to the old holder, so that it
// does not fence it a second time: stopped after a clean stop, fenced after
// a fence command, the disconnection wait with its safety delay without
// one; nothing when nothing was done (initial start).
func TestColdStartCarriesPeerDown(t *testing.T) {
	t.Run("stopped", func(t *testing.T) {
		r := newRig(t, nil)
		r.hs.send("A", health.StateDown)
		testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
		r.want(t, "stop A", "start B")
		wantDown(t, r.b.startOpts(t), &storage.PeerDown{Node: "A", How: storage.PeerStopped})
	})
	t.Run("fenced", func(t *testing.T) {
		r := newRig(t, nil)
		r.a.mu.Lock()
		r.a.unreachable = true
		r.a.mu.Unlock()
		r.hs.send("A", health.StateDown)
		testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
		r.want(t, "stop A", "fence A", "start B")
		wantDown(t, r.b.startOpts(t), &storage.PeerDown{Node: "A", How: storage.PeerFenced})
	})
	t.Run("stop left Primary, fenced", func(t *testing.T) {
		r := newRig(t, nil)
		r.a.mu.Lock()
		r.a.stopKeeps = true
		r.a.mu.Unlock()
		r.hs.send("A", health.StateDown)
		testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
		r.want(t, "stop A", "fence A", "start B")
		wantDown(t, r.b.startOpts(t), &storage.PeerDown{Node: "A", How: storage.PeerFenced})
	})
	t.Run("disconnection wait", func(t *testing.T) {
		r := newRigFence(t, nil, true)
		r.a.mu.Lock()
		r.a.unreachable = true
		r.a.mu.Unlock()
		r.b.mu.Lock()
		r.b.st.DRBD.Peers = []storage.PeerState{{Name: "a", Connection: "Connecting", Role: storage.RoleUnknown}}
		r.b.mu.Unlock()
		r.hs.send("A", health.StateDown)
		testkit.Eventually(t, 3*time.Second, "B holds", func() bool { s := r.c.Status(); return s.Holder == "B" && s.Last != nil && s.Phase == PhaseIdle })
		r.want(t, "stop A", "start B")
		wantDown(t, r.b.startOpts(t), &storage.PeerDown{Node: "A", How: storage.PeerDisconnected, SafetyDelay: 50 * time.Millisecond})
	})
	t.Run("switchover", func(t *testing.T) {
		r := newRig(t, nil)
		if _, err := r.c.Switchover(context.Background(), "B"); err != nil {
			t.Fatal(err)
		}
		r.want(t, "stop A", "start B")
		wantDown(t, r.b.startOpts(t), &storage.PeerDown{Node: "A", How: storage.PeerStopped})
	})
	t.Run("initial start", func(t *testing.T) {
		j := &journal{}
		hs := &fakeHealth{ch: make(chan health.Change, 64)}
		a := &fakeAgent{name: "A", j: j, hs: hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: storage.DiskUpToDate}}
		b := &fakeAgent{name: "B", j: j, hs: hs, st: storage.Status{State: storage.StateStopped, DRBDRole: storage.RoleSecondary, Disk: storage.DiskUpToDate}}
		cfg := DefaultColdConfig()
		cfg.Enabled, cfg.PollInterval = true, 20*time.Millisecond
		c, err := NewCoordinator(cfg, []ColdNode{{Name: "A", Agent: a, Fence: fakeFence{"A", j, nil}}, {Name: "B", Agent: b}}, zaptest.NewLogger(t), nil, WithColdHealth(hs))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		testkit.Eventually(t, 3*time.Second, "A started", func() bool { return c.Holder() == "A" && c.Status().Phase == PhaseIdle })
		if got := fmt.Sprint(j.get()); got != "[start A]" {
			t.Fatalf("steps %s", got)
		}
		wantDown(t, a.startOpts(t), nil)
	})
}

func wantDown(t *testing.T, got storage.StartOptions, want *storage.PeerDown) {
	t.Helper()
	if got.Force {
		t.Fatal("the coordinator forced a start")
	}
	switch {
	case want == nil && got.PeerDown != nil:
		t.Fatalf("start carries PeerDown %+v although the old holder was neither stopped nor fenced", *got.PeerDown)
	case want != nil && got.PeerDown == nil:
		t.Fatalf("start carries no PeerDown, want %+v", *want)
	case want != nil && *got.PeerDown != *want:
		t.Fatalf("start carries PeerDown %+v, want %+v", *got.PeerDown, *want)
	}
}
