package storage

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// The DRBD disk gauges follow what `drbdadm status` (the fake DRBD's real
// drbd-utils 9 output) says of the local and the peer disk.
func TestDRBDDiskGauges(t *testing.T) {
	d := testkit.NewDRBD(t, "A", "B")
	for _, kv := range d.Env("A", t.TempDir()) {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := DefaultConfig()
	cfg.DRBD = DRBDConfig{Resource: "r0", Drbdadm: d.Tool("drbdadm"), Drbdsetup: d.Tool("drbdsetup"), Timeout: 5 * time.Second}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string, local, peer float64) {
		t.Helper()
		if got := testutil.ToFloat64(a.m.diskUpToDate); got != local {
			t.Errorf("%s: hapbx_storage_drbd_disk_uptodate = %v, want %v", when, got, local)
		}
		if got := testutil.ToFloat64(a.m.peerUpToDate); got != peer {
			t.Errorf("%s: hapbx_storage_drbd_peer_disk_uptodate = %v, want %v", when, got, peer)
		}
	}
	check("before any status", 0, 0)

	steps := []struct {
		when         string
		diskA, diskB string
		local, peer  float64
	}{
		{"both UpToDate", DiskUpToDate, DiskUpToDate, 1, 1},
		{"local Inconsistent (resync target)", "Inconsistent", DiskUpToDate, 0, 1},
		{"peer Outdated", DiskUpToDate, "Outdated", 1, 0},
		{"both UpToDate again", DiskUpToDate, DiskUpToDate, 1, 1},
	}
	for _, s := range steps {
		d.Write("disk.A", s.diskA)
		d.Write("disk.B", s.diskB)
		st, err := a.DRBDState(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", s.when, err)
		}
		if st.Disk != s.diskA || st.Peer().PeerDisk != s.diskB {
			t.Fatalf("%s: status read disk %q peer-disk %q, want %q %q", s.when, st.Disk, st.Peer().PeerDisk, s.diskA, s.diskB)
		}
		check(s.when, s.local, s.peer)
	}

	// The peer powered off: its disk is DUnknown, not UpToDate.
	if err := os.Remove(d.Path("up.B")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.DRBDState(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("peer down", 1, 0)
}
