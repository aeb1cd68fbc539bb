package storage

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// TestStartFigures prints, over 10 start/stop cycles of one node, the time
// from the Start request to "group started", split into hapbx's own
// overhead (DRBD promotion, mount, checks, commands, polling) and the
// service's own start-to-ready time (SIPp standing in for Asterisk). The
// target is an overhead of at most 2 s; it is printed, not asserted.
//
//	go test -run TestStartFigures -v ./storage/
func TestStartFigures(t *testing.T) {
	needRoot(t)
	c := newCluster(t, "A", "B")
	pa := testkit.FreePort(t, "127.0.0.1")
	a := c.start("A", c.config("A", pa), pa)
	ctx := context.Background()
	const runs = 10
	var total, overhead, service []time.Duration
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		res, err := a.client.Start(ctx, StartOptions{})
		wall := time.Since(t0)
		if err != nil {
			t.Fatalf("run %d: start: %v", i, err)
		}
		var ready time.Duration
		for _, s := range res.Report.Steps {
			ready += s.ReadyAfter
		}
		// Overhead includes the HTTP round trip the coordinator pays too.
		total = append(total, wall)
		service = append(service, ready)
		overhead = append(overhead, wall-ready)
		if _, err := a.client.Stop(ctx); err != nil {
			t.Fatalf("run %d: stop: %v", i, err)
		}
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	t.Logf("Start() -> group started over %d runs (shared machine; indicative):", runs)
	t.Logf("  total            median %8s  max %8s", med(total).Round(time.Microsecond), slices.Max(total).Round(time.Microsecond))
	t.Logf("  hapbx overhead   median %8s  max %8s  (target <= 2s)", med(overhead).Round(time.Microsecond), slices.Max(overhead).Round(time.Microsecond))
	t.Logf("  service to ready median %8s  max %8s", med(service).Round(time.Microsecond), slices.Max(service).Round(time.Microsecond))
}
