package health_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/health/amitest"
	"github.com/hapbx/hapbx/internal/testkit"
	"go.uber.org/zap/zaptest"
)

func startClient(t *testing.T, cfg health.AMIClientConfig) *health.AMIClient {
	t.Helper()
	c := health.NewAMIClient(cfg, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestAMIClientLoginPingReconnect(t *testing.T) {
	t.Parallel()
	srv := amitest.New(t, "hapbx", "s3cret")
	c := startClient(t, health.AMIClientConfig{Address: srv.Addr(), Username: "hapbx", Secret: "s3cret", PingInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if st := c.State(); st.Version != "5.0.2" || !st.LoggedIn || !st.FullyBooted {
		t.Errorf("state %+v", st)
	}
	testkit.Eventually(t, time.Second, "pings answered", func() bool { return srv.Pings() >= 3 && !c.State().LastPong.IsZero() })

	srv.DropConnections()
	testkit.Eventually(t, time.Second, "not ready after the drop", func() bool { return !c.Ready() })
	testkit.Eventually(t, 2*time.Second, "logged in again", func() bool { return srv.Logins() >= 2 && c.Ready() })
}

// A session that logged in but has not seen FullyBooted is not ready.
func TestAMIClientWaitsForFullyBooted(t *testing.T) {
	t.Parallel()
	srv := amitest.New(t, "u", "p")
	srv.SetBooted(false)
	c := startClient(t, health.AMIClientConfig{Address: srv.Addr(), Username: "u", Secret: "p"})
	testkit.Eventually(t, 2*time.Second, "logged in", func() bool { return c.State().LoggedIn })
	time.Sleep(100 * time.Millisecond)
	if c.Ready() {
		t.Fatal("ready without FullyBooted")
	}
	if r := c.State().Reason(); !strings.Contains(r, "FullyBooted") {
		t.Errorf("reason %q", r)
	}
	srv.SetBooted(true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("not ready after FullyBooted: %v", err)
	}
}

func TestAMIClientBadSecretBacksOff(t *testing.T) {
	t.Parallel()
	srv := amitest.New(t, "u", "right")
	c := startClient(t, health.AMIClientConfig{Address: srv.Addr(), Username: "u", Secret: "wrong",
		BackoffMin: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	testkit.Eventually(t, time.Second, "a refused login", func() bool { return srv.FailedLogins() >= 1 })
	time.Sleep(1200 * time.Millisecond)
	if c.Ready() {
		t.Fatal("ready with a wrong secret")
	}
	if st := c.State(); !strings.Contains(st.Err, "Authentication failed") {
		t.Errorf("error %q", st.Err)
	}
	// 50+100+200+400+400... ms: about 5 attempts in 1.2 s; without backoff
	// it would be hundreds.
	if n := srv.FailedLogins(); n < 3 || n > 8 {
		t.Errorf("%d login attempts in 1.2 s; backoff 50ms..400ms expects 4-6", n)
	}
}

func TestAMIClientStuckAndNoServer(t *testing.T) {
	t.Parallel()
	srv := amitest.New(t, "u", "p")
	c := startClient(t, health.AMIClientConfig{Address: srv.Addr(), Username: "u", Secret: "p", PingInterval: 100 * time.Millisecond, Timeout: 200 * time.Millisecond})
	testkit.Eventually(t, 2*time.Second, "ready", c.Ready)
	srv.SetStuck(true)
	start := time.Now()
	testkit.Eventually(t, time.Second, "not ready once stuck", func() bool { return !c.Ready() })
	t.Logf("stuck manager noticed in %s", time.Since(start).Round(time.Millisecond))
	srv.SetStuck(false)
	testkit.Eventually(t, 3*time.Second, "ready after recovery", c.Ready)

	srv.Close()
	testkit.Eventually(t, time.Second, "not ready once closed", func() bool { return !c.Ready() })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitReady on a dead manager: %v", err)
	}
}

// SIP answers but AMI stops answering: with both checks required the
// backend is down within 2 s, and comes back when AMI recovers.
func TestCheckerAMIStuckWhileSIPAnswers(t *testing.T) {
	t.Parallel()
	uas := testkit.StartOptionsUAS(t, testkit.RandomIP(), 0, 200, "udp")
	srv := amitest.New(t, "hapbx", "pw")
	c, reg := run(t, health.DefaultConfig(), []health.Target{{
		Name: "pbx", Address: uas.Addr(),
		AMI: &health.AMITarget{Address: srv.Addr(), Username: "hapbx", Secret: "pw"},
	}})
	ch := watch(t, c)
	waitFor(t, ch, "pbx", health.StateUp, 3*time.Second)

	srv.SetStuck(true)
	stuck := time.Now()
	d := waitFor(t, ch, "pbx", health.StateDown, 2*time.Second)
	t.Logf("down %s after AMI got stuck: %s", time.Since(stuck).Round(time.Millisecond), d.Reason)
	if !strings.HasPrefix(d.Reason, "ami: ") {
		t.Errorf("reason %q should blame ami", d.Reason)
	}
	if s := c.Snapshot()[0]; !strings.HasPrefix(s.SIP, "answered 200") {
		t.Errorf("SIP should still answer: %+v", s)
	}

	srv.SetStuck(false)
	waitFor(t, ch, "pbx", health.StateUp, 5*time.Second)
	if v := metricValue(t, reg, "hapbx_health_probe_duration_seconds", map[string]string{"backend": "pbx", "kind": "ami"}); v < 1 {
		t.Errorf("no ami probe durations observed (%v)", v)
	}
}

// The reverse: AMI fine, SIP dead -> down; and a backend without AMI
// settings needs only SIP even when both are required.
func TestCheckerSIPDeadWhileAMIAnswers(t *testing.T) {
	t.Parallel()
	ip := testkit.RandomIP()
	uas := testkit.StartOptionsUAS(t, ip, 0, 200, "udp")
	plain := testkit.StartOptionsUAS(t, ip, 0, 200, "udp")
	srv := amitest.New(t, "hapbx", "pw")
	c, _ := run(t, health.DefaultConfig(), []health.Target{
		{Name: "pbx", Address: uas.Addr(), AMI: &health.AMITarget{Address: srv.Addr(), Username: "hapbx", Secret: "pw"}},
		{Name: "plain", Address: plain.Addr()},
	})
	ch := watch(t, c)
	waitFor(t, ch, "pbx", health.StateUp, 3*time.Second)
	if st, _ := c.State("plain"); st != health.StateUp {
		waitFor(t, ch, "plain", health.StateUp, 3*time.Second)
	}
	uas.Kill()
	d := waitFor(t, ch, "pbx", health.StateDown, 2*time.Second)
	if !strings.HasPrefix(d.Reason, "sip: ") {
		t.Errorf("reason %q should blame sip", d.Reason)
	}
}

// A manager that never says FullyBooted keeps the backend from going up.
func TestCheckerNotBootedIsNotUp(t *testing.T) {
	t.Parallel()
	uas := testkit.StartOptionsUAS(t, testkit.RandomIP(), 0, 200, "udp")
	srv := amitest.New(t, "hapbx", "pw")
	srv.SetBooted(false)
	c, _ := run(t, health.DefaultConfig(), []health.Target{{
		Name: "pbx", Address: uas.Addr(), AMI: &health.AMITarget{Address: srv.Addr(), Username: "hapbx", Secret: "pw"},
	}})
	ch := watch(t, c)
	d := waitFor(t, ch, "pbx", health.StateDown, 3*time.Second)
	if !strings.Contains(d.Reason, "FullyBooted") {
		t.Errorf("reason %q", d.Reason)
	}
	srv.SetBooted(true)
	waitFor(t, ch, "pbx", health.StateUp, 3*time.Second)
}

// Something else on the manager port (here an SSH-like greeting) is a
// protocol error, not a manager; WaitReady ends with ErrAMIClosed once Run
// has returned.
func TestAMIClientWrongBanner(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
			c.Close()
		}
	}()
	c := health.NewAMIClient(health.AMIClientConfig{Address: ln.Addr().String(), Username: "u", Secret: "p"}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	testkit.Eventually(t, time.Second, "banner refused", func() bool { return strings.Contains(c.State().Err, "SSH-2.0") })
	if c.Ready() {
		t.Fatal("ready")
	}
	cancel()
	<-done
	if err := c.WaitReady(context.Background()); !errors.Is(err, health.ErrAMIClosed) {
		t.Errorf("WaitReady after Run: %v", err)
	}
}
