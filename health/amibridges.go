package health

import (
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// CallIDVariable is the channel variable the shipped dialplan sets on every
// SIP channel to its SIP Call-ID, and that manager.conf's channelvars puts
// into every channel event (ChanVariable: HAPBX_CALLID=<Call-ID>).
const CallIDVariable = "HAPBX_CALLID"

// BridgeSink is told which two SIP calls an Asterisk bridges, as its
// manager reports them (BridgeEnter, BridgeLeave, BridgeDestroy): package
// proxy's link table, joined in cmd. The Call-IDs come from the network:
// the sink checks them against what it knows. Calls run on the AMI
// session's reader and must not block.
type BridgeSink interface {
	// Bridged: backend now bridges exactly these two calls.
	Bridged(backend, callID1, callID2 string)
	// Unbridged: the bridge of these two calls, reported by Bridged, broke.
	Unbridged(backend, callID1, callID2 string)
}

// Bounds on what one manager may make the tracker keep.
const (
	// maxCallIDLen: longer values are no Call-ID the proxy relayed.
	maxCallIDLen = 256
	// maxUniqueIDLen: Asterisk's channel Uniqueids are "<epoch>.<n>"; a
	// longer one is not kept (it would make the tables' keys unbounded).
	maxUniqueIDLen = 64
	// maxBridgeMembers: a bridge with more channels than 2 is no link, and
	// its members beyond these are not kept (BridgeNumChannels counts them).
	maxBridgeMembers = 3
)

// amiBridge is one Asterisk bridge as its events describe it.
type amiBridge struct {
	members  map[string]string // channel Uniqueid -> SIP Call-ID ("" unknown)
	channels int               // BridgeNumChannels of the last event
	linked   [2]string         // the pair reported Bridged, sorted; zero: none
	// partial: a member was not kept (more than maxBridgeMembers): members
	// no longer tell who is in it, until a BridgeInfo answer does.
	partial bool
}

// bridgeTracker follows one backend's bridges through its manager session's
// events and tells its sink when a two-party bridge of two SIP calls
// appears, changes or breaks. Its tables are bounded (max bridges) and
// emptied when the session ends: a new session learns them again
// (BridgeList, BridgeInfo).
type bridgeTracker struct {
	backend string
	sink    BridgeSink
	max     int
	full    prometheus.Counter // bridges not followed because max were kept

	mu      sync.Mutex
	bridges map[string]*amiBridge
	// info collects the channels of BridgeInfo answers by ActionID until
	// their BridgeInfoComplete names the bridge.
	info map[string]map[string]string
	// listed receives the two-channel bridges of a BridgeList answer, then
	// "" when the list is complete (resync).
	listed chan string
}

func newBridgeTracker(backend string, sink BridgeSink, max int, full prometheus.Counter) *bridgeTracker {
	return &bridgeTracker{backend: backend, sink: sink, max: max, full: full, bridges: map[string]*amiBridge{}, info: map[string]map[string]string{}}
}

// reset forgets everything: the session that told it ended. Links already
// reported stay with the sink, which keeps them as long as their dialogs
// (a dead Asterisk's bridges are what a takeover needs).
func (t *bridgeTracker) reset() {
	t.mu.Lock()
	clear(t.bridges)
	clear(t.info)
	t.listed = nil
	t.mu.Unlock()
}

// channelCallID is the SIP Call-ID in an event's channel variables.
func channelCallID(m AMIMessage) string {
	for _, f := range m.Fields {
		if !strings.EqualFold(f.Key, "ChanVariable") {
			continue
		}
		if v, ok := strings.CutPrefix(f.Value, CallIDVariable+"="); ok && len(v) <= maxCallIDLen {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// event applies one manager event (or list item of an answer).
func (t *bridgeTracker) event(m AMIMessage) {
	name := m.Get("Event")
	var report func()
	t.mu.Lock()
	switch {
	case strings.EqualFold(name, "BridgeEnter"):
		if b := t.bridgeLocked(m.Get("BridgeUniqueid"), true); b != nil {
			b.channels = atoi(m.Get("BridgeNumChannels"))
			if uid := m.Get("Uniqueid"); uid != "" {
				if len(uid) <= maxUniqueIDLen && (len(b.members) < maxBridgeMembers || hasKey(b.members, uid)) {
					b.members[uid] = channelCallID(m)
				} else {
					b.partial = true
				}
			}
			if sw := m.Get("SwapUniqueid"); sw != "" {
				delete(b.members, sw) // its BridgeLeave may follow: harmless
			}
			report = t.evaluateLocked(b)
		}
	case strings.EqualFold(name, "BridgeLeave"):
		id := m.Get("BridgeUniqueid")
		if b := t.bridgeLocked(id, false); b != nil {
			b.channels = atoi(m.Get("BridgeNumChannels"))
			delete(b.members, m.Get("Uniqueid"))
			report = t.evaluateLocked(b)
			if b.channels == 0 && len(b.members) == 0 {
				delete(t.bridges, id)
			}
		}
	case strings.EqualFold(name, "BridgeDestroy"):
		id := m.Get("BridgeUniqueid")
		if b := t.bridgeLocked(id, false); b != nil {
			b.channels = 0
			clear(b.members)
			report = t.evaluateLocked(b)
			delete(t.bridges, id)
		}
	case strings.EqualFold(name, "BridgeListItem"):
		if t.listed != nil && m.Get("BridgeNumChannels") == "2" {
			select {
			case t.listed <- m.Get("BridgeUniqueid"):
			default: // more than max: the rest is learnt from new events
			}
		}
	case strings.EqualFold(name, "BridgeListComplete"):
		if t.listed != nil {
			select {
			case t.listed <- "":
			default:
			}
		}
	case strings.EqualFold(name, "BridgeInfoChannel"):
		id := m.Get("ActionID")
		chans := t.info[id]
		if chans == nil && len(t.info) < 16 {
			chans = map[string]string{}
			t.info[id] = chans
		}
		if uid := m.Get("Uniqueid"); chans != nil && len(chans) < maxBridgeMembers && len(uid) <= maxUniqueIDLen {
			chans[uid] = channelCallID(m)
		}
	case strings.EqualFold(name, "BridgeInfoComplete"):
		chans := t.info[m.Get("ActionID")]
		delete(t.info, m.Get("ActionID"))
		if b := t.bridgeLocked(m.Get("BridgeUniqueid"), true); b != nil {
			b.channels = atoi(m.Get("BridgeNumChannels"))
			b.partial = b.channels > len(chans)
			clear(b.members)
			for uid, cid := range chans {
				b.members[uid] = cid
			}
			report = t.evaluateLocked(b)
		}
	}
	t.mu.Unlock()
	if report != nil {
		report()
	}
}

// bridgeLocked returns bridge id, made when create and the table has room.
func (t *bridgeTracker) bridgeLocked(id string, create bool) *amiBridge {
	if id == "" || len(id) > maxCallIDLen {
		return nil
	}
	b := t.bridges[id]
	if b == nil && create {
		if len(t.bridges) >= t.max {
			t.full.Inc()
			return nil
		}
		b = &amiBridge{members: map[string]string{}}
		t.bridges[id] = b
	}
	return b
}

// evaluateLocked compares b's pair of SIP calls with the one last reported
// and returns what to tell the sink (nil: nothing), to be called unlocked.
func (t *bridgeTracker) evaluateLocked(b *amiBridge) func() {
	var pair [2]string
	if b.channels == 2 && len(b.members) == 2 && !b.partial {
		i := 0
		for _, cid := range b.members {
			pair[i] = cid
			i++
		}
		slices.Sort(pair[:])
		if pair[0] == "" || pair[0] == pair[1] {
			pair = [2]string{}
		}
	}
	if pair == b.linked {
		return nil
	}
	old := b.linked
	b.linked = pair
	return func() {
		if old[0] != "" {
			t.sink.Unbridged(t.backend, old[0], old[1])
		}
		if pair[0] != "" {
			t.sink.Bridged(t.backend, pair[0], pair[1])
		}
	}
}

// startList prepares for a BridgeList answer: the two-channel bridges it
// names come on the returned channel, then "".
func (t *bridgeTracker) startList() <-chan string {
	ch := make(chan string, min(t.max, 4096)+1)
	t.mu.Lock()
	t.listed = ch
	t.mu.Unlock()
	return ch
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func atoi(s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0
	}
	return n
}
