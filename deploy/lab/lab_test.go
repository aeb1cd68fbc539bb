package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var hapbxBin string

// TestMain builds hapbx once when the lab can run here and HAPBX_BIN (what
// `make test` passes) is not set.
func TestMain(m *testing.M) {
	hapbxBin = os.Getenv("HAPBX_BIN")
	if hapbxBin == "" && Check() == nil {
		dir, err := os.MkdirTemp("", "hlab-bin")
		if err != nil {
			panic(err)
		}
		hapbxBin = filepath.Join(dir, "hapbx")
		if out, err := exec.Command("go", "build", "-o", hapbxBin, "../../cmd/hapbx").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build hapbx: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// newLab builds the topology, or skips with the reason the machine cannot.
func newLab(t testing.TB, opt Options) *Lab {
	t.Helper()
	if err := Check(); err != nil {
		if os.Getenv("CI") != "" && os.Geteuid() == 0 {
			t.Fatalf("lab cannot run in CI: %v", err)
		}
		t.Skipf("lab: %v", err)
	}
	opt.Bin, opt.Root, opt.Dir = hapbxBin, "../..", t.TempDir()
	opt.Logf = t.Logf
	opt.Signals = true
	l, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"proxy1", "proxy2", "witness"} {
				if b, err := os.ReadFile(filepath.Join(l.Dir(), n+".log")); err == nil {
					lines := strings.Split(string(b), "\n")
					t.Logf("---- %s log (tail) ----\n%s", n, strings.Join(lines[max(0, len(lines)-15):], "\n"))
				}
			}
		}
		l.Close()
	})
	return l
}

// upWithBackends starts both SIPp backends and the cluster; returns the holder.
func upWithBackends(t testing.TB, l *Lab) string {
	t.Helper()
	for _, be := range Backends {
		if _, err := l.StartBackend(be); err != nil {
			t.Fatal(err)
		}
	}
	h, err := l.Up()
	if err != nil {
		t.Fatal(err)
	}
	var s Status
	if err := WaitFor(5*time.Second, "pbx1 active on the holder", func() bool {
		s, err = l.Status(h)
		return err == nil && s.Active == "pbx1"
	}); err != nil {
		t.Fatalf("%v: %+v", err, s)
	}
	return h
}

func newProber(t testing.TB, l *Lab) *Prober {
	t.Helper()
	pr, err := l.NewProber("phones")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pr.Close)
	if code, err := pr.Ask(2 * time.Second); err != nil || code != 200 {
		t.Fatalf("OPTIONS to the VIP before any failure: %d %v", code, err)
	}
	return pr
}

// Issue 5 (a): SIGKILL of the VIP holder; the twin has the VIP within 1.5 s and
// answers the client's next transaction through the VIP.
func TestVIPFailoverSIGKILL(t *testing.T) {
	l := newLab(t, Options{})
	upWithBackends(t, l)
	pr := newProber(t, l)
	f, err := l.KillHolder(pr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s -> VIP on %s after %s; first OPTIONS through the VIP answered after %s",
		f.Killed, f.Twin, f.VIP.Round(time.Millisecond), f.SIP.Round(time.Millisecond))
	if f.VIP > 1500*time.Millisecond {
		t.Errorf("VIP moved in %s, want <= 1.5s", f.VIP)
	}
	if hs := l.Holders(); !slices.Equal(hs, []string{f.Twin}) {
		t.Errorf("holders after the failover: %v, want [%s]", hs, f.Twin)
	}
	// The old holder is dead: the answer can only come from the twin, whose
	// status must say so too.
	if err := WaitFor(time.Second, f.Twin+"'s status saying it holds the VIP", func() bool {
		s, err := l.Status(f.Twin)
		return err == nil && s.Cluster != nil && s.Cluster.VIPHeld && s.Cluster.Leader == f.Twin
	}); err != nil {
		t.Error(err)
	}
}
