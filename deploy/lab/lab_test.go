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
	if len(os.Args) > 1 && os.Args[1] == AMIServerCommand {
		os.Exit(AMIServerMain(os.Args[2:], os.Stderr)) // a backend's AMI (Options.Self)
	}
	if len(os.Args) > 1 && os.Args[1] == asteriskStandInCommand {
		os.Exit(asteriskStandInMain(os.Args[2:], os.Stdout, os.Stderr))
	}
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
	if os.Getenv("HLAB_KEEP") != "" {
		// Keep the lab's configs and logs (PBX, SIPp) for a look afterwards.
		d, err := os.MkdirTemp("", "hlab-keep-")
		if err != nil {
			t.Fatal(err)
		}
		opt.Dir = d
		t.Logf("lab directory kept (HLAB_KEEP): %s", d)
	}
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
//
// Issue 14 (6), in the same run: the VIP holder keeps a provider trunk's
// registration (SIPp, digest, expires 10 s) and is killed while it holds:
// the provider sees one continuous registration (one Call-ID, CSeq
// rising, Contact the VIP, refreshed before every expiry, through the
// twin); a call from the provider's address then reaches a backend through
// the twin with X-Hapbx-Trunk, the same INVITE from the phones' address
// without it.
func TestVIPFailoverSIGKILL(t *testing.T) {
	l := newLab(t, Options{SIPpBackends: true, Trunk: true})
	var pbx []*Proc
	for _, be := range Backends {
		p, err := l.StartBackend(be, "-trace_msg")
		if err != nil {
			t.Fatal(err)
		}
		pbx = append(pbx, p)
	}
	provider, err := l.StartProvider()
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.Up()
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(10*time.Second, "the trunk registered by "+h, func() bool {
		s, err := l.Status(h)
		return err == nil && s.Active == "pbx1" && l.Metric(h, `hapbx_trunk_registered{trunk="`+TrunkName+`"}`) == 1
	}); err != nil {
		t.Fatalf("%v\n%s", err, provider.Log(3000))
	}
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
	trunkAfterFailover(t, l, f, provider, pbx)
}

