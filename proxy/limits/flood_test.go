package limits

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testGuard is a guard on a clock the test moves.
func testGuard(cfg FloodConfig) (*Guard, *int64, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	g := NewGuard(cfg, zap.New(core), prometheus.NewRegistry())
	clock := new(int64)
	g.now = func() int64 { return *clock }
	return g, clock, logs
}

func flood(rate int) FloodConfig {
	return FloodConfig{Rate: rate, Window: 2 * time.Second, Cooldown: 30 * time.Second, MaxSources: 3}
}

var (
	phones   = netip.MustParseAddr("198.51.100.7")
	attacker = netip.MustParseAddr("203.0.113.66")
)

func TestGuardBlocksPastRateAnswersOnceAndReleases(t *testing.T) {
	g, clock, logs := testGuard(flood(10))
	for i := range 10 {
		if ok, _ := g.Allow(attacker, true); !ok {
			t.Fatalf("request %d refused, rate is 10 per window", i+1)
		}
	}
	if ok, answer := g.Allow(attacker, true); ok || !answer {
		t.Fatalf("11th request: ok=%v answer=%v, want refused and answered (503 once)", ok, answer)
	}
	for range 5 {
		if ok, answer := g.Allow(attacker, true); ok || answer {
			t.Fatalf("blocked source: ok=%v answer=%v, want dropped silently", ok, answer)
		}
	}
	if ok, _ := g.Allow(phones, true); !ok {
		t.Fatal("another source is refused because of the blocked one")
	}
	if n := logs.FilterMessageSnippet("source blocked").Len(); n != 1 {
		t.Fatalf("%d block log lines, want 1", n)
	}
	*clock += int64(29 * time.Second)
	g.sweep(*clock)
	if ok, _ := g.Allow(attacker, true); ok {
		t.Fatal("released before its cool-down ended")
	}
	*clock += int64(time.Second)
	g.sweep(*clock)
	rel := logs.FilterMessageSnippet("source released").All()
	if len(rel) != 1 {
		t.Fatalf("%d release log lines, want 1", len(rel))
	}
	if got := rel[0].ContextMap()["dropped"]; got != int64(6) {
		t.Fatalf("release line says dropped=%v, want 6", got)
	}
	if ok, _ := g.Allow(attacker, true); !ok {
		t.Fatal("refused after its cool-down")
	}
	if got := testutil.ToFloat64(g.m.dropped); got != 6 {
		t.Fatalf("dropped counter %v, want 6", got)
	}
	if got := testutil.ToFloat64(g.m.blocked); got != 1 {
		t.Fatalf("blocked counter %v, want 1", got)
	}
}

// An ACK cannot be answered: when one tips the rate, the 503 goes to the
// next request that can be, and only to it.
func TestGuardAnswersTheFirstAnswerable(t *testing.T) {
	g, _, _ := testGuard(flood(3))
	for range 3 {
		g.Allow(attacker, true)
	}
	if ok, answer := g.Allow(attacker, false); ok || answer {
		t.Fatalf("the ACK past the rate: ok=%v answer=%v, want dropped", ok, answer)
	}
	if ok, answer := g.Allow(attacker, false); ok || answer {
		t.Fatalf("another ACK: ok=%v answer=%v, want dropped", ok, answer)
	}
	if ok, answer := g.Allow(attacker, true); ok || !answer {
		t.Fatalf("the next request: ok=%v answer=%v, want answered", ok, answer)
	}
	if ok, answer := g.Allow(attacker, true); ok || answer {
		t.Fatalf("the one after: ok=%v answer=%v, want dropped", ok, answer)
	}
	if got := testutil.ToFloat64(g.m.dropped); got != 3 {
		t.Fatalf("dropped %v, want 3 (two ACKs and the last request)", got)
	}
}

// The window slides: a source steadily just under the rate is never blocked,
// however many windows it keeps it up, and the previous window still counts
// when a new one starts (no burst of twice the rate across a boundary).
func TestGuardSlidingWindow(t *testing.T) {
	g, clock, _ := testGuard(flood(100))
	step := int64(2*time.Second) / 98 // 98% of the rate
	for i := range 1000 {
		if ok, _ := g.Allow(phones, true); !ok {
			t.Fatalf("request %d under the rate refused", i)
		}
		*clock += step
	}
	g2, clock2, _ := testGuard(flood(100))
	*clock2 = int64(1900 * time.Millisecond)
	for range 100 {
		g2.Allow(attacker, true) // 100 at the end of the first window
	}
	*clock2 = int64(2100 * time.Millisecond)
	refused := false
	for range 100 {
		if ok, _ := g2.Allow(attacker, true); !ok {
			refused = true
		}
	}
	if !refused {
		t.Fatal("200 requests within 200ms across a window boundary passed a rate of 100 per 2s")
	}
}

// A REGISTER storm of 200 phones behind one NAT address after a router
// reboot (about 10 requests each: REGISTER, its authenticated re-send,
// SUBSCRIBEs for voicemail and busy lamps, with their re-sends), all inside
// one window, passes the defaults.
func TestGuardDefaultsLetAnOfficeRegister(t *testing.T) {
	g, _, _ := testGuard(DefaultConfig().Flood)
	for i := range 200 * 10 {
		if ok, _ := g.Allow(phones, true); !ok {
			t.Fatalf("request %d of the office's storm refused", i+1)
		}
	}
}

func TestGuardTableBounded(t *testing.T) {
	g, clock, _ := testGuard(flood(10))
	for i := range 10 {
		if ok, _ := g.Allow(netip.MustParseAddr("192.0.2."+strconv.Itoa(i+1)), true); !ok {
			t.Fatal("new source refused")
		}
	}
	if n := len(g.table); n != 3 {
		t.Fatalf("table holds %d sources, max_sources is 3", n)
	}
	if got := testutil.ToFloat64(g.m.tableFull); got != 7 {
		t.Fatalf("table_full counter %v, want 7", got)
	}
	*clock += int64(4 * time.Second)
	g.sweep(*clock)
	if n := len(g.table); n != 0 {
		t.Fatalf("idle sources kept: %d", n)
	}
}

func TestGuardOff(t *testing.T) {
	g, _, _ := testGuard(FloodConfig{})
	for range 10000 {
		if ok, _ := g.Allow(attacker, true); !ok {
			t.Fatal("refused with the guard off")
		}
	}
}

// BenchmarkGuardAllow is the flood guard's cost per request on the hot
// path: one source (a flood), and many sources in parallel.
func BenchmarkGuardAllow(b *testing.B) {
	b.Run("one_source", func(b *testing.B) {
		g := NewGuard(FloodConfig{Rate: 1 << 30, Window: 2 * time.Second, Cooldown: time.Minute, MaxSources: 50000}, nil, nil)
		b.ReportAllocs()
		for b.Loop() {
			g.Allow(phones, true)
		}
	})
	b.Run("blocked", func(b *testing.B) {
		g := NewGuard(FloodConfig{Rate: 1, Window: 2 * time.Second, Cooldown: time.Hour, MaxSources: 50000}, nil, nil)
		b.ReportAllocs()
		for b.Loop() {
			g.Allow(attacker, true)
		}
	})
	b.Run("1000_sources_parallel", func(b *testing.B) {
		g := NewGuard(FloodConfig{Rate: 1 << 30, Window: 2 * time.Second, Cooldown: time.Minute, MaxSources: 50000}, nil, nil)
		addrs := make([]netip.Addr, 1000)
		for i := range addrs {
			addrs[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				g.Allow(addrs[i%len(addrs)], true)
				i++
			}
		})
	})
}
