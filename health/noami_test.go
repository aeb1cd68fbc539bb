package health_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// require: [sip, ami] on a backend without AMI settings checks SIP only;
// that must be said once per backend in the log and shown in its status,
// not happen silently.
func TestRequireAMIWithoutAMISettings(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	cfg := health.DefaultConfig()
	cfg.Require = []string{health.CheckSIP, health.CheckAMI}
	cfg.Interval = 50 * time.Millisecond
	cfg.Timeout = 50 * time.Millisecond
	// Nothing answers SIP there: probes fail fast, which is fine; what is
	// checked is what the status says about AMI.
	ip := testkit.RandomIP()
	addr := net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(t, ip)))
	targets := []health.Target{
		{Name: "pbx1", Address: addr, AMI: &health.AMITarget{Address: addr, Username: "u", Secret: "s"}},
		{Name: "pbx2", Address: addr},
	}
	c, err := health.New(cfg, targets, zap.New(core), nil)
	if err != nil {
		t.Fatal(err)
	}
	amiOf := func(name string) string {
		for _, st := range c.Snapshot() {
			if st.Name == name {
				return st.AMI
			}
		}
		t.Fatalf("%s missing from Snapshot", name)
		return ""
	}
	if got := amiOf("pbx2"); !strings.HasPrefix(got, "not configured") {
		t.Fatalf("pbx2 status ami = %q before any probe, want \"not configured...\"", got)
	}
	if got := amiOf("pbx1"); got != "" {
		t.Fatalf("pbx1 status ami = %q before any probe, want empty", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitState(t, c, "pbx2", health.StateDown, 3*time.Second)
	// A reload with the same targets must not warn again.
	if err := c.SetTargets(targets); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := amiOf("pbx2"); !strings.HasPrefix(got, "not configured") {
		t.Fatalf("pbx2 status ami = %q after probes, want \"not configured...\"", got)
	}

	var warned []string
	for _, e := range logs.FilterMessageSnippet("no ami settings").All() {
		warned = append(warned, e.ContextMap()["backend"].(string))
		if !strings.Contains(e.Message, "AMI is not checked") {
			t.Errorf("warning %q does not say AMI is not checked", e.Message)
		}
	}
	if len(warned) != 1 || warned[0] != "pbx2" {
		t.Fatalf("warnings about missing AMI for %q, want exactly one for pbx2", warned)
	}
}
