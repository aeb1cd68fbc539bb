package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestColdFailover is issue 6's end to end: the proxy starts the group on
// node A and routes calls there; A's Asterisk and agent are SIGKILLed (its
// DRBD stays Primary, as on a hung host); the proxy fences A, B's agent
// promotes, mounts and starts; calls succeed again through the proxy; the
// recorded DRBD calls never show two primaries.
func TestColdFailover(t *testing.T) {
	l := newColdLab(t)
	a, b := l.addNode("A", false), l.addNode("B", false)
	l.startProxy(false)
	l.waitStatus("group started on A and routed", 15*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" && s.Cold.Phase == "idle"
	})
	l.calls(3)

	out, err := l.hapbx("status")
	if err != nil || !strings.Contains(out, "failover mode: cold") {
		t.Fatalf("hapbx status: %v\n%s", err, out)
	}
	for _, row := range []string{"asterisk1", "asterisk2"} {
		var line string
		for _, ln := range strings.Split(out, "\n") {
			if strings.HasPrefix(ln, row+" ") {
				line = ln
			}
		}
		want := map[string][]string{
			"asterisk1": {"up", "active", "started", "Primary", "UpToDate", "Secondary/Connected", "hapbx-A", "active"},
			"asterisk2": {"standby", "stopped", "Secondary", "UpToDate", "Primary/Connected"},
		}[row]
		for _, w := range want {
			if !strings.Contains(line, " "+w+" ") && !strings.HasSuffix(line, " "+w) {
				t.Errorf("hapbx status row %s lacks %q:\n%s", row, w, out)
			}
		}
	}
	t.Logf("hapbx status:\n%s", out)
	out, err = l.hapbx("status", "--json")
	var js map[string]any
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || js["cold"] == nil {
		t.Fatalf("hapbx status --json: %v\n%s", err, out)
	}

	raw, err := exec.Command(hapbxBin, "status", "-c", a.cfgPath).CombinedOutput()
	if err != nil || !strings.Contains(string(raw), "started") || !strings.Contains(string(raw), "hapbx-A") {
		t.Fatalf("hapbx status with A's agent file: %v\n%s", err, raw)
	}

	killed := time.Now()
	l.crash(a)
	s := l.waitStatus("group moved to B and routed", 15*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk2" && s.Active == "asterisk2" && s.Cold.Last != nil && !s.Cold.Last.UpAt.IsZero()
	})
	lm := s.Cold.Last
	t.Logf("A crashed; B routed %v after the kill; down->started %v (service %v, hapbx overhead %v), fenced %v",
		lm.UpAt.Sub(killed).Round(time.Millisecond), lm.StartedAt.Sub(lm.DownAt).Round(time.Millisecond),
		lm.ServiceReady.Round(time.Millisecond), lm.Overhead.Round(time.Millisecond), lm.Fenced)
	if lm.From != "asterisk1" || lm.To != "asterisk2" || !lm.Fenced || lm.Error != "" {
		t.Fatalf("last move: %+v", lm)
	}
	l.calls(3)
	out, _ = l.hapbx("status")
	t.Logf("hapbx status after the failover:\n%s", out)

	calls := l.drbd.Calls()
	testkit.NeverTwoPrimaries(t, calls)
	fence := testkit.FindCall(calls, "?", "fence A", 0)
	bPrimary := testkit.FindCall(calls, "B", "drbdadm primary", 0)
	if fence < 0 || bPrimary < 0 || bPrimary < fence {
		t.Fatalf("B promoted (call %d) before A was fenced (call %d)", bPrimary, fence)
	}
	if i := testkit.FindCall(calls, "B", "fence A", 0); i >= 0 {
		t.Fatalf("B's agent fenced A again (call %d) after the proxy had fenced it (call %d)", i, fence)
	}
	st, err := b.client.Status(t.Context())
	if err != nil || st.State != "started" || st.Mounted != "hapbx-B" || st.DRBDRole != "Primary" {
		t.Fatalf("B after failover: %+v %v", st, err)
	}
}

