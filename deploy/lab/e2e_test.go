package lab

import (
	"os"
	"testing"
	"time"
)

// TestE2E is `make e2e` (issue 7.2): the demo's scenario with assertions. Calls
// at a steady rate through the VIP while the active PBX dies (zero failed
// calls), the VIP holder dies (VIP on the twin within HLAB_VIP_MAX, default
// 1s), the dead proxy returns, the pair is cut apart and everything is
// restored; never two VIP holders in any 50 ms sample; zero registrations lost.
func TestE2E(t *testing.T) {
	l := newLab(t, Options{})
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
	if rep.Splits > 0 {
		t.Errorf("two VIP holders in %d of %d samples", rep.Splits, rep.Samples)
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
		switch i {
		case 0, 2, 4: // PBX death, proxy return, restore: no call may fail
			if e.Failed != 0 {
				t.Errorf("%s: %d of %d calls failed, want 0", e.Name, e.Failed, e.Calls)
			}
		case 1:
			if e.Detect > vipMax {
				t.Errorf("%s: VIP moved in %s, want <= %s", e.Name, e.Detect, vipMax)
			}
		case 3: // pair cut: the holder keeps quorum with the witness; nothing may fail
			if e.Failed != 0 {
				t.Errorf("%s: %d of %d calls failed, want 0", e.Name, e.Failed, e.Calls)
			}
		}
	}
}
