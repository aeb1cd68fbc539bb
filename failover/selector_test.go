package failover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const (
	U = health.StateUp
	S = health.StateSuspect
	D = health.StateDown
	N = health.StateUnknown
)

type step struct {
	name       string
	to         health.State
	active     string
	candidates string // comma-separated Candidates("") in active-standby
}

func TestActiveStandby(t *testing.T) {
	tests := []struct {
		name     string
		failback bool
		steps    []step
	}{
		{"nothing known", true, []step{{"b", N, "", ""}}},
		{"preferred first", true, []step{{"b", U, "b", "b"}, {"a", U, "a", "a,b"}, {"c", U, "a", "a,b,c"}}},
		{"failover and failback", true, []step{
			{"a", U, "a", "a"}, {"b", U, "a", "a,b"},
			{"a", S, "a", "b,a"}, // suspect keeps the role but is tried last
			{"a", D, "b", "b"},
			{"a", U, "a", "a,b"}, // failback
		}},
		{"no failback", false, []step{
			{"a", U, "a", "a"}, {"b", U, "a", "a,b"},
			{"a", D, "b", "b"},
			{"a", U, "b", "b,a"}, // b stays while up
			{"b", S, "b", "a,b"},
			{"b", D, "a", "a"},
			{"b", U, "a", "a,b"},
		}},
		{"suspect standby not preferred", true, []step{
			{"a", U, "a", "a"}, {"b", U, "a", "a,b"}, {"c", U, "a", "a,b,c"},
			{"b", S, "a", "a,c,b"}, {"a", D, "c", "c,b"},
		}},
		{"only suspect left", true, []step{
			{"a", U, "a", "a"}, {"b", U, "a", "a,b"}, {"a", D, "b", "b"}, {"b", S, "b", "b"}, {"b", D, "", ""},
			{"c", S, "c", "c"}, // a suspect backend beats none
			{"a", U, "a", "a,c"},
		}},
		{"unknown never routed", true, []step{{"a", U, "a", "a"}, {"a", N, "", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Failback = tt.failback
			// Settled at once: these cases are about steady state (c never
			// gets a verdict); TestStartupSettle covers startup.
			s, err := New(cfg, []string{"a", "b", "c"}, nil, nil, WithStartupSettle(0))
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.steps {
				s.Apply(health.Change{Name: st.name, To: st.to})
				if got := s.Active(); got != st.active {
					t.Fatalf("step %d (%s %v): active %q, want %q", i, st.name, st.to, got, st.active)
				}
				if got := strings.Join(s.Candidates("call-1"), ","); got != st.candidates {
					t.Fatalf("step %d (%s %v): candidates %q, want %q", i, st.name, st.to, got, st.candidates)
				}
			}
		})
	}
}

// Without failback, "stay where you are" holds only after startup: the
// standby whose first probes answer first must not keep the role for good.
func TestStartupSettle(t *testing.T) {
	const settle = 2 * time.Second
	type tstep struct {
		name   string // "" advances the clock by wait
		to     health.State
		wait   time.Duration
		active string
	}
	tests := []struct {
		name     string
		failback bool
		backends []string
		steps    []tstep
		switches float64
	}{
		{"standby up first, preferred 10ms later", false, []string{"a", "b"}, []tstep{
			{name: "b", to: U, active: "b"}, // served at once
			{wait: 10 * time.Millisecond},
			{name: "a", to: U, active: "a"}, // every backend has a verdict: the preferred one
			{name: "a", to: D, active: "b"},
			{name: "a", to: U, active: "b"}, // after a failover: stay
		}, 1},
		{"last verdict is a down", false, []string{"a", "b", "c"}, []tstep{
			{name: "c", to: U, active: "c"},
			{name: "b", to: U, active: "b"},
			{name: "a", to: D, active: "b"}, // settled on b
			{name: "a", to: U, active: "b"},
		}, 0},
		{"dead preferred does not hold startup", false, []string{"a", "b"}, []tstep{
			{name: "b", to: U, active: "b"},
			{wait: settle},
			{name: "a", to: U, active: "b"}, // too late: settled by time
		}, 0},
		{"just inside the window", false, []string{"a", "b"}, []tstep{
			{name: "b", to: U, active: "b"},
			{wait: settle - time.Millisecond},
			{name: "a", to: U, active: "a"},
		}, 0},
		{"settled stays settled after reload", false, []string{"a", "b"}, []tstep{
			{name: "b", to: U, active: "b"},
			{name: "a", to: D, active: "b"},
			{name: "reload"}, // adds c, unknown
			{name: "a", to: U, active: "b"},
		}, 0},
		{"failback unchanged", true, []string{"a", "b"}, []tstep{
			{name: "b", to: U, active: "b"},
			{wait: settle},
			{name: "a", to: U, active: "a"}, // a real failback
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Failback = tt.failback
			s, err := New(cfg, tt.backends, nil, nil, WithStartupSettle(settle))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			s.now = func() time.Time { return now }
			for i, st := range tt.steps {
				switch st.name {
				case "":
					now = now.Add(st.wait)
					continue
				case "reload":
					if err := s.SetBackends(append(slices.Clone(tt.backends), "c")); err != nil {
						t.Fatal(err)
					}
					continue
				}
				s.Apply(health.Change{Name: st.name, To: st.to})
				if got := s.Active(); got != st.active {
					t.Fatalf("step %d (%s %v): active %q, want %q", i, st.name, st.to, got, st.active)
				}
			}
			if v := read(t, s.m.switches); v != tt.switches {
				t.Errorf("switches = %v, want %v (startup moves are not switches)", v, tt.switches)
			}
		})
	}
}

func TestStartupSettleDefault(t *testing.T) {
	h := health.DefaultConfig()
	if got, want := StartupSettle(h), 450*time.Millisecond; got != want {
		t.Fatalf("StartupSettle(defaults) = %s, want %s (rise 2 x 100ms + 250ms timeout)", got, want)
	}
	s, _ := New(DefaultConfig(), []string{"a"}, nil, nil)
	if s.settle != StartupSettle(h) {
		t.Fatalf("default settle %s", s.settle)
	}
}

func TestEventsAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(DefaultConfig(), []string{"a", "b"}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := s.Subscribe(ctx)
	for _, c := range []health.Change{
		{Name: "a", To: U}, {Name: "b", To: U}, {Name: "a", To: S}, {Name: "a", To: D, Reason: "sip: refused"},
		{Name: "zzz", To: U}, // unknown name: ignored
		{Name: "a", To: U}, {Name: "b", Removed: true, To: D},
	} {
		s.Apply(c)
	}
	want := []string{
		"active-changed  ", // initial: none
		"active-changed a ",
		"backend-down a ",
		"active-changed b a",
		"active-changed a b",
		"backend-removed b ", // a reload dropped it: not dead, its calls go on
	}
	for i, w := range want {
		select {
		case e := <-ev:
			if got := fmt.Sprintf("%v %s %s", e.Kind, e.Backend, e.Previous); got != w {
				t.Errorf("event %d = %q, want %q", i, got, w)
			}
		case <-time.After(time.Second):
			t.Fatalf("event %d (%q) missing", i, w)
		}
	}
	if v := read(t, s.m.switches); v != 2 {
		t.Errorf("switches = %v, want 2 (a->b, b->a)", v)
	}
	if v := read(t, s.m.active.WithLabelValues("a")); v != 1 {
		t.Errorf("active{a} = %v", v)
	}
	if v := read(t, s.m.active.WithLabelValues("b")); v != 0 {
		t.Errorf("active{b} = %v", v)
	}
}

func TestBalanceDistributionAndStability(t *testing.T) {
	cfg := Config{Routing: RoutingBalance, Failback: true}
	names := []string{"pbx1", "pbx2", "pbx3"}
	s, err := New(cfg, names, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		s.Apply(health.Change{Name: n, To: U})
	}
	const keys = 30000
	first := map[string]string{}
	count := map[string]int{}
	for i := range keys {
		k := fmt.Sprintf("%08x-call@10.0.0.%d", i*7919, i%250)
		c := s.Candidates(k)
		if len(c) != 3 {
			t.Fatalf("candidates %v", c)
		}
		if again := s.Candidates(k); !slices.Equal(c, again) {
			t.Fatalf("unstable for %q: %v then %v", k, c, again)
		}
		first[k] = c[0]
		count[c[0]]++
	}
	for _, n := range names {
		if share := float64(count[n]) / keys; share < 0.30 || share > 0.37 {
			t.Errorf("%s gets %.3f of the keys, want about 1/3 (%v)", n, share, count)
		}
	}

	// pbx2 goes down: only its keys move, and they spread over the others.
	s.Apply(health.Change{Name: "pbx2", To: D})
	moved := map[string]int{}
	for k, was := range first {
		now := s.Candidates(k)[0]
		if now == "pbx2" {
			t.Fatal("down backend chosen")
		}
		if was != "pbx2" && now != was {
			t.Fatalf("key %q moved from %s to %s although %s is up", k, was, now, was)
		}
		if was == "pbx2" {
			moved[now]++
		}
	}
	if moved["pbx1"] < count["pbx2"]/3 || moved["pbx3"] < count["pbx2"]/3 {
		t.Errorf("pbx2's keys did not spread: %v", moved)
	}
	// Suspect ones go last but stay listed.
	s.Apply(health.Change{Name: "pbx2", To: U})
	s.Apply(health.Change{Name: "pbx1", To: S})
	for k, was := range first {
		c := s.Candidates(k)
		if c[len(c)-1] != "pbx1" || len(c) != 3 {
			t.Fatalf("suspect pbx1 not last: %v", c)
		}
		if was != "pbx1" && c[0] != was {
			t.Fatalf("key %q: %v, want %s first", k, c, was)
		}
	}
}

func TestSetBackends(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, _ := New(DefaultConfig(), []string{"a", "b"}, nil, reg)
	s.Apply(health.Change{Name: "a", To: U})
	s.Apply(health.Change{Name: "b", To: U})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := s.Subscribe(ctx)
	if err := s.SetBackends([]string{"b", "c"}); err != nil {
		t.Fatal(err)
	}
	for e := range ev {
		if e.Backend != "a" || e.Kind == ActiveChanged {
			continue
		}
		if e.Kind != BackendRemoved {
			t.Fatalf("a dropped by a reload: event %v, want backend-removed (its calls must not be hung up)", e.Kind)
		}
		break
	}
	if s.Active() != "b" || strings.Join(s.Candidates("x"), ",") != "b" {
		t.Fatalf("after reload: active %q candidates %v", s.Active(), s.Candidates("x"))
	}
	n, err := testutilCount(reg)
	if err != nil || n != 2 {
		t.Errorf("hapbx_failover_active has %d series (%v), want 2 (b, c): a removed backend must not linger", n, err)
	}
	for _, bad := range [][]string{nil, {"a", "a"}, {""}} {
		if err := s.SetBackends(bad); err == nil {
			t.Errorf("SetBackends(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	err := Config{Routing: "round-robin"}.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), `routing: unknown mode "round-robin"`) {
		t.Fatalf("got %v", err)
	}
	if _, err := New(Config{Routing: "x"}, []string{"a"}, nil, nil); err == nil {
		t.Fatal("New accepted a bad config")
	}
}

// read returns a gauge's or counter's value.
func read(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}

// testutilCount counts the hapbx_failover_active series in reg.
func testutilCount(reg *prometheus.Registry) (int, error) {
	mfs, err := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "hapbx_failover_active" {
			return len(mf.GetMetric()), err
		}
	}
	return 0, err
}