// TestColdFenceFailureNoPromotion: A crashes, its agent is unreachable and
// the fence command fails: B is never promoted, the status says why.
func TestColdFenceFailureNoPromotion(t *testing.T) {
	l := newColdLab(t)
	a, _ := l.addNode("A", false), l.addNode("B", true)
	l.startProxy(true)
	l.waitStatus("group on A", 15*time.Second, func(s coldStatus) bool { return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" })
	l.crash(a)
	s := l.waitStatus("failover blocked", 15*time.Second, func(s coldStatus) bool { return strings.Contains(s.Cold.Blocked, "fenc") })
	if s.Active != "" {
		t.Errorf("a backend is active with A dead and B not started: %q", s.Active)
	}
	time.Sleep(500 * time.Millisecond)
	calls := l.drbd.Calls()
	if i := testkit.FindCall(calls, "B", "drbdadm primary", 0); i >= 0 {
		t.Fatalf("B promoted although A could not be fenced: %+v", calls[i])
	}
	if testkit.FindCall(calls, "?", "fence A", 1) < 0 {
		t.Fatal("the proxy did not try to fence A")
	}
	out, _ := l.hapbx("status")
	if !strings.Contains(out, "BLOCKED: ") {
		t.Fatalf("hapbx status does not show the block:\n%s", out)
	}
}

// TestColdSplitBrainNoPromotion: with a DRBD split brain reported, A's
// crash does not promote B; status and `hapbx status` show the split brain.
func TestColdSplitBrainNoPromotion(t *testing.T) {
	l := newColdLab(t)
	a, b := l.addNode("A", false), l.addNode("B", false)
	l.startProxy(false)
	l.waitStatus("group on A", 15*time.Second, func(s coldStatus) bool { return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" })
	l.drbd.Write("sb", "1")
	l.waitStatus("split brain seen on B", 5*time.Second, func(s coldStatus) bool {
		for _, n := range s.Cold.Nodes {
			if n.Name == "asterisk2" && n.Agent.SplitBrain {
				return true
			}
		}
		return false
	})
	l.crash(a)
	l.waitStatus("failover blocked by split brain", 15*time.Second, func(s coldStatus) bool { return strings.Contains(s.Cold.Blocked, "split brain") })
	time.Sleep(500 * time.Millisecond)
	if i := testkit.FindCall(l.drbd.Calls(), "B", "drbdadm primary", 0); i >= 0 {
		t.Fatal("B promoted during a split brain")
	}
	out, _ := l.hapbx("status")
	if !strings.Contains(out, "SPLIT BRAIN") || !strings.Contains(out, "BLOCKED: ") {
		t.Fatalf("hapbx status does not show the split brain:\n%s", out)
	}
	_ = b
}

// TestColdSwitchover: `hapbx standby` moves the group gracefully from A to
// B (A stopped, never fenced, before B promotes); `hapbx takeover
// asterisk1` moves it back; calls work after each move.
func TestColdSwitchover(t *testing.T) {
	l := newColdLab(t)
	l.addNode("A", false)
	l.addNode("B", false)
	l.startProxy(false)
	// The move that started the group must be over: a second one is refused (ErrBusy).
	l.waitStatus("group on A, move over", 15*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" && s.Cold.Phase == "idle"
	})

	out, err := l.hapbx("standby")
	if err != nil || !strings.Contains(out, "asterisk1 -> asterisk2") {
		t.Fatalf("hapbx standby: %v\n%s", err, out)
	}
	l.waitStatus("routed to B, move over", 5*time.Second, func(s coldStatus) bool { return s.Active == "asterisk2" && s.Cold.Phase == "idle" })
	l.calls(2)
	calls := l.drbd.Calls()
	aSecondary, bPrimary := testkit.LastCall(calls, "A", "drbdadm secondary", 0), testkit.FindCall(calls, "B", "drbdadm primary", 0)
	if aSecondary < 0 || bPrimary < aSecondary {
		t.Fatalf("B promoted (call %d) before A demoted (call %d)", bPrimary, aSecondary)
	}
	if i := testkit.FindCall(calls, "?", "fence", 0); i >= 0 {
		t.Fatalf("a graceful switchover fenced: %+v", calls[i])
	}

	out, err = l.hapbx("takeover", "asterisk1")
	if err != nil || !strings.Contains(out, "asterisk2 -> asterisk1") {
		t.Fatalf("hapbx takeover: %v\n%s", err, out)
	}
	l.waitStatus("routed to A", 5*time.Second, func(s coldStatus) bool { return s.Active == "asterisk1" })
	l.calls(2)
	testkit.NeverTwoPrimaries(t, l.drbd.Calls())

	if out, err := l.hapbx("takeover", "asterisk9"); err == nil || !strings.Contains(out, "unknown node") {
		t.Fatalf("takeover of an unknown node: %v\n%s", err, out)
	}
	if out, err := l.hapbx("takeover"); err == nil || !strings.Contains(out, "one of asterisk1, asterisk2") {
		t.Fatalf("takeover without a node: %v\n%s", err, out)
	}
	// Without the admin token the API refuses.
	res, err := http.Post(l.proxy.admin+"/api/v1/cold/standby", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("standby without token: HTTP %d", res.StatusCode)
	}
	if s, _ := l.status(); s.Cold.Holder != "asterisk1" {
		t.Fatalf("holder moved by an unauthorized request: %+v", s.Cold)
	}
}

// TestColdHostDeathWithoutFenceCommand: no fence command is configured;
// node A's host dies (agent, Asterisk and DRBD gone). The proxy counts A as
// fenced only once B's DRBD shows it disconnected plus the safety delay,
// then B takes over.
func TestColdHostDeathWithoutFenceCommand(t *testing.T) {
	l := newColdLab(t)
	l.noFence = true
	a, _ := l.addNode("A", false), l.addNode("B", false)
	l.startProxy(false)
	l.waitStatus("group on A", 15*time.Second, func(s coldStatus) bool { return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" })
	l.crash(a)
	// Still connected as far as B's DRBD knows: no promotion yet.
	time.Sleep(1500 * time.Millisecond)
	if i := testkit.FindCall(l.drbd.Calls(), "B", "drbdadm primary", 0); i >= 0 {
		t.Fatal("B promoted while its DRBD still saw A Primary and connected")
	}
	gone := time.Now()
	if err := os.Remove(l.drbd.Path("up.A")); err != nil { // the host is off now
		t.Fatal(err)
	}
	s := l.waitStatus("group moved to B", 15*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk2" && s.Active == "asterisk2" && s.Cold.Last != nil && s.Cold.Last.To == "asterisk2" && !s.Cold.Last.StartedAt.IsZero()
	})
	if !s.Cold.Last.Fenced || s.Cold.Last.StartedAt.Sub(gone) < 300*time.Millisecond {
		t.Fatalf("B started %v after A's host went, before the 300ms safety delay, or not fenced: %+v", s.Cold.Last.StartedAt.Sub(gone), s.Cold.Last)
	}
	l.calls(2)
	calls := l.drbd.Calls()
	i := testkit.FindCall(calls, "B", "drbdadm primary", 0)
	if i < 0 || calls[i].Roles["A"] != "Primary(down)" {
		t.Fatalf("B's promotion: %+v", calls[i])
	}
	for _, c := range calls {
		if c.Roles["A"] == "Primary" && c.Roles["B"] == "Primary" {
			t.Fatalf("two primaries up at %+v", c)
		}
	}
}

// TestColdSIGHUPUpdatesNodes: a reload in cold standby changes the
// coordinator's nodes with the backend list (B removed: status lists only
// A), and is refused whole when it would drop the node holding the group.
func TestColdSIGHUPUpdatesNodes(t *testing.T) {
	l := newColdLab(t)
	l.addNode("A", false)
	l.addNode("B", false)
	d := l.startProxy(false)
	l.waitStatus("group on A", 15*time.Second, func(s coldStatus) bool { return s.Cold.Holder == "asterisk1" && len(s.Cold.Nodes) == 2 })
	full, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(drop string) {
		t.Helper()
		var out []string
		skip := false
		for _, line := range strings.Split(string(full), "\n") {
			if strings.HasPrefix(line, "  - name: ") {
				skip = line == "  - name: "+drop
			} else if !strings.HasPrefix(line, "    ") {
				skip = false
			}
			if !skip {
				out = append(out, line)
			}
		}
		if err := os.WriteFile(d.config, []byte(strings.Join(out, "\n")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := d.proc.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	reload("asterisk2")
	l.waitStatus("only asterisk1 left", 5*time.Second, func(s coldStatus) bool {
		return len(s.Cold.Nodes) == 1 && s.Cold.Nodes[0].Name == "asterisk1"
	})
	reload("asterisk1")
	testkit.Eventually(t, 5*time.Second, "removing the holder asterisk1 refused in the log", func() bool {
		return strings.Contains(d.log.String(), "reload refused: cold standby nodes")
	})
	if s, err := l.status(); err != nil || s.Cold.Holder != "asterisk1" || len(s.Cold.Nodes) != 1 || s.Active != "asterisk1" {
		t.Fatalf("after the refused reload: %+v %v", s, err)
	}
}
