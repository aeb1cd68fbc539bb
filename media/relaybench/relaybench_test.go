package relaybench

import (
	"net/netip"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
	"go.uber.org/zap/zaptest"
)

// TestRunThroughRelay runs a small load (50 calls, 1 s) through an
// in-process relay: every packet sent in the window must arrive.
func TestRunThroughRelay(t *testing.T) {
	cfg := media.DefaultConfig()
	cfg.Address = "127.0.0.1"
	cfg.Ports = "30600-30999"
	cfg.Datapath = media.DatapathUser
	r, err := media.New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Run(t, r.Run)
	ip := netip.MustParseAddr("127.0.0.1")
	var phones []*Phone
	defer func() {
		for _, p := range phones {
			p.Close()
		}
	}()
	for i := range 50 {
		a, err1 := NewPhone(ip)
		b, err2 := NewPhone(ip)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		phones = append(phones, a, b)
		id := string(rune('a'+i%26)) + time.Now().String()
		toB, err := r.Anchor(id, true, sdpFor(a.Addr))
		if err != nil {
			t.Fatal(err)
		}
		toA, err := r.Anchor(id, false, sdpFor(b.Addr))
		if err != nil {
			t.Fatal(err)
		}
		a.SetDest(netip.AddrPortFrom(ip, uint16(mport(toA))))
		b.SetDest(netip.AddrPortFrom(ip, uint16(mport(toB))))
	}
	res, err := Run(Load{Phones: phones, PPS: 50, Size: 172, Warmup: 300 * time.Millisecond, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	if res.Sent < 2000 || res.Received != res.Sent {
		t.Fatalf("sent %d received %d: want at least 2000 and no loss", res.Sent, res.Received)
	}
	if res.Stamped != res.Received || res.P99 <= 0 {
		t.Fatalf("%d of %d datagrams with the kernel's receive stamp, p99 %v at the host: want all stamped, p99 above 0",
			res.Stamped, res.Received, res.P99)
	}
}
