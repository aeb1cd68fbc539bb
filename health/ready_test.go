package health_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/health/amitest"
	"github.com/hapbx/hapbx/internal/testkit"
	"go.uber.org/zap/zaptest"
)

// The agent's readiness: SIP answered AND AMI FullyBooted, each alone is
// not enough.
func TestReadyCheckNeedsSIPAndFullyBooted(t *testing.T) {
	ip := testkit.RandomIP()
	uas := testkit.StartOptionsUAS(t, ip, 0, 404, "udp") // Asterisk's 404 to a user-less OPTIONS is alive
	srv := amitest.New(t, "hapbx", "pw")
	srv.SetBooted(false)
	cfg := health.DefaultConfig()
	rc, err := health.NewReadyCheck(health.Target{Name: "local", Address: uas.Addr(),
		AMI: &health.AMITarget{Address: srv.Addr(), Username: "hapbx", Secret: "pw"}}, cfg, 200*time.Millisecond, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = rc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	testkit.Eventually(t, 2*time.Second, "AMI logged in, not booted", func() bool {
		err := rc.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "FullyBooted not seen")
	})
	srv.SetBooted(true)
	testkit.Eventually(t, 2*time.Second, "ready", func() bool { return rc.Ready(context.Background()) == nil })
	uas.Kill()
	if err := rc.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "sip ") {
		t.Fatalf("ready with SIP dead: %v", err)
	}
	uas.Restart()
	testkit.Eventually(t, 2*time.Second, "ready again", func() bool { return rc.Ready(context.Background()) == nil })
	srv.Close()
	testkit.Eventually(t, 2*time.Second, "not ready without AMI", func() bool {
		err := rc.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "ami ")
	})
}
