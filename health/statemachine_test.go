package health

import (
	"context"
	"testing"
	"time"
)

// newIdle returns a checker that is not running, for driving record().
func newIdle(t *testing.T, rise, fall int) (*Checker, *backend) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Rise, cfg.Fall = rise, fall
	c, err := New(cfg, []Target{{Name: "b", Address: "127.0.0.1:5060"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, c.backends["b"]
}

func TestStateMachine(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		probes     string // g good, b bad, s passive Suspect()
		want       []State
	}{
		{"rise 2", 2, 2, "gg", []State{StateUnknown, StateUp}},
		{"bad then up", 2, 2, "bgg", []State{StateUnknown, StateUnknown, StateUp}},
		{"fall 2 via suspect", 2, 2, "ggbb", []State{StateUnknown, StateUp, StateSuspect, StateDown}},
		{"suspect recovers", 2, 2, "ggbg", []State{StateUnknown, StateUp, StateSuspect, StateUp}},
		{"down needs rise again", 2, 2, "ggbbgbgg", []State{StateUnknown, StateUp, StateSuspect, StateDown, StateDown, StateDown, StateDown, StateUp}},
		{"fall 1", 1, 1, "gb", []State{StateUp, StateDown}},
		{"never up from unknown on bad", 2, 3, "bbb", []State{StateUnknown, StateUnknown, StateDown}},
		{"passive counts one strike", 2, 2, "ggsb", []State{StateUnknown, StateUp, StateSuspect, StateDown}},
		{"passive alone never downs", 2, 1, "ggsg", []State{StateUnknown, StateUp, StateSuspect, StateUp}},
		{"passive ignored when down", 2, 2, "bbs", []State{StateUnknown, StateDown, StateDown}},
		{"rise 3", 3, 2, "ggbggg", []State{StateUnknown, StateUnknown, StateUnknown, StateUnknown, StateUnknown, StateUp}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, b := newIdle(t, tt.rise, tt.fall)
			for i, p := range tt.probes {
				switch p {
				case 'g':
					c.record(b, true, "ok", "", "")
				case 'b':
					c.record(b, false, "bad", "", "")
				case 's':
					c.Suspect("b", "test")
				}
				if got, _ := c.State("b"); got != tt.want[i] {
					t.Fatalf("after %q: state %v, want %v", tt.probes[:i+1], got, tt.want[i])
				}
			}
		})
	}
}

func TestSubscribeOrderAndInitial(t *testing.T) {
	c, b := newIdle(t, 1, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := c.Subscribe(ctx)
	// Pile up changes without reading: probes must not block on us.
	for range 50 {
		c.record(b, true, "ok", "", "")
		c.record(b, false, "bad", "", "")
	}
	first := <-ch
	if first.From != StateUnknown || first.To != StateUnknown || first.Name != "b" {
		t.Fatalf("first change %+v, want the initial state", first)
	}
	for i := range 100 {
		select {
		case got := <-ch:
			want := StateUp
			if i%2 == 1 {
				want = StateDown
			}
			if got.To != want {
				t.Fatalf("change %d: %v, want %v", i, got.To, want)
			}
		case <-time.After(time.Second):
			t.Fatalf("change %d lost", i)
		}
	}
	cancel()
	for range ch { //nolint:revive // drain until closed
	}
}

func TestSetTargetsKeepsState(t *testing.T) {
	c, err := New(DefaultConfig(), []Target{
		{Name: "a", Address: "127.0.0.1:5060"},
		{Name: "b", Address: "127.0.0.1:5062"},
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.record(c.backends["a"], true, "ok", "", "")
	c.record(c.backends["a"], true, "ok", "", "")
	c.record(c.backends["b"], true, "ok", "", "")
	c.record(c.backends["b"], true, "ok", "", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := c.Subscribe(ctx)
	<-ch
	<-ch
	err = c.SetTargets([]Target{
		{Name: "c", Address: "127.0.0.1:5064"},
		{Name: "a", Address: "127.0.0.1:5060", Transport: "udp"}, // same as before
	})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := c.State("a"); st != StateUp {
		t.Errorf("unchanged backend a lost its state: %v", st)
	}
	if _, ok := c.State("b"); ok {
		t.Error("removed backend b still there")
	}
	got := <-ch
	if got.Name != "b" || !got.Removed || got.To != StateDown || got.From != StateUp {
		t.Errorf("removal change %+v", got)
	}
	if got = <-ch; got.Name != "c" || got.To != StateUnknown {
		t.Errorf("addition change %+v", got)
	}
	snap := c.Snapshot()
	if len(snap) != 2 || snap[0].Name != "c" || snap[1].Name != "a" {
		t.Errorf("snapshot order %+v", snap)
	}
	if err := c.SetTargets([]Target{{Name: "x", Address: "bad"}}); err == nil {
		t.Error("invalid targets accepted")
	}
}

func TestReasons(t *testing.T) {
	c, b := newIdle(t, 2, 2)
	c.record(b, false, "sip: connection refused", "", "")
	c.record(b, false, "sip: connection refused", "", "")
	c.record(b, true, "probes answered", "", "")
	if s := c.Snapshot()[0]; s.State != StateDown || s.Reason != "1 of 2 good probes; last failure: sip: connection refused" {
		t.Errorf("rising reason: %+v", s)
	}
	c.record(b, true, "probes answered", "", "")
	if s := c.Snapshot()[0]; s.State != StateUp || s.Reason != "probes answered" {
		t.Errorf("up reason: %+v", s)
	}
}

func TestSubscriptionClosesAfterRun(t *testing.T) {
	c, b := newIdle(t, 1, 1)
	ctx, cancel := context.WithCancel(context.Background())
	ch := c.Subscribe(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	c.record(b, false, "bad", "", "")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got []State
	for ch := range ch {
		got = append(got, ch.To)
	}
	if len(got) < 2 || got[0] != StateUnknown || got[len(got)-1] != StateDown {
		t.Errorf("delivered %v before closing, want the initial state and the change", got)
	}
	late := c.Subscribe(context.Background())
	if first := <-late; first.Name != "b" || first.To != StateDown {
		t.Errorf("late subscription starts with %+v", first)
	}
	if _, open := <-late; open {
		t.Error("a subscription after Run ended is not closed")
	}
	if err := c.Run(context.Background()); err == nil {
		t.Error("second Run accepted")
	}
}
