package registrar

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

const benchBindings = 100_000

// benchRecords makes n realistic bindings (distinct AORs, softphone-like
// contacts, Call-IDs and user agents), as records from node "a".
func benchRecords(n int, now time.Time) []Record {
	out := make([]Record, n)
	for i := range out {
		user := fmt.Sprintf("%d", 100000+i)
		out[i] = Record{
			Binding: Binding{
				AOR:       "sip:" + user + "@pbx.example.com",
				Contact:   fmt.Sprintf("sip:%s@10.%d.%d.%d:5060;rinstance=%016x;transport=UDP", user, i>>16&255, i>>8&255, i&255, uint64(i)*2654435761),
				Source:    Source{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}), uint16(10000+i%50000)), Transport: "udp"},
				CallID:    fmt.Sprintf("%032x", uint64(i)*11400714819323198485),
				CSeq:      uint32(i % 1000),
				Expires:   now.Add(time.Hour),
				Updated:   now,
				UserAgent: []string{"Zoiper rv2.10.20.5", "X-Lite release 4.9.8 stamp 84253", "baresip v1.0.0 (x86_64/linux)"}[i%3],
				Backend:   "ast1",
				Q:         1,
			},
			Version: Version{Time: now.UnixNano() + int64(i), Node: "a"},
		}
	}
	return out
}

func heapMB() float64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// BenchmarkMemory100k reports the heap held by 100k bindings (target ≤ 100 MB).
func BenchmarkMemory100k(b *testing.B) {
	for range b.N {
		now := time.Now().UTC().Round(0)
		before := heapMB()
		recs := benchRecords(benchBindings, now)
		cfg := DefaultConfig()
		cfg.DataDir = ""
		r, err := newAt(cfg, now, zap.NewNop(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		if n, _ := r.Merge(recs); n != benchBindings {
			b.Fatalf("merged %d", n)
		}
		recs = nil
		after := heapMB()
		runtime.KeepAlive(r)
		b.ReportMetric(after-before, "MB/100k")
		b.ReportMetric((after-before)*(1<<20)/benchBindings, "B/binding")
	}
}

// BenchmarkLookup100k measures Lookup with 100k bindings held (target ≤ 1 µs).
func BenchmarkLookup100k(b *testing.B) {
	now := time.Now().UTC().Round(0)
	cfg := DefaultConfig()
	cfg.DataDir = ""
	r, err := newAt(cfg, now, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	recs := benchRecords(benchBindings, now)
	r.Merge(recs)
	// Asterisk's spelling of the request URI towards a phone.
	aors := make([]string, 1024)
	for i := range aors {
		aors[i] = fmt.Sprintf("sip:%d@192.0.2.1:5060;transport=udp", 100000+(i*97)%benchBindings)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		bs, err := r.Lookup(aors[i&1023])
		if err != nil || len(bs) != 1 {
			b.Fatal(err)
		}
	}
}

// BenchmarkLookup100kParallel: the proxy looks up from many goroutines.
func BenchmarkLookup100kParallel(b *testing.B) {
	now := time.Now().UTC().Round(0)
	cfg := DefaultConfig()
	cfg.DataDir = ""
	r, _ := newAt(cfg, now, zap.NewNop(), prometheus.NewRegistry())
	r.Merge(benchRecords(benchBindings, now))
	aors := make([]string, 1024)
	for i := range aors {
		aors[i] = fmt.Sprintf("sip:%d@pbx.example.com", 100000+(i*7919)%benchBindings)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := r.Lookup(aors[i&1023]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkStoreWrite measures bbolt write throughput: 100k bindings queued
// then flushed in batches as the flusher does (fsync per batch).
func BenchmarkStoreWrite(b *testing.B) {
	for _, batch := range []int{1, 100, 10_000, benchBindings} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			now := time.Now().UTC().Round(0)
			recs := benchRecords(benchBindings, now)
			if batch == 1 {
				recs = recs[:2000] // one fsync per binding: keep it short
			}
			b.ResetTimer()
			var total time.Duration
			written := 0
			for range b.N {
				b.StopTimer()
				st, _, err := openStore(b.TempDir(), now)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				for i := 0; i < len(recs); i += batch {
					ops := make(map[string]pendingOp, batch)
					for _, rec := range recs[i:min(i+batch, len(recs))] {
						ops[rec.Binding.AOR+"\x00"+rec.Binding.Contact] = pendingOp{rec: rec}
					}
					st.enqueue(ops)
					n, err := st.flush()
					if err != nil {
						b.Fatal(err)
					}
					written += n
				}
				total += time.Since(start)
				b.StopTimer()
				st.close()
				b.StartTimer()
			}
			b.ReportMetric(float64(written)/total.Seconds(), "bindings/s")
		})
	}
}

// BenchmarkSave measures the SIP-path cost of storing one REGISTER/200 pair
// with persistence on (the write itself is queued, not waited for).
func BenchmarkSave(b *testing.B) {
	cfg := DefaultConfig()
	cfg.DataDir = b.TempDir()
	r, err := New(cfg, "a", zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	type pair struct {
		req *sip.Request
		res *sip.Response
	}
	pairs := make([]pair, 256)
	for i := range pairs {
		req, res := register(b, fmt.Sprint(1000+i), fmt.Sprintf("sip:%d@10.0.0.1:5060", 1000+i), fmt.Sprint("c", i), 1, 600)
		pairs[i] = pair{req, res}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		p := pairs[i&255]
		if _, err := r.Save(p.req, p.res, src("192.0.2.1:5060"), "ast1"); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	r.flush()
}
