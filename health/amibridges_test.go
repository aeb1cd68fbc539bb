package health

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// bridgeLog records what a tracker tells its sink, one line per call.
type bridgeLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *bridgeLog) Bridged(backend, a, b string) {
	l.mu.Lock()
	l.lines = append(l.lines, "bridged "+backend+" "+a+" "+b)
	l.mu.Unlock()
}

func (l *bridgeLog) Unbridged(backend, a, b string) {
	l.mu.Lock()
	l.lines = append(l.lines, "unbridged "+backend+" "+a+" "+b)
	l.mu.Unlock()
}

func (l *bridgeLog) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// replay feeds every message of a capture in testdata to t.
func replay(tb testing.TB, t *bridgeTracker, name string) {
	tb.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	for {
		m, err := ReadAMIMessage(br)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			tb.Fatal(err)
		}
		if m.Get("Event") != "" {
			t.event(m)
		}
	}
}

func newTestTracker(max int) (*bridgeTracker, *bridgeLog, prometheus.Counter) {
	var log bridgeLog
	full := prometheus.NewCounter(prometheus.CounterOpts{Name: "full"})
	return newBridgeTracker("pbx1", &log, max, full), &log, full
}

// The Call-IDs of the captures (testdata/README.md): phone A (201) called
// B (202), then B transferred A to C (203).
const (
	capA      = "1-26101@127.31.77.1"
	capB      = "ad22c320-43c5-4cc0-8722-52cd8f84895c"
	capC      = "c63b65d0-75c2-44d4-a3fe-544310effce2"
	capAttA   = "1-31975@127.31.77.1"
	capAttB1  = "a537b47d-c237-4474-82c3-f2f62f05e2bc"
	capAttB2  = "cc3d8096-3015-4470-8424-37375745b156"
	capAttC   = "25d9aeaa-c36e-4069-afa1-97f73624574d"
	capListA  = "1-26273@127.31.77.1"
	capListC  = "44791786-79a2-4e1c-aaaa-78b10b7dda03"
	capListID = "00400249-43fe-4365-b210-76b454aa9d2a"
)

func pair(verb, a, b string) string {
	if a > b {
		a, b = b, a
	}
	return verb + " pbx1 " + a + " " + b
}

// TestBridgeTrackerBlindTransfer: Asterisk 20's events for a blind
// transfer (REFER): A-B bridged, the bridge broken, A-C bridged in a new
// bridge, broken when C hangs up.
func TestBridgeTrackerBlindTransfer(t *testing.T) {
	tr, log, _ := newTestTracker(10)
	replay(t, tr, "ami_blind_transfer.txt")
	want := []string{pair("bridged", capA, capB), pair("unbridged", capA, capB), pair("bridged", capA, capC), pair("unbridged", capA, capC)}
	if got := log.got(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sink told:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(tr.bridges) != 0 {
		t.Errorf("%d bridges kept after all were destroyed", len(tr.bridges))
	}
}

// TestBridgeTrackerAttendedTransfer: Asterisk 20's events for an attended
// transfer (REFER with Replaces): A-B1 and B2-C bridged; A leaves its
// bridge and takes B2's place beside C (BridgeEnter with SwapUniqueid).
func TestBridgeTrackerAttendedTransfer(t *testing.T) {
	tr, log, _ := newTestTracker(10)
	replay(t, tr, "ami_attended_transfer.txt")
	want := []string{
		pair("bridged", capAttA, capAttB1), pair("bridged", capAttB2, capAttC),
		pair("unbridged", capAttA, capAttB1), pair("unbridged", capAttB2, capAttC),
		pair("bridged", capAttA, capAttC), pair("unbridged", capAttA, capAttC),
	}
	if got := log.got(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sink told:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestBridgeTrackerInfo: a BridgeInfo answer (list events with the
// ActionID; the bridge named only by BridgeInfoComplete) makes the link
// of a bridge that existed before the session.
func TestBridgeTrackerInfo(t *testing.T) {
	tr, log, _ := newTestTracker(10)
	listed := tr.startList()
	replay(t, tr, "ami_bridge_list.txt")
	var ids []string
	for id := range listed {
		if id == "" {
			break
		}
		ids = append(ids, id)
	}
	if len(ids) != 3 || ids[0] != capListID {
		t.Errorf("two-channel bridges listed: %v, want 3 starting with %s", ids, capListID)
	}
	want := []string{pair("bridged", capListA, capListC)}
	if got := log.got(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sink told:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// ev builds an event as Asterisk words it.
func ev(name, bridge string, n int, uid, callID string) AMIMessage {
	m := AMIMessage{Fields: []AMIField{{"Event", name}, {"Privilege", "call,all"}, {"BridgeUniqueid", bridge}, {"BridgeType", "basic"},
		{"BridgeNumChannels", itoa(n)}}}
	if uid != "" {
		m.Fields = append(m.Fields, AMIField{"Channel", "PJSIP/x-" + uid}, AMIField{"Uniqueid", uid}, AMIField{"ChanVariable", CallIDVariable + "=" + callID})
	}
	return m
}

func itoa(n int) string { return string(rune('0' + n)) }

// TestBridgeTrackerBounds: a bridge beyond max is not followed and counted;
// a bridge of three channels links nothing, nor does it when it falls back
// to two whose one was never kept; a channel without a Call-ID (not SIP)
// links nothing; a reset forgets every bridge without telling the sink.
func TestBridgeTrackerBounds(t *testing.T) {
	tr, log, full := newTestTracker(2)
	tr.event(ev("BridgeEnter", "b1", 1, "1", "c1"))
	tr.event(ev("BridgeEnter", "b1", 2, "2", "c2"))
	tr.event(ev("BridgeEnter", "b2", 1, "3", "c3"))
	tr.event(ev("BridgeEnter", "b3", 1, "5", "c5")) // a third bridge: over max
	if n := testutil.ToFloat64(full); n != 1 {
		t.Errorf("bridges not followed: %v, want 1", n)
	}
	tr.event(ev("BridgeEnter", "b2", 2, "4", "")) // a Local or DAHDI channel
	// b1 becomes a conference of 4 (one not kept), then falls back to 2.
	tr.event(ev("BridgeEnter", "b1", 3, "6", "c6"))
	tr.event(ev("BridgeEnter", "b1", 4, "7", "c7"))
	tr.event(ev("BridgeLeave", "b1", 3, "6", "c6"))
	tr.event(ev("BridgeLeave", "b1", 2, "1", "c1"))
	want := []string{pair("bridged", "c1", "c2"), pair("unbridged", "c1", "c2")}
	if got := log.got(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sink told:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	tr.reset()
	if len(tr.bridges) != 0 {
		t.Errorf("%d bridges kept after a reset", len(tr.bridges))
	}
	if got := log.got(); len(got) != len(want) {
		t.Errorf("a reset told the sink: %v", got[len(want):])
	}
}
