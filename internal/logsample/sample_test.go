package logsample

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The overload: 48 832 identical warnings. Sampled, 10 are written
// and one line reports the 48 822 others; a different message keeps its
// own allowance.
func TestRepeatedWarningsSampledWithCount(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	// One tick and one report interval for the whole test: no clock in it.
	log := zap.New(Wrap(core, Config{Tick: time.Hour, First: 10, Report: time.Hour})).With(zap.String("node", "proxy1"))
	proxyLog := log.Named("proxy")
	for i := range 48832 {
		proxyLog.With(zap.Int("i", i)).Warn("backend failed a request", zap.String("backend", "asterisk1"))
	}
	log.Info("hapbx running")
	if n := logs.FilterMessage("backend failed a request").Len(); n != 10 {
		t.Fatalf("%d warnings written, want 10", n)
	}
	if n := logs.FilterMessage("repeated log lines suppressed").Len(); n != 0 {
		t.Fatalf("reported before the interval: %d lines", n)
	}
	if err := log.Sync(); err != nil {
		t.Fatal(err)
	}
	rep := logs.FilterMessage("repeated log lines suppressed").All()
	if len(rep) != 1 {
		t.Fatalf("%d report lines, want 1", len(rep))
	}
	f := rep[0].ContextMap()
	if f["suppressed_msg"] != "backend failed a request" || f["suppressed"] != int64(48822) || f["level_suppressed"] != "warn" ||
		rep[0].LoggerName != "proxy" || rep[0].Level != zapcore.WarnLevel || f["i"] != nil {
		t.Fatalf("report line %+v %v", rep[0].Entry, f)
	}
	if n := logs.FilterMessage("hapbx running").Len(); n != 1 {
		t.Fatal("another message lost its allowance")
	}
	// reported once: a second Sync has nothing to say
	_ = log.Sync()
	if n := logs.FilterMessage("repeated log lines suppressed").Len(); n != 1 {
		t.Fatalf("%d report lines after a second Sync, want 1", n)
	}
}

// The report comes by itself once the interval has passed, at the next
// line logged.
func TestReportAfterInterval(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	w := Wrap(core, Config{Tick: time.Hour, First: 1, Report: time.Minute}).(*reporting)
	now := time.Now()
	w.st.now = func() time.Time { return now }
	log := zap.New(w)
	for range 5 {
		log.Warn("same")
	}
	now = now.Add(2 * time.Minute)
	log.Info("later")
	rep := logs.FilterMessage("repeated log lines suppressed").All()
	if len(rep) != 1 || rep[0].ContextMap()["suppressed"] != int64(4) {
		t.Fatalf("report lines %v, want one with suppressed=4", rep)
	}
}
