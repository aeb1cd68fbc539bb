package limits

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Budget watches hapbx's own load, sampled on a ticker so that asking costs
// an atomic load on the request path:
//   - Shedding: the memory hapbx will reach before its next collection
//     (the collector's heap goal plus goroutine stacks, at least the live
//     state) has reached 3/4 of the memory budget; it stops at 5/8. The
//     live state alone under-counts by the garbage the collector lets
//     grow between collections (as much again at GOGC 100): shed on it,
//     the process sat at the soft memory limit (set by the wiring to the
//     same budget), the collector running without pause and still
//     overshooting (550 MiB RSS in the REGISTER storm with the live state
//     at 230 MiB). The quarter left is for what the runtime holds besides
//     (freed memory not yet returned, its own metadata) and the binary.
//   - Strained: shedding, or within the last strainHold hapbx was short of
//     CPU (the 99th percentile of goroutine scheduling latency over a
//     sample above schedStrain) or the kernel dropped UDP datagrams for
//     lack of receive buffer (RcvbufErrors in /proc/net/snmp grew): a
//     backend's reply may then have been late or lost here, so its silence
//     does not count against it.
//   - StrainedSince: whether hapbx was strained at any moment since a
//     given time, for a failure that shows long after its cause (a
//     transaction sent during a flood times out 32 s later, when the
//     flood is over).
//   - TuneGC (when the wiring asks: GOGC not set): the collector's GOGC
//     follows the live state, so that garbage between collections has
//     about an eighth of the budget (64 MiB of 512 MiB) whatever the live
//     state: GOGC 400 while it is small (collections are cheap to
//     postpone: a few cycles a second would otherwise cost a third of the
//     proxy's CPU at 3000 calls/s), down to 100 as it grows, so that memory
//     grows with what hapbx holds and not five times as fast.
type Budget struct {
	limit     int64
	shedAt    int64
	resumeAt  int64
	log       *zap.Logger
	m         *budgetMetrics
	epoch     time.Time
	read      func(*reading) // a test's readings
	shedding  atomic.Bool
	strainEnd atomic.Int64 // ns since epoch: the last sign of strain plus strainHold

	tune      bool
	gcPercent int
	setGC     func(int) // debug.SetGCPercent; a test's recorder

	samples    []metrics.Sample
	prevSched  []uint64
	prevRcvbuf uint64
}

const (
	sampleEvery = 100 * time.Millisecond
	schedStrain = 50 * time.Millisecond
	strainHold  = 5 * time.Second // longer than hop_timeout plus no_backend_wait
)

// reading is one sample of the process.
type reading struct {
	inUse  int64                     // live heap after the last collection plus goroutine stacks
	peak   int64                     // the heap goal plus goroutine stacks; 0 when unknown
	sched  *metrics.Float64Histogram // cumulative
	rcvbuf uint64                    // cumulative; 0 when unknown
}

// NewBudget builds the watcher of a budget of cfg.Memory; Run samples.
func NewBudget(cfg Config, log *zap.Logger, reg prometheus.Registerer) *Budget {
	if log == nil {
		log = zap.NewNop()
	}
	limit := int64(cfg.Memory)
	b := &Budget{
		limit: limit, shedAt: limit / 4 * 3, resumeAt: limit / 8 * 5,
		log: log, m: newBudgetMetrics(reg), epoch: time.Now(),
		samples: []metrics.Sample{
			{Name: "/gc/heap/live:bytes"},
			{Name: "/memory/classes/heap/stacks:bytes"},
			{Name: "/sched/latencies:seconds"},
			{Name: "/gc/heap/goal:bytes"},
		},
	}
	b.read = b.readProcess
	b.setGC = func(p int) { debug.SetGCPercent(p) }
	b.m.budget.Set(float64(limit))
	return b
}

// GOGC's range under TuneGC.
const (
	gcPercentMin = 100
	gcPercentMax = 400
)

// TuneGC makes the budget set GOGC from the live state it samples (see
// Budget), starting at gcPercentMax; call before Run.
func (b *Budget) TuneGC() {
	b.tune = true
	b.gcPercent = gcPercentMax
	b.setGC(gcPercentMax)
	b.m.gcPercent.Set(gcPercentMax)
}

// gcPercentFor is GOGC for inUse bytes of live state: garbage room of an
// eighth of the budget, within [gcPercentMin, gcPercentMax].
func (b *Budget) gcPercentFor(inUse int64) int {
	if inUse <= 0 {
		return gcPercentMax
	}
	return int(min(max(b.limit/8*100/inUse, gcPercentMin), gcPercentMax))
}

// Shedding reports whether new work must be refused to stay in the budget.
func (b *Budget) Shedding() bool { return b.shedding.Load() }

// Strained reports whether hapbx itself was overloaded lately.
func (b *Budget) Strained() bool { return b.StrainedSince(time.Now()) }

// StrainedSince reports whether hapbx itself was overloaded at any moment
// from t (less strainHold) until now: a failure of something started at t
// may be hapbx's own doing.
func (b *Budget) StrainedSince(t time.Time) bool {
	return b.shedding.Load() || int64(t.Sub(b.epoch)) < b.strainEnd.Load()
}

