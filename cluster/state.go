package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// StateSource is one named channel of shared state, owned by its user (registrar
// bindings, media sessions, ...). The cluster moves opaque records; it never looks inside.
//
// Records may arrive more than once and in any order (a full sync can overtake or trail
// a live broadcast), so Apply must be idempotent and resolve conflicts itself, e.g. by a
// version or expiry carried in the record (last writer wins).
type StateSource interface {
	// Snapshot returns the full local state, pushed to a node that joins.
	Snapshot() [][]byte
	// Apply merges records received from a peer. Calls for one channel are serialised.
	Apply(records [][]byte)
}

const (
	msgRecord byte = 1 // [1][name len][name][record]
	msgChunk  byte = 2 // [2][name len][name][count u32]([len u32][record])*

	// syncChunkBytes bounds one reliable (TCP) message of a full sync; memberlist refuses
	// encrypted stream messages above 20 MiB and holds each one in memory twice.
	syncChunkBytes = 1 << 20
	// maxGossipRecord: bigger records do not fit a gossip UDP packet (UDPBufferSize
	// 1400 minus headers) and go over TCP to every member instead.
	maxGossipRecord = 1100
)

type channel struct {
	name string
	src  StateSource
	mu   sync.Mutex // serialises Apply
}

// RegisterState adds a named state channel. Register every channel before Start so the
// first full sync includes it; records for a channel unknown here are dropped.
func (c *Cluster) RegisterState(name string, src StateSource) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("cluster: state channel name %q must be 1..255 bytes", name)
	}
	c.chMu.Lock()
	defer c.chMu.Unlock()
	if _, dup := c.chans[name]; dup {
		return fmt.Errorf("cluster: state channel %q registered twice", name)
	}
	c.chans[name] = &channel{name: name, src: src}
	return nil
}

// Broadcast sends one changed record of a channel to every other member: gossiped over
// UDP through memberlist's transmit-limited queue (retransmitted a few times), or over
// TCP to each member when it is too big for a packet. Delivery is best effort; a member
// that misses records (partition) gets the full state again when it rejoins.
func (c *Cluster) Broadcast(name string, record []byte) error {
	c.chMu.RLock()
	_, ok := c.chans[name]
	c.chMu.RUnlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownChannel, name)
	}
	if c.ml.Load() == nil {
		return ErrClosed
	}
	msg := encodeRecord(name, record)
	if len(record) <= maxGossipRecord {
		c.bq.QueueBroadcast(simpleBroadcast(msg))
		return nil
	}
	for _, n := range c.aliveNodes() {
		go func(n *memberlist.Node) {
			if err := c.ml.Load().SendReliable(n, msg); err != nil {
				c.log.Warn("state record not sent", zap.String("channel", name), zap.String("to", n.Name), zap.Error(err))
			}
		}(n)
	}
	return nil
}

type simpleBroadcast []byte

func (b simpleBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b simpleBroadcast) Message() []byte                       { return b }
func (b simpleBroadcast) Finished()                             {}

func encodeRecord(name string, rec []byte) []byte {
	b := make([]byte, 0, 2+len(name)+len(rec))
	b = append(b, msgRecord, byte(len(name)))
	b = append(b, name...)
	return append(b, rec...)
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
	c.chMu.RLock()
	ch := c.chans[name]
	c.chMu.RUnlock()
	if ch == nil {
		c.log.Debug("state for an unregistered channel dropped", zap.String("channel", name), zap.Int("records", len(recs)))
		return
	}
	ch.mu.Lock()
	ch.src.Apply(recs)
	ch.mu.Unlock()
	c.m.syncRecords.Add(float64(len(recs)))
}

// pushState sends every channel's full state to node over TCP in bounded chunks.
func (c *Cluster) pushState(node *memberlist.Node) {
	c.chMu.RLock()
	chans := make([]*channel, 0, len(c.chans))
	for _, ch := range c.chans {
		chans = append(chans, ch)
	}
	c.chMu.RUnlock()
	for _, ch := range chans {
		recs := ch.src.Snapshot()
		if len(recs) == 0 {
			continue
		}
		chunks := encodeChunks(ch.name, recs)
		for i, m := range chunks {
			if err := c.ml.Load().SendReliable(node, m); err != nil {
				c.log.Warn("full state sync failed", zap.String("channel", ch.name), zap.String("to", node.Name),
					zap.Int("chunk", i), zap.Int("chunks", len(chunks)), zap.Error(err))
				return
			}
		}
		c.log.Info("full state sent", zap.String("channel", ch.name), zap.String("to", node.Name), zap.Int("records", len(recs)), zap.Int("chunks", len(chunks)))
	}
}
