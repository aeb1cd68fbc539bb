package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// helperSpec is what the test hands a node process (re-exec of the test binary).
type helperSpec struct {
	Cfg        Config
	Role       Role
	Records    int    // records of 300 bytes this node owns in channel "test"
	Expect     int    // print STATE_COMPLETE when this many distinct records are known
	StatusFile string // Status JSON written here every 50 ms
	LogFile    string
	// BroadcastEvery > 0: broadcast a new record (ids IDBase, IDBase+1, ...) this often
	// and write helperCounts to CountFile.
	BroadcastEvery time.Duration
	IDBase         uint64
	WatchBase      uint64 // count the records seen with ids in [WatchBase, WatchBase+1e6)
	CountFile      string
}

type helperCounts struct {
	Own     int `json:"own"`     // records this node broadcast
	Watched int `json:"watched"` // records seen from the watched range
}

// countingSource is a StateSource whose records carry an 8-byte id.
type countingSource struct {
	mu    sync.Mutex
	own   [][]byte
	seen  map[uint64]struct{}
	done  chan struct{}
	want  int
	fired bool

	send   func([]byte) error // from StateChanges
	holder func() bool
}

func newCountingSource(own, want int) *countingSource {
	s := &countingSource{seen: map[uint64]struct{}{}, done: make(chan struct{}), want: want}
	for i := 0; i < own; i++ {
		r := make([]byte, 300)
		binary.BigEndian.PutUint64(r, uint64(i))
		for j := 8; j < len(r); j++ {
			r[j] = byte(i + j)
		}
		s.own = append(s.own, r)
		s.seen[uint64(i)] = struct{}{}
	}
	return s
}

func (s *countingSource) StateSnapshot() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.own...)
}

func (s *countingSource) ApplyState(recs [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if len(r) >= 8 {
			s.seen[binary.BigEndian.Uint64(r)] = struct{}{}
		}
	}
	if !s.fired && s.want > 0 && len(s.seen) >= s.want {
		s.fired = true
		close(s.done)
	}
}

// StateChanges keeps the outlet RegisterState hands over; most tests call Broadcast.
func (s *countingSource) StateChanges(send func([]byte) error, holder func() bool) {
	s.mu.Lock()
	s.send, s.holder = send, holder
	s.mu.Unlock()
}

// produce creates record id as this node's own (part of its Snapshot from now on).
func (s *countingSource) produce(id uint64) []byte {
	r := make([]byte, 300)
	binary.BigEndian.PutUint64(r, id)
	s.mu.Lock()
	s.own = append(s.own, r)
	s.seen[id] = struct{}{}
	s.mu.Unlock()
	return r
}

func (s *countingSource) countRange(lo, hi uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id := range s.seen {
		if id >= lo && id < hi {
			n++
		}
	}
	return n
}

func (s *countingSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// TestHelperProcess is not a test: it is the body of a node process started by the
// namespace tests with HCL_HELPER set to a spec file.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv("HCL_HELPER")
	if path == "" {
		t.Skip("helper process for the namespace tests")
	}
	if err := runHelper(path); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

func runHelper(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec helperSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	zc := zap.NewDevelopmentConfig()
	zc.DisableStacktrace = true
	zc.OutputPaths = []string{spec.LogFile}
	zc.ErrorOutputPaths = []string{spec.LogFile}
	log, err := zc.Build()
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// A UDP echo on the wildcard address answers with the node name, whichever address
	// (the VIP included) the datagram was sent to.
	pc, err := net.ListenPacket("udp", "0.0.0.0:9999")
	if err != nil {
		return err
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(spec.Cfg.Name), from)
		}
	}()

	c, err := New(spec.Cfg, spec.Role, log, nil)
	if err != nil {
		return err
	}
	src := newCountingSource(spec.Records, spec.Expect)
	if err := c.RegisterState("test", src); err != nil {
		return err
	}
	start := time.Now()
	if err := c.start(ctx); err != nil {
		return err
	}
	fmt.Println("READY")
	go func() {
		select {
		case <-src.done:
			fmt.Printf("STATE_COMPLETE %d %d\n", src.count(), time.Since(start).Milliseconds())
		case <-ctx.Done():
		}
	}()
	var own atomic.Int64
	if spec.BroadcastEvery > 0 {
		go func() {
			bt := time.NewTicker(spec.BroadcastEvery)
			defer bt.Stop()
			for id := spec.IDBase; ; id++ {
				select {
				case <-ctx.Done():
					return
				case <-bt.C:
				}
				if err := c.Broadcast("test", src.produce(id)); err != nil {
					log.Error("broadcast", zap.Error(err))
				}
				own.Add(1)
			}
		}()
	}
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return c.close()
		case <-tk.C:
			if spec.CountFile != "" {
				b, _ := json.Marshal(helperCounts{Own: int(own.Load()), Watched: src.countRange(spec.WatchBase, spec.WatchBase+1e6)})
				if os.WriteFile(spec.CountFile+".tmp", b, 0o600) == nil {
					_ = os.Rename(spec.CountFile+".tmp", spec.CountFile)
				}
			}
			st, _ := json.Marshal(c.Status())
			tmp := spec.StatusFile + ".tmp"
			if os.WriteFile(tmp, st, 0o600) == nil {
				_ = os.Rename(tmp, spec.StatusFile)
			}
		}
	}
}
