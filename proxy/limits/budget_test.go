package limits

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func testBudget() *Budget {
	cfg := DefaultConfig()
	cfg.Memory = 800 * MiB
	return NewBudget(cfg, nil, prometheus.NewRegistry())
}

func TestBudgetShedsNearTheBudgetWithHysteresis(t *testing.T) {
	b := testBudget()
	steps := []struct {
		inUse Bytes
		shed  bool
	}{
		{100 * MiB, false},
		{599 * MiB, false},
		{600 * MiB, true}, // 3/4 of 800
		{700 * MiB, true},
		{501 * MiB, true}, // above 5/8: still shedding
		{499 * MiB, false},
		{599 * MiB, false},
	}
	for _, s := range steps {
		b.observe(reading{inUse: int64(s.inUse)}, 0)
		if got := b.Shedding(); got != s.shed {
			t.Fatalf("in use %s: shedding %v, want %v", s.inUse, got, s.shed)
		}
		if s.shed && !b.Strained() {
			t.Fatalf("in use %s: shedding but not strained", s.inUse)
		}
	}
}

// The door sheds on the memory the process will reach before its next
// collection, not only on the live state: garbage the collector lets grow
// counts (the heap goal), and stacks with it.
func TestBudgetShedsOnThePeakBeforeTheNextCollection(t *testing.T) {
	b := testBudget()
	steps := []struct {
		inUse, peak Bytes
		shed        bool
	}{
		{300 * MiB, 599 * MiB, false},
		{300 * MiB, 600 * MiB, true}, // live state half of 3/4 of 800, GOGC 100
		{300 * MiB, 501 * MiB, true},
		{300 * MiB, 499 * MiB, false},
		{600 * MiB, 0, true}, // goal unknown: the live state
	}
	for _, s := range steps {
		b.observe(reading{inUse: int64(s.inUse), peak: int64(s.peak)}, 0)
		if got := b.Shedding(); got != s.shed {
			t.Fatalf("in use %s, peak %s: shedding %v, want %v", s.inUse, s.peak, got, s.shed)
		}
	}
}

func TestBudgetStrain(t *testing.T) {
	hist := func(counts ...uint64) *metrics.Float64Histogram {
		return &metrics.Float64Histogram{Counts: counts, Buckets: []float64{0, 0.001, 0.01, 0.1, 1}}
	}
	now := func(b *Budget) int64 { return int64(time.Since(b.epoch)) }

	b := testBudget()
	b.observe(reading{sched: hist(0, 0, 0, 0), rcvbuf: 10}, now(b))
	b.observe(reading{sched: hist(1000, 50, 0, 0), rcvbuf: 10}, now(b))
	if b.Strained() {
		t.Fatal("strained with fast scheduling and no UDP drops")
	}
	b.observe(reading{sched: hist(1000, 60, 0, 30), rcvbuf: 10}, now(b)) // 30 of 40 new waits took 0.1-1s
	if !b.Strained() {
		t.Fatal("not strained with slow scheduling")
	}

	b = testBudget()
	b.observe(reading{rcvbuf: 10}, now(b))
	b.observe(reading{rcvbuf: 11}, now(b))
	if !b.Strained() {
		t.Fatal("not strained after the kernel dropped a datagram")
	}
	b.observe(reading{rcvbuf: 11}, now(b)-int64(strainHold)-1)
	b.strainEnd.Store(now(b) - 1)
	if b.Strained() {
		t.Fatal("still strained after strainHold without a new sign")
	}
}

// Issue 13.1: a transaction sent during a strain that fails after it (Timer
// B, 32 s later) is still hapbx's doing; one sent after the strain is not.
func TestBudgetStrainedSince(t *testing.T) {
	b := testBudget()
	start := b.epoch
	at := func(d time.Duration) int64 { return int64(d) }
	b.observe(reading{rcvbuf: 10}, at(time.Second))
	b.observe(reading{rcvbuf: 11}, at(2*time.Second)) // a drop at 2 s
	b.observe(reading{rcvbuf: 11}, at(40*time.Second))
	if !b.StrainedSince(start.Add(time.Second)) {
		t.Fatal("not strained since 1 s with a drop at 2 s")
	}
	if !b.StrainedSince(start.Add(3 * time.Second)) {
		t.Fatal("not strained since 3 s with a drop at 2 s (within strainHold)")
	}
	if b.StrainedSince(start.Add(2*time.Second + strainHold + time.Millisecond)) {
		t.Fatal("strained since a time past the drop's strainHold")
	}

	b = testBudget()
	b.observe(reading{inUse: int64(700 * MiB)}, at(time.Second)) // shedding at 1 s
	b.observe(reading{inUse: int64(100 * MiB)}, at(2*time.Second))
	if b.Shedding() {
		t.Fatal("still shedding")
	}
	if !b.StrainedSince(start) {
		t.Fatal("a shedding at 1 s is not a strain since 0")
	}
}

