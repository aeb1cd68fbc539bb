package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Node A runs the group; its service and agent are SIGKILLed; B refuses
// while A's DRBD is still Primary, the coordinator fences A, B takes over
// and answers SIP; the recorded drbdadm calls never show two primaries.
func TestFailoverNeverTwoPrimaries(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa, pb := testkit.FreePort(t, "127.0.0.1"), testkit.FreePort(t, "127.0.0.1")
	a := c.start("A", c.config("A", pa), pa)
	b := c.start("B", c.config("B", pb), pb)
	ctx := context.Background()

	res, err := a.client.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatalf("start A: %v", err)
	}
	if res.Status.State != StateStarted || res.Status.Mounted != "hapbx-A" {
		t.Fatalf("A after start: %+v", res.Status)
	}
	if err := sipOptionsReady(a.sipAddr)(ctx); err != nil {
		t.Fatalf("A's service not answering: %v", err)
	}
	if m, _ := MountedAt(c.mnt); m != "" {
		t.Fatalf("A's mount leaked into the test's namespace: %s", m)
	}
	waitStatus(t, b, "B sees peer A Primary", func(s Status) bool { return s.PeerRole == RolePrimary && s.Connection == ConnConnected })

	if _, err := b.client.Start(ctx, StartOptions{}); !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("B start while A Primary: err %v, want ErrPeerPrimary", err)
	}

	// A crashes: service and agent SIGKILLed. Its kernel still holds DRBD
	// Primary, so B must still refuse.
	a.killService(c)
	a.proc.Kill()
	if err := sipOptionsReady(a.sipAddr)(ctx); err == nil {
		t.Fatal("A's service still answers after SIGKILL")
	}
	if _, err := b.client.Start(ctx, StartOptions{}); !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("B start while A's kernel Primary: err %v, want ErrPeerPrimary", err)
	}

	// The coordinator fences A (power off), then starts B.
	if err := (CommandFencer{Command: c.drbd.FenceCommand("A", false), Timeout: 5 * time.Second}).Fence(ctx); err != nil {
		t.Fatalf("fence A: %v", err)
	}
	t0 := time.Now()
	res, err = b.client.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatalf("start B after fencing A: %v (report %+v)", err, res.Report)
	}
	t.Logf("B started in %s (steps %+v)", time.Since(t0), res.Report.Steps)
	if err := sipOptionsReady(b.sipAddr)(ctx); err != nil {
		t.Fatalf("B's service not ready: %v", err)
	}
	st := waitStatus(t, b, "B Primary, mounted, started", func(s Status) bool {
		return s.DRBDRole == RolePrimary && s.Mounted == "hapbx-B" && s.State == StateStarted
	})
	if st.Connection == ConnConnected {
		t.Fatalf("B still connected to a powered-off A: %+v", st)
	}

	calls := c.drbd.Calls()
	testkit.NeverTwoPrimaries(t, calls)
	fence := -1
	for i, cl := range calls {
		if cl.What == "fence A" && cl.Exit == 0 {
			fence = i
			break
		}
	}
	bPrimary := testkit.FindCall(calls, "B", "drbdadm primary", 0)
	if fence < 0 || bPrimary < 0 || bPrimary < fence {
		t.Fatalf("B promoted (call %d) before A was fenced (call %d)", bPrimary, fence)
	}
	if i := testkit.FindCall(calls, "B", "drbdadm primary", 11); i >= 0 {
		t.Fatalf("agent B asked DRBD for a second primary instead of refusing itself: %+v", calls[i])
	}
}

// With the peer unreachable and the fence command failing, there is no
// promotion.
func TestFenceFailureBlocksPromotion(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "B") // A's host is dead, its last known role Primary
	c.drbd.Write("role.A", RolePrimary)
	pb := testkit.FreePort(t, "127.0.0.1")
	cfg := c.config("B", pb)
	cfg.Fence.Command = c.drbd.FenceCommand("A", true)
	b := c.start("B", cfg, pb)

	res, err := b.client.Start(context.Background(), StartOptions{})
	if !errors.Is(err, ErrFenceFailed) {
		t.Fatalf("err %v, want ErrFenceFailed", err)
	}
	if !strings.Contains(res.Error, "exit status 1") || res.Status.State == StateStarted {
		t.Fatalf("reason not reported: %+v", res)
	}
	calls := c.drbd.Calls()
	if i := testkit.FindCall(calls, "B", "drbdadm primary", 0); i >= 0 {
		t.Fatalf("B promoted despite failed fencing: %+v", calls[i])
	}
	if testkit.FindCall(calls, "B", "fence A", 1) < 0 {
		t.Fatal("fence command was not run")
	}
	if c.drbd.Read("role.B") == RolePrimary {
		t.Fatal("B's DRBD role is Primary")
	}
}

