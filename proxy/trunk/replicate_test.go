package trunk

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Two proxies' Sets joined as the cluster joins them: the holder registers
// and sends its state; when it dies, the twin takes the VIP and refreshes
// the same registration: same Call-ID, the CSeq after the holder's last.
func TestSetReplicatesRegistration(t *testing.T) {
	prov, pport := provider(t)
	cfg := trunkConfig(fmt.Sprintf("127.0.0.1:%d", pport))
	cfg.CredentialsFile = "x"
	var aHolds, bHolds atomic.Bool
	aHolds.Store(true)
	// Both proxies send from one address, the VIP: the twin's socket is
	// opened on the holder's port once the holder is gone.
	port := testkit.FreePort(t, "127.0.0.1")
	newSet := func(holds *atomic.Bool, send Sender) *Set {
		sc := SetConfig{Contact: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), Registration: DefaultRegistrationConfig(), Active: holds.Load}
		s, err := NewSet([]Config{cfg}, map[string]string{"p1": "s3cret"}, sc, nil, send, zaptest.NewLogger(t), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	sendA, closeA := sipStackOn(t, port)
	t.Cleanup(closeA)
	var sendB lateSender
	a, b := newSet(&aHolds, sendA), newSet(&bHolds, &sendB)
	fromA, fromB := make(chan State, 100), make(chan State, 100)
	link := func(from, to *Set, holds *atomic.Bool, seen chan<- State) {
		from.StateChanges(func(rec []byte) error {
			st, err := UnmarshalState(rec)
			if err != nil {
				t.Error(err)
			}
			to.ApplyState([][]byte{rec})
			seen <- st
			return nil
		}, holds.Load)
	}
	link(a, b, &aHolds, fromA)
	link(b, a, &bHolds, fromB)

	actx, stopA := context.WithCancel(context.Background())
	aDone := make(chan error, 1)
	go func() { aDone <- a.Run(actx) }()
	bctx, stopB := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() { bDone <- b.Run(bctx) }()
	t.Cleanup(func() { stopB(); <-bDone })

	last := next(t, fromA, "holder's registration", registered)
	if got := b.Registration("p1").State(); got.CallID != last.CallID || got.CSeq != last.CSeq {
		t.Fatalf("twin's state %+v, want the holder's %+v", got, last)
	}
	// The holder dies: what it sent last is what the twin has.
	stopA()
	<-aDone
	for len(fromA) > 0 {
		last = <-fromA
	}
	closeA()
	s, closeB := sipStackOn(t, port)
	t.Cleanup(closeB)
	sendB.set(s)
	aHolds.Store(false)
	bHolds.Store(true)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("provider:\n%s", prov.Output())
		}
	})
	cont := next(t, fromB, "twin's refresh", registered)
	if cont.CallID != last.CallID || cont.FromTag != last.FromTag || cont.CSeq != last.CSeq+2 {
		t.Errorf("twin's registration %+v does not continue the holder's %+v (same Call-ID and tag, CSeq +2)", cont, last)
	}
	if len(b.StateSnapshot()) != 1 {
		t.Errorf("snapshot %d records, want 1", len(b.StateSnapshot()))
	}
	// The holder ignores records (its own state rules); a stale one is dropped.
	stale, _ := last.Marshal()
	b.ApplyState([][]byte{stale})
	if got := b.Registration("p1").State(); got.CSeq < cont.CSeq {
		t.Errorf("holder took a stale record: %+v", got)
	}
}

// lateSender is a Sender whose socket comes later (the twin's, once the
// VIP moved to it); before, every request fails.
type lateSender struct {
	mu sync.Mutex
	s  Sender
}

func (l *lateSender) set(s Sender) { l.mu.Lock(); l.s = s; l.mu.Unlock() }

func (l *lateSender) Do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	l.mu.Lock()
	s := l.s
	l.mu.Unlock()
	if s == nil {
		return nil, errors.New("no socket yet")
	}
	return s.Do(ctx, req)
}
