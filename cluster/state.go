package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// == Shared state ==
//
// RegisterState(name, src) adds a channel; Broadcast(name, record) queues one change
// for every other alive member that has state channels itself (announced in its
// memberlist metadata; a witness normally has none). Each peer has an outbox drained by
// its own goroutine, so a slow or dead peer delays nobody else, into one message per
// channel over memberlist's encrypted TCP stream (chunks of at most
// 1 MiB: memberlist refuses encrypted stream messages above 20 MiB, which is also why
// its push/pull LocalState is not used for bulk state). When memberlist reports a member
// up (join, restart, healed partition), every node pushes the full StateSnapshot of every
// channel to it the same way. A failed send or an overflowing outbox (200k records)
// drops the batch and resends the full state to that peer, retried every second while
// it is alive. So records arrive at least once, possibly twice and out of order:
// StateSource.ApplyState must be idempotent and resolve conflicts (version/expiry in the
// record). Figures (TestStateSyncOnJoin, TestBroadcastFigures with HAPBX_BENCH=1):
// 100k records of 300 bytes reach a joining node in ~0.15 s over veth; bursts of
// broadcasts arrive at >100k records/s on loopback. memberlist's TransmitLimitedQueue
// (UDP gossip) was tried first and dropped: it lost ~10% of a 2000-record burst.

// StateSource is one named channel of shared state, owned by its user (registrar
// bindings, media sessions, ...). The cluster moves opaque records; it never looks inside.
//
// Records may arrive more than once and in any order (a full sync can overtake or trail
// a live broadcast), so ApplyState must be idempotent and resolve conflicts itself, e.g.
// by a version or expiry carried in the record (last writer wins).
type StateSource interface {
	// StateSnapshot returns the full local state, pushed to a node that joins.
	StateSnapshot() [][]byte
	// ApplyState merges records received from a peer. Calls for one channel are
	// serialised.
	ApplyState(records [][]byte)
	// StateChanges is called once, by RegisterState: the source passes every record
	// that changes locally to send (Broadcast on its channel; it does not block), and
	// may ask holder whether this node holds the VIP (the holder's records rule).
	StateChanges(send func(record []byte) error, holder func() bool)
}

const (
	msgRecord byte = 1 // [1][name len][name][record]
	msgChunk  byte = 2 // [2][name len][name][count u32]([len u32][record])*

	// syncChunkBytes bounds one reliable (TCP) message; memberlist refuses encrypted
	// stream messages above 20 MiB and holds each one in memory twice.
	syncChunkBytes = 1 << 20
)

// channels are the registered state channels and the per-peer outboxes.
type channels struct {
	mu    sync.RWMutex
	chans map[string]*channel

	obMu     sync.Mutex
	outboxes map[string]*outbox
}

// get returns the channel called name, nil if none.
func (s *channels) get(name string) *channel {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.chans[name]
}

// registered reports whether any channel is registered.
func (s *channels) registered() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.chans) > 0
}

// list returns every registered channel.
func (s *channels) list() []*channel {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Collect(maps.Values(s.chans))
}

type channel struct {
	name string
	src  StateSource
	mu   sync.Mutex // serialises ApplyState
}

// RegisterState adds a named state channel and hands src its outlet (StateChanges).
// Register every channel before Run so the first full sync includes it; records for a
// channel unknown here are dropped.
func (c *Cluster) RegisterState(name string, src StateSource) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("cluster: state channel name %q must be 1..255 bytes", name)
	}
	if c.role == RoleService {
		return fmt.Errorf("cluster: state channel %q: a service member carries no shared state", name)
	}
	c.state.mu.Lock()
	_, dup := c.state.chans[name]
	if !dup {
		c.state.chans[name] = &channel{name: name, src: src}
	}
	c.state.mu.Unlock()
	if dup {
		return fmt.Errorf("cluster: state channel %q registered twice", name)
	}
	src.StateChanges(func(rec []byte) error { return c.Broadcast(name, rec) }, c.IsLeader)
	return nil
}

// Broadcast queues one changed record of channel name for every other alive member
// that takes state, through its outbox (see Shared state above: at least once, in any
// order). Sources call it through the send function StateChanges hands them.
func (c *Cluster) Broadcast(name string, record []byte) error {
	if c.state.get(name) == nil {
		return fmt.Errorf("%w: %q", ErrUnknownChannel, name)
	}
	if c.runCtx == nil || c.closed.Load() {
		return ErrClosed
	}
	rec := append([]byte(nil), record...)
	for _, n := range c.mem.aliveNodes(c.cfg.Name) {
		c.outboxFor(n.Name).add(name, rec)
	}
	return nil
}

// maxOutbox bounds the records queued for one peer; beyond it the peer is resynced.
const maxOutbox = 200_000

type outbox struct {
	mu       sync.Mutex
	pending  map[string][][]byte
	order    []string // channels in first-queued order
	count    int
	overflow bool
	kick     chan struct{}
}