// A split brain reported by events2 blocks automatic promotion; a forced
// start promotes; after the operator resolves and clears it, an automatic
// start works again.
func TestSplitBrainBlocksAutomaticPromotion(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pb := testkit.FreePort(t, "127.0.0.1")
	b := c.start("B", c.config("B", pb), pb)
	ctx := context.Background()

	c.drbd.Write("sb", "1")
	st := waitStatus(t, b, "split brain reported", func(s Status) bool { return s.SplitBrain })
	if !strings.Contains(st.SplitBrainReason, "split-brain") {
		t.Fatalf("reason %q does not name the split-brain helper", st.SplitBrainReason)
	}
	if m := metric(t, b, "hapbx_storage_split_brain"); m != "1" {
		t.Fatalf("hapbx_storage_split_brain = %q, want 1", m)
	}
	res, err := b.client.Start(ctx, StartOptions{})
	if !errors.Is(err, ErrSplitBrain) || res.Code != "split_brain" {
		t.Fatalf("automatic start during split brain: %v (code %q), want ErrSplitBrain", err, res.Code)
	}
	if i := testkit.FindCall(c.drbd.Calls(), "B", "drbdadm primary", 0); i >= 0 {
		t.Fatal("B promoted during split brain")
	}
	res, err = b.client.Start(ctx, StartOptions{Force: true})
	if err != nil {
		t.Fatalf("forced start: %v", err)
	}
	if testkit.FindCall(c.drbd.Calls(), "B", "drbdadm primary --force r0", 0) < 0 {
		t.Fatal("forced start did not run drbdadm primary --force")
	}
	if !res.Status.SplitBrain {
		t.Fatal("forced start silently cleared the split brain flag")
	}
	if _, err := b.client.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}

	// Operator resolves (reconnects) and clears.
	if err := os.Remove(c.drbd.Path("sb")); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b, "reconnected", func(s Status) bool { return s.Connection == ConnConnected })
	if err := b.client.ClearSplitBrain(ctx); err != nil {
		t.Fatalf("clear: %v", err)
	}
	if m := metric(t, b, "hapbx_storage_split_brain"); m != "0" {
		t.Fatalf("hapbx_storage_split_brain = %q after clear, want 0", m)
	}
	if _, err := b.client.Start(ctx, StartOptions{}); err != nil {
		t.Fatalf("automatic start after clear: %v", err)
	}
	testkit.NeverTwoPrimaries(t, c.drbd.Calls())
}

