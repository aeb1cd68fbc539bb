package media

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// BenchmarkRefresh2000 measures one steady-state refresh of 2000 answered
// sessions (nothing changed, so only keep-alives), on the holder (Refresh +
// encoding) and on the standby (decoding + applying), and compares it with
// re-sending every record. Figures per refresh; bytes are what the cluster
// carries (before its own framing and encryption).
func BenchmarkRefresh2000(b *testing.B) {
	const n = 2000
	cfg := DefaultConfig()
	cfg.Address, cfg.Ports, cfg.Workers = "127.0.0.1", "21000-29999", 2
	cfg.Datapath = DatapathUser
	r, err := New(cfg, zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	r.start()
	defer r.Close()
	for i := range n {
		id := fmt.Sprintf("%032x@pbx.example.com", i*7919)
		if _, err := r.Anchor(id, true, offer(netip.MustParseAddrPort("10.1.1.1:5000"), "")); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Anchor(id, false, offer(netip.MustParseAddrPort("10.2.2.2:6000"), "")); err != nil {
			b.Fatal(err)
		}
	}
	r.Refresh() // everything reported once

	b.Run("keepalive", func(b *testing.B) {
		var size int
		for b.Loop() {
			changed, alive := r.Refresh()
			if len(changed) != 0 || len(alive) != n {
				b.Fatalf("%d changed, %d alive", len(changed), len(alive))
			}
			msg, err := KeepAlive{Sessions: alive}.MarshalBinary()
			if err != nil {
				b.Fatal(err)
			}
			size = len(msg)
			var ka KeepAlive
			if err := ka.UnmarshalBinary(msg); err != nil {
				b.Fatal(err)
			}
			if stale := r.KeepAlive(ka); stale != 0 {
				b.Fatalf("%d stale", stale)
			}
		}
		b.ReportMetric(float64(size), "bytes/refresh")
	})
	b.Run("all-records", func(b *testing.B) {
		var size int
		for b.Loop() {
			size = 0
			for _, rec := range r.Export() {
				msg, err := rec.MarshalBinary()
				if err != nil {
					b.Fatal(err)
				}
				size += len(msg)
				var got SessionRecord
				if err := got.UnmarshalBinary(msg); err != nil {
					b.Fatal(err)
				}
				if err := r.Import(got); err != nil { // same version: liveness only
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(size), "bytes/refresh")
	})
}