func (o *outbox) add(ch string, rec []byte) {
	o.mu.Lock()
	if o.count >= maxOutbox {
		o.overflow = true
	} else {
		if _, ok := o.pending[ch]; !ok {
			o.order = append(o.order, ch)
		}
		o.pending[ch] = append(o.pending[ch], rec)
		o.count++
	}
	o.mu.Unlock()
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

func (o *outbox) take() (map[string][][]byte, []string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p, ord, ovf := o.pending, o.order, o.overflow
	o.pending, o.order, o.count, o.overflow = map[string][][]byte{}, nil, 0, false
	return p, ord, ovf
}

func (c *Cluster) outboxFor(peer string) *outbox {
	c.state.obMu.Lock()
	defer c.state.obMu.Unlock()
	if o := c.state.outboxes[peer]; o != nil {
		return o
	}
	o := &outbox{pending: map[string][][]byte{}, kick: make(chan struct{}, 1)}
	if c.runCtx.Err() != nil {
		return o // shutting down: nobody drains it, and wg must not grow during Wait
	}
	c.state.outboxes[peer] = o
	c.wg.Add(1)
	go c.sendLoop(peer, o)
	return o
}

func (c *Cluster) sendLoop(peer string, o *outbox) {
	defer c.wg.Done()
	for {
		select {
		case <-c.runCtx.Done():
			return
		case <-o.kick:
		}
		pending, order, overflow := o.take()
		node, alive := c.mem.node(peer)
		if !alive {
			continue // it gets the full state when it comes back
		}
		if overflow {
			c.log.Warn("state outbox overflowed, resending full state", zap.String("to", peer))
			c.resync(peer)
			continue
		}
		for _, ch := range order {
			if err := c.sendRecords(node, ch, pending[ch]); err != nil {
				c.log.Warn("state records not delivered, resending full state", zap.String("to", peer),
					zap.String("channel", ch), zap.Int("records", len(pending[ch])), zap.Error(err))
				c.resync(peer)
				break
			}
		}
	}
}

func (c *Cluster) sendRecords(node *memberlist.Node, ch string, recs [][]byte) error {
	for _, m := range encodeChunks(ch, recs) {
		if err := c.mem.ml.Load().SendReliable(node, m); err != nil {
			return err
		}
	}
	return nil
}

// resync pushes the full state to peer, retrying every second while it is alive.
func (c *Cluster) resync(peer string) {
	for {
		node, alive := c.mem.node(peer)
		if !alive || c.pushState(node) == nil {
			return
		}
		select {
		case <-c.runCtx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// encodeChunks packs records into messages of about syncChunkBytes.
func encodeChunks(name string, recs [][]byte) [][]byte {
	var out [][]byte
	var cur []byte
	count := 0
	start := func() {
		cur = make([]byte, 0, syncChunkBytes+64)
		cur = append(cur, msgChunk, byte(len(name)))
		cur = append(cur, name...)
		cur = append(cur, 0, 0, 0, 0)
		count = 0
	}
	flush := func() {
		if count > 0 {
			binary.BigEndian.PutUint32(cur[2+len(name):], uint32(count))
			out = append(out, cur)
		}
	}
	start()
	for _, r := range recs {
		if count > 0 && len(cur)+4+len(r) > syncChunkBytes {
			flush()
			start()
		}
		cur = binary.BigEndian.AppendUint32(cur, uint32(len(r)))
		cur = append(cur, r...)
		count++
	}
	flush()
	return out
}

var errBadMsg = errors.New("cluster: malformed state message")

// decodeMessage parses a user message from a peer. The returned records alias b.
func decodeMessage(b []byte) (name string, recs [][]byte, err error) {
	if len(b) < 2 {
		return "", nil, errBadMsg
	}
	typ, nl := b[0], int(b[1])
	if len(b) < 2+nl || nl == 0 {
		return "", nil, errBadMsg
	}
	name = string(b[2 : 2+nl])
	rest := b[2+nl:]
	switch typ {
	case msgRecord:
		return name, [][]byte{rest}, nil
	case msgChunk:
		if len(rest) < 4 {
			return "", nil, errBadMsg
		}
		n := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		// Every record needs at least 4 bytes: bound the allocation by the input.
		if uint64(n)*4 > uint64(len(rest)) {
			return "", nil, errBadMsg
		}
		recs = make([][]byte, 0, n)
		for i := uint32(0); i < n; i++ {
			if len(rest) < 4 {
				return "", nil, errBadMsg
			}
			l := binary.BigEndian.Uint32(rest)
			rest = rest[4:]
			if uint64(l) > uint64(len(rest)) {
				return "", nil, errBadMsg
			}
			recs = append(recs, rest[:l:l])
			rest = rest[l:]
		}
		if len(rest) != 0 {
			return "", nil, errBadMsg
		}
		return name, recs, nil
	}
	return "", nil, errBadMsg
}

// handleMsg applies a received user message. memberlist may reuse b after we return.
func (c *Cluster) handleMsg(b []byte) {
	b = append([]byte(nil), b...)
	name, recs, err := decodeMessage(b)
	if err != nil {
		c.log.Warn("dropping malformed state message", zap.Int("bytes", len(b)), zap.Error(err))
		return
	}
	ch := c.state.get(name)
	if ch == nil {
		c.log.Debug("state for an unregistered channel dropped", zap.String("channel", name), zap.Int("records", len(recs)))
		return
	}
	ch.mu.Lock()
	ch.src.ApplyState(recs)
	ch.mu.Unlock()
	c.m.syncRecords.Add(float64(len(recs)))
}

// pushState sends every channel's full state to node over TCP in bounded chunks.
func (c *Cluster) pushState(node *memberlist.Node) error {
	for _, ch := range c.state.list() {
		recs := ch.src.StateSnapshot()
		if len(recs) == 0 {
			continue
		}
		chunks := encodeChunks(ch.name, recs)
		for i, m := range chunks {
			if err := c.mem.ml.Load().SendReliable(node, m); err != nil {
				c.log.Warn("full state sync failed", zap.String("channel", ch.name), zap.String("to", node.Name),
					zap.Int("chunk", i), zap.Int("chunks", len(chunks)), zap.Error(err))
				return err
			}
		}
		c.log.Info("full state sent", zap.String("channel", ch.name), zap.String("to", node.Name), zap.Int("records", len(recs)), zap.Int("chunks", len(chunks)))
	}
	return nil
}