// A failing mount rolls the group back: DRBD is demoted again and the
// reason is reported.
func TestFailedMountRollsBack(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa := testkit.FreePort(t, "127.0.0.1")
	cfg := c.config("A", pa)
	cfg.Filesystem.Type = "hapbxnosuchfs"
	a := c.start("A", cfg, pa)

	res, err := a.client.Start(context.Background(), StartOptions{})
	if !errors.Is(err, ErrStepFailed) {
		t.Fatalf("err %v, want ErrStepFailed", err)
	}
	if !strings.Contains(res.Error, "filesystem start") || !strings.Contains(res.Error, "no such device") {
		t.Fatalf("reason not reported: %q", res.Error)
	}
	var got []string
	for _, s := range res.Report.Steps {
		got = append(got, s.Step+"/"+s.Op)
	}
	want := []string{"drbd/start", "filesystem/start", "filesystem/rollback", "drbd/rollback"}
	if !slices.Equal(got, want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	calls := c.drbd.Calls()
	p, s := testkit.FindCall(calls, "A", "drbdadm primary r0", 0), testkit.FindCall(calls, "A", "drbdadm secondary r0", 0)
	if p < 0 || s < p {
		t.Fatalf("no drbdadm secondary after primary (primary %d, secondary %d)", p, s)
	}
	if c.drbd.Read("role.A") != RoleSecondary || res.Status.State != StateFailed || res.Status.Mounted != "" {
		t.Fatalf("not rolled back: role %s, status %+v", c.drbd.Read("role.A"), res.Status)
	}
	if c.drbd.Read("sipp.A.pid") != "" {
		t.Fatal("service started although the mount failed")
	}
}

// A service that never gets ready is stopped, unmounted and demoted again.
func TestNotReadyRollsBack(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa, elsewhere := testkit.FreePort(t, "127.0.0.1"), testkit.FreePort(t, "127.0.0.1")
	cfg := c.config("A", pa)
	cfg.ReadyTimeout = 500 * time.Millisecond
	a := c.start("A", cfg, elsewhere) // the readiness check probes a port nothing answers

	res, err := a.client.Start(context.Background(), StartOptions{})
	if !errors.Is(err, ErrStepFailed) || !strings.Contains(res.Error, "not ready within 500ms") {
		t.Fatalf("err %v, want not ready", err)
	}
	if c.drbd.Read("role.A") != RoleSecondary || res.Status.Mounted != "" || c.drbd.Read("sipp.A.pid") != "" {
		t.Fatalf("not rolled back: role %s mounted %q sipp pid %q", c.drbd.Read("role.A"), res.Status.Mounted, c.drbd.Read("sipp.A.pid"))
	}
}

// POSTs need the bearer token; GET status does not.
func TestControlAPIAuth(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa := testkit.FreePort(t, "127.0.0.1")
	a := c.start("A", c.config("A", pa), pa)
	ctx := context.Background()
	for _, tok := range []string{"", "wrong"} {
		cl := a.client
		cl.Token = tok
		if _, err := cl.Start(ctx, StartOptions{}); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("token %q: err %v, want ErrUnauthorized", tok, err)
		}
	}
	if i := testkit.FindCall(c.drbd.Calls(), "A", "drbdadm primary", 0); i >= 0 {
		t.Fatal("unauthorized start promoted")
	}
	resp, err := http.Get(a.base + PathStatus)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"drbd_role":"Secondary"`) {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
}

// metric reads one unlabelled sample from the node's /metrics.
func metric(t *testing.T, nd *node, name string) string {
	t.Helper()
	resp, err := http.Get(nd.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

// A started group whose service dies is reported failed by the monitor;
// a new Start restarts only what is missing.
func TestMonitorReportsDeadServiceAndRestart(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa := testkit.FreePort(t, "127.0.0.1")
	a := c.start("A", c.config("A", pa), pa)
	ctx := context.Background()
	if _, err := a.client.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	a.killService(c)
	st := waitStatus(t, a, "service failure noticed", func(s Status) bool { return s.State == StateFailed })
	if st.Service != "inactive" || !strings.Contains(st.LastError, "monitor") {
		t.Fatalf("failure not reported: %+v", st)
	}
	if m := metric(t, a, `hapbx_storage_failures_total{step="monitor"}`); m != "1" {
		t.Fatalf("monitor failures = %q, want 1", m)
	}
	if m := metric(t, a, "hapbx_storage_group_state"); m != "4" {
		t.Fatalf("group state = %q, want 4 (failed)", m)
	}
	res, err := a.client.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if err := sipOptionsReady(a.sipAddr)(ctx); err != nil || res.Status.State != StateStarted {
		t.Fatalf("not restarted: %v %+v", err, res.Status)
	}
	if n := strings.Count(readFile(t, c.drbd.Path("calls.log")), "node=A drbdadm primary r0 exit=0"); n != 2 {
		t.Fatalf("%d promotions, want 2 (start, restart)", n)
	}
}

// PeerDisconnectFencer, the strategy without a fence command, waits until
// the surviving node's DRBD shows the peer gone, plus the safety delay; it
// fails while the peer stays connected.
func TestPeerDisconnectFencer(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pb := testkit.FreePort(t, "127.0.0.1")
	b := c.start("B", c.config("B", pb), pb)
	ctx := context.Background()

	f := PeerDisconnectFencer{State: b.client.DRBDState, Timeout: 300 * time.Millisecond, SafetyDelay: 200 * time.Millisecond, Poll: 20 * time.Millisecond}
	if err := f.Fence(ctx); !errors.Is(err, ErrFenceFailed) || !strings.Contains(err.Error(), "Connected") {
		t.Fatalf("fence with peer connected: %v, want ErrFenceFailed naming the connection", err)
	}

	f.Timeout = 3 * time.Second
	go func() {
		time.Sleep(200 * time.Millisecond)
		os.Remove(c.drbd.Path("up.A")) // A's host dies
	}()
	t0 := time.Now()
	if err := f.Fence(ctx); err != nil {
		t.Fatalf("fence after A died: %v", err)
	}
	if d := time.Since(t0); d < 400*time.Millisecond {
		t.Fatalf("returned after %s: did not wait for the loss (200ms) plus the safety delay (200ms)", d)
	}
	if st, _ := b.client.Status(ctx); st.Connection == ConnConnected {
		t.Fatalf("fenced while B still sees A connected: %+v", st)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The systemd path: `systemctl start UNIT`, ready when `systemctl
// is-active UNIT` says active (no ReadyChecker wired), `systemctl stop UNIT`.
// systemctl is a stand-in first on PATH that runs SIPp as the unit.
func TestSystemdUnit(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa := testkit.FreePort(t, "127.0.0.1")
	cfg := c.config("A", pa)
	cfg.Service = ServiceConfig{Unit: "asterisk.service", Timeout: 5 * time.Second}
	sippCmd := fmt.Sprintf("sipp -sf %s -i 127.0.0.1 -p %d -nostdin", uasOptions(t), pa)
	a := c.start("A", cfg, pa, childSIP+"=", "PATH="+c.drbd.Bin+":"+os.Getenv("PATH"),
		"SYSTEMCTL_STUB_DIR="+c.dir, "SYSTEMCTL_STUB_START="+sippCmd)
	t.Cleanup(func() {
		testkit.KillPIDFile(filepath.Join(c.dir, "asterisk.service.pid"))
	})
	ctx := context.Background()
	if _, err := a.client.Start(ctx, StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	log := readFile(t, filepath.Join(c.dir, "systemctl.log"))
	if !strings.Contains(log, " start asterisk.service") || !strings.Contains(log, " is-active asterisk.service") {
		t.Fatalf("systemctl calls:\n%s", log)
	}
	// is-active is weaker than the production readiness check: allow SIPp
	// its socket before asking it.
	testkit.Eventually(t, 3*time.Second, "unit's SIPp answering", func() bool {
		return sipOptionsReady(fmt.Sprintf("127.0.0.1:%d", pa))(ctx) == nil
	})
	if _, err := a.client.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(readFile(t, filepath.Join(c.dir, "systemctl.log")), " stop asterisk.service") {
		t.Fatal("systemctl stop not called")
	}
	if sipOptionsReady(fmt.Sprintf("127.0.0.1:%d", pa))(ctx) == nil {
		t.Fatal("unit's SIPp still answers after stop")
	}
}

// An agent whose local disk is not UpToDate (Outdated after it was
// disconnected while the peer wrote) refuses an automatic start before
// asking DRBD; the operator's forced start still goes through.
func TestOutdatedDiskRefusesPromotion(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pb := testkit.FreePort(t, "127.0.0.1")
	b := c.start("B", c.config("B", pb), pb)
	ctx := context.Background()

	c.drbd.Write("disk.B", "Outdated")
	waitStatus(t, b, "disk Outdated seen", func(s Status) bool { return s.Disk == "Outdated" })
	res, err := b.client.Start(ctx, StartOptions{})
	if !errors.Is(err, ErrDiskNotUpToDate) {
		t.Fatalf("automatic start on an Outdated disk: %v (code %q), want ErrDiskNotUpToDate", err, res.Code)
	}
	if i := testkit.FindCall(c.drbd.Calls(), "B", "drbdadm primary", 0); i >= 0 {
		t.Fatal("B asked DRBD for primary on an Outdated disk")
	}
	if _, err := b.client.Start(ctx, StartOptions{Force: true}); err != nil {
		t.Fatalf("forced start: %v", err)
	}
	if testkit.FindCall(c.drbd.Calls(), "B", "drbdadm primary --force r0", 0) < 0 {
		t.Fatal("forced start did not run drbdadm primary --force")
	}
	testkit.NeverTwoPrimaries(t, c.drbd.Calls())
}