// trunkAfterFailover: calls from the provider's address and from the
// phones' through the twin, then the provider's and the backends' view.
func trunkAfterFailover(t *testing.T, l *Lab, f Failover, provider *Proc, pbx []*Proc) {
	t.Helper()
	for _, c := range []struct{ host, ext string }{{"provider", "4930100"}, {"phones", "4930101"}} {
		call, err := l.TrunkCall(c.host, "call-"+c.host, c.ext, 5062)
		if err != nil {
			t.Fatal(err)
		}
		if code := call.Wait(15 * time.Second); code != 0 {
			t.Fatalf("the call from %s through %s failed (exit %d)\n%s", c.host, f.Twin, code, call.Log(3000))
		}
	}
	// The twin continues the registration and refreshes it (two rounds).
	if err := WaitFor(TrunkExpires+5*time.Second, "2 refreshes by "+f.Twin, func() bool {
		return l.Metric(f.Twin, `hapbx_trunk_registered{trunk="`+TrunkName+`"}`) == 1 &&
			l.Metric(f.Twin, `hapbx_trunk_registrations_total{result="ok",trunk="`+TrunkName+`"}`) >= 2
	}); err != nil {
		t.Error(err)
	}
	end := time.Now()
	trace, err := ReadTrace(provider)
	if err != nil {
		t.Fatal(err)
	}
	n, err := CheckRegistration(trace, end)
	t.Logf("trunk: the provider granted %d REGISTERs in one registration across the failover", n)
	if err != nil {
		t.Errorf("the provider did not see one continuous registration: %v\n%s", err, provider.Log(3000))
	}
	var trunkCalls, otherCalls []string
	for _, p := range pbx {
		trace, err := ReadTrace(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range trace {
			switch {
			case !m.Received || !strings.HasPrefix(m.Msg, "INVITE "):
			case strings.HasPrefix(m.Msg, "INVITE sip:4930100@"):
				trunkCalls = append(trunkCalls, header(m.Msg, "X-Hapbx-Trunk", "X-Hapbx-Trunk"))
			case strings.HasPrefix(m.Msg, "INVITE sip:4930101@"):
				otherCalls = append(otherCalls, header(m.Msg, "X-Hapbx-Trunk", "X-Hapbx-Trunk"))
			}
		}
	}
	if !slices.Equal(trunkCalls, []string{TrunkName}) {
		t.Errorf("the provider's call reached the backends with X-Hapbx-Trunk %q, want one with %q", trunkCalls, TrunkName)
	}
	if !slices.Equal(otherCalls, []string{""}) {
		t.Errorf("the phones' INVITE reached the backends with X-Hapbx-Trunk %q, want one without", otherCalls)
	}
}

// Issue 5 (b): proxy1 and proxy2 cut apart while both reach the witness:
// sampled every 50 ms in both namespaces, never two holders; the holder keeps
// the VIP and keeps answering; after the heal the cluster is whole again.
func TestPairCut(t *testing.T) {
	l := newLab(t, Options{SIPpBackends: true})
	h := upWithBackends(t, l)
	pr := newProber(t, l)
	if err := l.Cut("proxy1", "proxy2"); err != nil {
		t.Fatal(err)
	}
	seq, err := l.Watch(4 * time.Second)
	t.Logf("pair cut, holders seen every 50 ms: %v", seq)
	if err != nil {
		t.Fatal(err)
	}
	if hs := l.Holders(); len(hs) != 1 {
		t.Fatalf("holders with the pair cut: %v", hs)
	}
	if code, err := pr.Ask(time.Second); err != nil || code != 200 {
		t.Errorf("OPTIONS through the VIP with the pair cut: %d %v", code, err)
	}
	if !slices.Equal(seq, []string{h}) {
		t.Logf("note: the VIP moved while cut (allowed, never doubled): %v", seq)
	}
	l.Heal("proxy1", "proxy2")
	seq, err = l.Watch(2 * time.Second)
	t.Logf("healed, holders seen: %v", seq)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WaitStable(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if hs := l.Holders(); len(hs) != 1 {
		t.Fatalf("holders after the heal: %v", hs)
	}
}

// Issue 5 (c): with failback, proxy1 (priority 200) takes the VIP back when it
// returns after a SIGKILL; never two holders on the way.
func TestFailback(t *testing.T) {
	l := newLab(t, Options{Failback: true, SIPpBackends: true})
	upWithBackends(t, l)
	if _, err := l.WaitHolder("proxy1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	pr := newProber(t, l)
	f, err := l.KillHolder(pr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL proxy1 -> VIP on proxy2 after %s", f.VIP.Round(time.Millisecond))
	t0 := time.Now()
	if err := l.StartProxy("proxy1"); err != nil {
		t.Fatal(err)
	}
	var seq []string
	for time.Since(t0) < 15*time.Second && !slices.Equal(l.Holders(), []string{"proxy1"}) {
		s, err := l.Watch(100 * time.Millisecond)
		seq = append(seq, s...)
		if err != nil {
			t.Fatalf("%v; seen %v", err, slices.Compact(seq))
		}
	}
	if !slices.Equal(l.Holders(), []string{"proxy1"}) {
		t.Fatalf("proxy1 did not take the VIP back within 15 s; seen %v", slices.Compact(seq))
	}
	t.Logf("failback to proxy1 %s after its restart; holders seen %v", time.Since(t0).Round(time.Millisecond), slices.Compact(seq))
	// Sent at 0, 0.5 and 1.5 s (Timer E) within the 2 s: one datagram
	// left as the VIP moved was once unanswered.
	if code, err := pr.Ask(2 * time.Second); err != nil || code != 200 {
		t.Errorf("OPTIONS through the VIP after the failback: %d %v", code, err)
	}
}

// Issue 5 (d): a phone registered through proxy1 is reached through proxy2
// after proxy1 dies: pbx2 calls sip:201@VIP and the phone answers.
func TestPhoneReachedAfterProxyDies(t *testing.T) {
	l := newLab(t, Options{Failback: true, SIPpBackends: true})
	upWithBackends(t, l)
	if _, err := l.WaitHolder("proxy1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	phone, err := l.Sipp("phones", "phone201", 5070, "-sf", l.Scenario("phone_register.xml"),
		"-oocsf", l.Scenario("phone_answer.xml"), "-m", "1", "-d", "60000", "-timeout", "90s", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Proxies {
		if err := WaitFor(5*time.Second, "201's binding on "+p, func() bool {
			s, err := l.Status(p)
			return err == nil && s.Registrar.Bindings == 1
		}); err != nil {
			t.Fatalf("%v\n%s", err, phone.Log(3000))
		}
	}
	pr := newProber(t, l)
	f, err := l.KillHolder(pr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s -> VIP on %s after %s", f.Killed, f.Twin, f.VIP.Round(time.Millisecond))
	call, err := l.Sipp("pbx2", "call201", 5061, "-sf", l.Scenario("uac_call.xml"), "-s", "201", "-m", "1",
		"-timeout", "10s", "-timeout_error", VIP+":5060")
	if err != nil {
		t.Fatal(err)
	}
	if code := call.Wait(15 * time.Second); code != 0 {
		t.Fatalf("call from pbx2 to 201 through %s failed (exit %d)\n%s\n%s", f.Twin, code, call.Log(3000), phone.Log(3000))
	}
	if phone.Exited() {
		t.Fatalf("the phone ended early:\n%s", phone.Log(3000))
	}
}
