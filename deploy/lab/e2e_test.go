package lab

import (
	"os"
	"testing"
	"time"
)

// TestE2E is `make e2e` (issue 7.2): the demo's scenario with assertions. Calls
// at a steady rate through the VIP while the active PBX dies (zero failed
// calls), the VIP holder dies (VIP on the twin within HLAB_VIP_MAX, default
// 1s; zero failed calls), the dead proxy returns, the pair is cut apart and everything is
// restored; never two VIP holders in any 50 ms sample; zero registrations lost.
// A provider trunk runs through it all (issue 14): its calls in and a
// backend's calls out through it fail no more than the phones' calls, and
// the provider sees one continuous registration.
func TestE2E(t *testing.T) { runHot(t, Options{Trunk: true}) }

// TestE2EChanSIP is TestE2E on the real Asterisk with chan_sip and
// sip.conf (one SIPp per phone: chan_sip takes the peer's name as the
// digest user).
func TestE2EChanSIP(t *testing.T) {
	requireAsterisk(t)
	runHot(t, Options{ChanSIP: true, Trunk: true})
}

// TestE2EColdChanSIP is TestE2ECold's scenario and checks on the real
// Asterisk with chan_sip and sip.conf.
func TestE2EColdChanSIP(t *testing.T) {
	requireAsterisk(t)
	runCold(t, newLab(t, Options{Cold: true, ChanSIP: true, Trunk: true}))
}

// runHot runs the demo's scenario in hot standby with TestE2E's checks.
func runHot(t *testing.T, opt Options) {
	l := newLab(t, opt)
	vipMax := time.Second
	if v := os.Getenv("HLAB_VIP_MAX"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HLAB_VIP_MAX: %v", err)
		}
		vipMax = d
	}
	rep, err := l.RunScenario(ScenarioOptions{Logf: t.Logf})
	t.Logf("\n%s", rep.Table())
	if err != nil {
		t.Fatal(err)
	}
	checkScenario(t, rep, vipMax)
	checkAsteriskLogs(t, l)
}

// TestE2ECold is the demo's default scenario (`make demo`): the PBXs in cold
// standby under their hapbx agents. Killing the active PBX is a cold
// failover: the leader proxy has pbx1's agent stop its group and pbx2's
// promote DRBD, mount and start the PBX; calls placed meanwhile are held
// and set up late, none fails; new calls succeed within 10 s and the
// agents end with pbx2 the only DRBD primary, mounted and serving.
// Everything else as in TestE2E.
func TestE2ECold(t *testing.T) {
	l := newLab(t, Options{Cold: true, Trunk: true})
	rep := runCold(t, l)
	if d := rep.Events[0].NewCalls; d < 0 || d > 10*time.Second {
		t.Errorf("cold failover: first new call after %s, want <= 10s", d)
	}
	a1, err1 := l.AgentStatus("pbx1")
	a2, err2 := l.AgentStatus("pbx2")
	if err1 != nil || err2 != nil {
		t.Fatalf("agents' status: %v %v", err1, err2)
	}
	if a1.DRBDRole != "Secondary" || a1.Mounted != "" || a1.State != "stopped" {
		t.Errorf("pbx1's agent after the failover: %+v, want stopped, Secondary, nothing mounted", a1)
	}
	if a2.DRBDRole != "Primary" || a2.Mounted == "" || a2.State != "started" || a2.Service != "active" {
		t.Errorf("pbx2's agent after the failover: %+v, want started, Primary, mounted, service active", a2)
	}
}

// runCold runs the scenario on l, in cold standby, with TestE2E's checks.
func runCold(t *testing.T, l *Lab) Report {
	t.Helper()
	if !l.cold() {
		t.Skip("cold standby needs unshare and flock on PATH and internal/testkit/drbd")
	}
	rep, err := l.RunScenario(ScenarioOptions{Logf: t.Logf})
	t.Logf("\n%s", rep.Table())
	if err != nil {
		t.Fatal(err)
	}
	checkScenario(t, rep, time.Second)
	checkAsteriskLogs(t, l)
	return rep
}

func checkScenario(t *testing.T, rep Report, vipMax time.Duration) {
	t.Helper()
	if rep.Splits > 0 {
		t.Errorf("two VIP holders in %d of %d samples", rep.Splits, rep.Samples)
	}
	if rep.TrunkErr != nil {
		t.Errorf("trunk: %v", rep.TrunkErr)
	}
	for i, e := range rep.Events {
		if e.RegsLost != 0 {
			t.Errorf("%s: %d registrations lost", e.Name, e.RegsLost)
		}
		if e.Calls == 0 {
			t.Errorf("%s: no calls placed", e.Name)
		}
		if e.NewCalls < 0 {
			t.Errorf("%s: no call started after the event succeeded", e.Name)
		}
		if rep.Trunk != "" && (e.TrunkIn == 0 || e.TrunkOut == 0) {
			t.Errorf("%s: trunk calls in %d, out %d: none placed", e.Name, e.TrunkIn, e.TrunkOut)
		}
		if e.TrunkInFailed != 0 || e.TrunkOutFailed != 0 {
			t.Errorf("%s: trunk calls failed: in %d of %d, out %d of %d, want 0", e.Name, e.TrunkInFailed, e.TrunkIn, e.TrunkOutFailed, e.TrunkOut)
		}
		switch i {
		case 0, 2, 4: // PBX death (hot or cold), proxy return, restore: no call may fail
			if e.Failed != 0 {
				t.Errorf("%s: %d of %d calls failed, want 0", e.Name, e.Failed, e.Calls)
			}
		case 1: // VIP holder death: its calls in flight go on through the twin
			if e.Detect > vipMax {
				t.Errorf("%s: VIP moved in %s, want <= %s", e.Name, e.Detect, vipMax)
			}
			if e.Failed != 0 {
				t.Errorf("%s: %d of %d calls failed, want 0", e.Name, e.Failed, e.Calls)
			}
		case 3: // pair cut: the holder keeps quorum with the witness; nothing may fail
			if e.Failed != 0 {
				t.Errorf("%s: %d of %d calls failed, want 0", e.Name, e.Failed, e.Calls)
			}
		}
	}
}