func TestBudgetReadsTheProcess(t *testing.T) {
	b := testBudget()
	var r reading
	b.read(&r)
	if r.inUse <= 0 || r.peak < r.inUse || r.sched == nil {
		t.Fatalf("reading %+v: no heap, no heap goal or no scheduling latencies", r)
	}
}

func TestSNMPField(t *testing.T) {
	dir := t.TempDir()
	snmp := filepath.Join(dir, "snmp")
	os.WriteFile(snmp, []byte("Ip: Forwarding DefaultTTL\nIp: 1 64\n"+
		"Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 5586955 209514 283898 6092880 283897 0\n"+
		"UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdpLite: 0 0 0 0 7 0\n"), 0o600)
	snmp6 := filepath.Join(dir, "snmp6")
	os.WriteFile(snmp6, []byte("Udp6InDatagrams                 \t12\nUdp6RcvbufErrors                \t3\nUdpLite6RcvbufErrors 9\n"), 0o600)
	for _, c := range []struct {
		path, prefix, name string
		want               uint64
	}{
		{snmp, "Udp:", "RcvbufErrors", 283897},
		{snmp, "Udp:", "NoSuchField", 0},
		{snmp6, "", "Udp6RcvbufErrors", 3},
		{filepath.Join(dir, "absent"), "Udp:", "RcvbufErrors", 0},
	} {
		if got := snmpField(c.path, c.prefix, c.name); got != c.want {
			t.Errorf("%s %s: %d, want %d", filepath.Base(c.path), c.name, got, c.want)
		}
	}
}

// The budget reads the real heap: live state past 3/4 of a small budget
// makes it shed, and freeing it ends the shedding.
func TestBudgetShedsOnTheRealHeap(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Memory = 128 * MiB
	b := NewBudget(cfg, nil, prometheus.NewRegistry())
	sample := func() {
		runtime.GC() // /gc/heap/live is measured by a collection
		var r reading
		b.read(&r)
		b.observe(r, int64(time.Since(b.epoch)))
	}
	sample()
	if b.Shedding() {
		t.Skip("this test process alone is past 3/4 of 128MiB")
	}
	hold := make([][]byte, 0, 110)
	for range 110 {
		hold = append(hold, make([]byte, MiB))
	}
	sample()
	if !b.Shedding() {
		t.Fatalf("110MiB held of a 128MiB budget: not shedding (in use %v)", testutil.ToFloat64(b.m.inUse))
	}
	runtime.KeepAlive(hold)
	hold = nil
	sample()
	if b.Shedding() {
		t.Fatalf("still shedding once the memory is freed (in use %v)", testutil.ToFloat64(b.m.inUse))
	}
}

// Issue 13.7: GOGC follows the live state: 400 while it is small, down to
// 100 as it grows (garbage room of an eighth of the budget), set again only
// on a change of a tenth.
func TestBudgetTunesGC(t *testing.T) {
	b := testBudget() // 800 MiB: garbage room 100 MiB
	var set []int
	b.setGC = func(p int) { set = append(set, p) }
	b.TuneGC()
	for _, s := range []struct {
		inUse Bytes
		want  int
	}{
		{10 * MiB, 400},
		{50 * MiB, 200},
		{52 * MiB, 200}, // 192: within a tenth, left
		{100 * MiB, 100},
		{400 * MiB, 100},
		{20 * MiB, 400},
	} {
		b.observe(reading{inUse: int64(s.inUse)}, 0)
		if b.gcPercent != s.want {
			t.Fatalf("in use %s: GOGC %d, want %d", s.inUse, b.gcPercent, s.want)
		}
	}
	if want := []int{400, 200, 100, 400}; !slices.Equal(set, want) {
		t.Fatalf("GOGC set to %v, want %v", set, want)
	}
	if b := testBudget(); b.gcPercent != 0 {
		t.Fatal("GOGC tuned without TuneGC")
	}
}
