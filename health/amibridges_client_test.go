package health_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/health/amitest"
	"github.com/hapbx/hapbx/internal/testkit"
)

// links is a BridgeSink keeping the pairs it was told of.
type links struct {
	mu    sync.Mutex
	pairs map[string]bool
	calls int
}

func (l *links) key(backend, a, b string) string {
	if a > b {
		a, b = b, a
	}
	return backend + " " + a + " " + b
}

func (l *links) Bridged(backend, a, b string) {
	l.mu.Lock()
	l.pairs[l.key(backend, a, b)] = true
	l.calls++
	l.mu.Unlock()
}

func (l *links) Unbridged(backend, a, b string) {
	l.mu.Lock()
	delete(l.pairs, l.key(backend, a, b))
	l.calls++
	l.mu.Unlock()
}

func (l *links) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k := range l.pairs {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// captured returns the messages of a testdata capture whose ActionID is
// id, with it replaced by actionID (the client's own).
func captured(t *testing.T, name, id, actionID string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range strings.Split(string(b), "\r\n\r\n") {
		if strings.Contains(m, "\r\nActionID: "+id+"\r\n") || strings.HasPrefix(m, "ActionID: "+id+"\r\n") {
			out = append(out, strings.Replace(m, "ActionID: "+id, "ActionID: "+actionID, 1))
		}
	}
	return strings.Join(out, "\r\n\r\n") + "\r\n\r\n"
}

// TestFollowBridgesSession: a backend's manager session tells the sink of
// the bridges that exist when it logs in (BridgeList, then BridgeInfo, as
// Asterisk 20 answers them, with no write permission) and of the bridges
// its events report; a session that drops is learnt again from the next
// one, and the sink keeps what it was told meanwhile.
func TestFollowBridgesSession(t *testing.T) {
	t.Parallel()
	srv := amitest.New(t, "hapbx", "s3cret")
	const bridge = "00400249-43fe-4365-b210-76b454aa9d2a"
	var lists, infos int
	var mu sync.Mutex
	srv.SetAnswer("BridgeList", func(id string, _ map[string]string) string {
		mu.Lock()
		lists++
		mu.Unlock()
		return captured(t, "ami_bridge_list.txt", "l1", id)
	})
	srv.SetAnswer("BridgeInfo", func(id string, f map[string]string) string {
		mu.Lock()
		infos++
		mu.Unlock()
		if f["bridgeuniqueid"] != bridge {
			return "Response: Error\r\nActionID: " + id + "\r\nMessage: Bridge not found\r\n\r\n"
		}
		return captured(t, "ami_bridge_list.txt", "i1", id)
	})
	cfg := health.DefaultConfig()
	cfg.Require = []string{health.CheckAMI}
	c, err := health.New(cfg, []health.Target{{Name: "pbx1", Address: "127.0.0.1:5060",
		AMI: &health.AMITarget{Address: srv.Addr(), Username: "hapbx", Secret: "s3cret"}}}, zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink := &links{pairs: map[string]bool{}}
	c.FollowBridges(sink, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	listed := "pbx1 1-26273@127.31.77.1 44791786-79a2-4e1c-aaaa-78b10b7dda03"
	testkit.Eventually(t, 3*time.Second, "the listed bridge reported", func() bool {
		return slices.Equal(sink.list(), []string{listed})
	})
	mu.Lock()
	if lists != 1 || infos != 3 {
		t.Errorf("BridgeList asked %d times, BridgeInfo %d, want 1 and 3 (one per two-channel bridge)", lists, infos)
	}
	mu.Unlock()

	// A blind transfer's events as Asterisk sent them.
	b, err := os.ReadFile(filepath.Join("testdata", "ami_blind_transfer.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// Up to A and C bridged: the events before the first BridgeLeave
	// of a bridge other than A and B's.
	msgs := strings.Split(string(b), "\r\n\r\n")
	first := ""
	var sent []string
	for _, m := range msgs {
		id := field(m, "BridgeUniqueid")
		if first == "" {
			first = id
		}
		if field(m, "Event") == "BridgeLeave" && id != first {
			break
		}
		sent = append(sent, m)
	}
	srv.SendEvents(strings.Join(sent, "\r\n\r\n") + "\r\n\r\n")
	ac := "pbx1 1-26101@127.31.77.1 c63b65d0-75c2-44d4-a3fe-544310effce2"
	testkit.Eventually(t, 3*time.Second, "A-C reported after the transfer", func() bool {
		return slices.Contains(sink.list(), ac) && !slices.Contains(sink.list(), "pbx1 1-26101@127.31.77.1 ad22c320-43c5-4cc0-8722-52cd8f84895c")
	})

	// The session drops: the next one learns the bridges again.
	sink.mu.Lock()
	before := sink.calls
	sink.mu.Unlock()
	srv.DropConnections()
	testkit.Eventually(t, 3*time.Second, "the bridges learnt again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return lists == 2 && infos == 6
	})
	testkit.Eventually(t, 3*time.Second, "the sink told again", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return sink.calls > before
	})
	if got := sink.list(); !slices.Contains(got, listed) {
		t.Errorf("after the reconnect the sink holds %v, want %s among them", got, listed)
	}
}

// field is the value of key in one raw message.
func field(msg, key string) string {
	for _, line := range strings.Split(msg, "\r\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	return ""
}