// Run samples until ctx ends.
func (b *Budget) Run(ctx context.Context) error {
	every(ctx, sampleEvery, func() {
		var r reading
		b.read(&r)
		b.observe(r, int64(time.Since(b.epoch)))
	})
	return nil
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (b *Budget) readProcess(r *reading) {
	metrics.Read(b.samples)
	for _, s := range b.samples[:2] {
		if s.Value.Kind() == metrics.KindUint64 {
			r.inUse += int64(s.Value.Uint64())
		}
	}
	if s := b.samples[2]; s.Value.Kind() == metrics.KindFloat64Histogram {
		r.sched = s.Value.Float64Histogram()
	}
	if s := b.samples[3]; s.Value.Kind() == metrics.KindUint64 && b.samples[1].Value.Kind() == metrics.KindUint64 {
		r.peak = int64(s.Value.Uint64() + b.samples[1].Value.Uint64())
	}
	r.rcvbuf = udpRcvbufErrors()
}

// observe applies one reading taken at now (ns since epoch).
func (b *Budget) observe(r reading, now int64) {
	peak := max(r.inUse, r.peak)
	b.m.inUse.Set(float64(r.inUse))
	b.m.peak.Set(float64(peak))
	if b.tune {
		// Set again only on a change of a tenth or more: each setting
		// recomputes the collector's pacing.
		if p := b.gcPercentFor(r.inUse); p*10 < b.gcPercent*9 || p*10 > b.gcPercent*11 {
			b.gcPercent = p
			b.setGC(p)
			b.m.gcPercent.Set(float64(p))
		}
	}
	switch {
	case !b.shedding.Load() && peak >= b.shedAt:
		b.shedding.Store(true)
		b.m.shedding.Set(1)
		b.log.Warn("memory budget nearly used: new requests get 503",
			zap.Int64("peak_bytes", peak), zap.Int64("in_use_bytes", r.inUse), zap.Int64("budget_bytes", b.limit))
	case b.shedding.Load() && peak < b.resumeAt:
		b.shedding.Store(false)
		b.m.shedding.Set(0)
		b.log.Info("memory budget back in range: new requests taken again",
			zap.Int64("peak_bytes", peak), zap.Int64("in_use_bytes", r.inUse), zap.Int64("budget_bytes", b.limit))
	}
	if b.shedding.Load() {
		b.strainEnd.Store(now + int64(strainHold)) // counted as strain by Shedding's own metric
	}
	if r.sched != nil {
		if b.prevSched != nil && quantile(r.sched, b.prevSched, 0.99) > schedStrain.Seconds() {
			b.strain(now, "sched")
		}
		b.prevSched = append(b.prevSched[:0], r.sched.Counts...)
	}
	if r.rcvbuf > b.prevRcvbuf && b.prevRcvbuf != 0 {
		b.strain(now, "rcvbuf")
	}
	b.prevRcvbuf = r.rcvbuf
}

func (b *Budget) strain(now int64, cause string) {
	b.strainEnd.Store(now + int64(strainHold))
	b.m.strained.WithLabelValues(cause).Inc()
}

// quantile is the upper bound of the bucket holding quantile q of the
// counts added to h since prev (same buckets), 0 when none were.
func quantile(h *metrics.Float64Histogram, prev []uint64, q float64) float64 {
	if len(prev) != len(h.Counts) {
		return 0
	}
	var total uint64
	for i, c := range h.Counts {
		total += c - prev[i]
	}
	if total == 0 {
		return 0
	}
	want := uint64(q * float64(total))
	var seen uint64
	for i, c := range h.Counts {
		seen += c - prev[i]
		if seen > want {
			return h.Buckets[i+1]
		}
	}
	return h.Buckets[len(h.Buckets)-1]
}

// udpRcvbufErrors sums the UDP and UDP6 datagrams the kernel dropped for
// lack of receive buffer (this network namespace), 0 when unreadable.
func udpRcvbufErrors() uint64 {
	return snmpField("/proc/net/snmp", "Udp:", "RcvbufErrors") + snmpField("/proc/net/snmp6", "", "Udp6RcvbufErrors")
}

// snmpField reads a counter from /proc/net/snmp (a header line of names
// then a line of values, both starting with prefix) or /proc/net/snmp6
// (name value lines, prefix ""), 0 when absent.
func snmpField(path, prefix, name string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var names [][]byte
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		switch {
		case prefix == "" && len(f) == 2 && string(f[0]) == name:
			n, _ := strconv.ParseUint(string(f[1]), 10, 64)
			return n
		case prefix == "" || len(f) == 0 || string(f[0]) != prefix:
		case names == nil:
			names = f
		default:
			for i, n := range names {
				if string(n) == name && i < len(f) {
					v, _ := strconv.ParseUint(string(f[i]), 10, 64)
					return v
				}
			}
			return 0
		}
	}
	return 0
}
