package cluster

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ackTransport is raft's transport noting, for every follower, when the newest
// AppendEntries (heartbeats included) that it accepted was sent, and in which term. A
// follower that accepted one set its last contact with us no earlier than that send
// time, so it votes for nobody else until heartbeat_timeout after it: the quorum lease
// (leadership.go) is counted from these send times.
type ackTransport struct {
	*raft.NetworkTransport
	onAck func() // after each newly noted acknowledgement

	mu   sync.Mutex
	acks map[raft.ServerID]ack
}

type ack struct {
	term uint64
	sent time.Time
}

func newAckTransport(t *raft.NetworkTransport, onAck func()) *ackTransport {
	return &ackTransport{NetworkTransport: t, onAck: onAck, acks: map[raft.ServerID]ack{}}
}

// AppendEntries sends as raft's transport does and notes the send time when the
// follower accepted the request in its term.
func (t *ackTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	sent := time.Now() // before the request leaves: never later than the follower's contact
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err != nil || !resp.Success || resp.Term != args.Term {
		return err
	}
	t.mu.Lock()
	a := t.acks[id]
	newer := args.Term > a.term || (args.Term == a.term && sent.After(a.sent))
	if newer {
		t.acks[id] = ack{args.Term, sent}
	}
	t.mu.Unlock()
	if newer && t.onAck != nil {
		t.onAck()
	}
	return err
}

// quorumSince returns the newest time s such that a majority of voters, this leader
// counted, accepted an AppendEntries of term sent at or after s; zero when no
// majority did.
func (t *ackTransport) quorumSince(term uint64, self raft.ServerID, voters []raft.ServerID) time.Time {
	need := len(voters)/2 + 1 - 1 // followers besides this leader
	if need <= 0 {
		return time.Now()
	}
	t.mu.Lock()
	sent := make([]time.Time, 0, len(voters))
	for _, v := range voters {
		if a, ok := t.acks[v]; ok && v != self && a.term == term {
			sent = append(sent, a.sent)
		}
	}
	t.mu.Unlock()
	if len(sent) < need {
		return time.Time{}
	}
	slices.SortFunc(sent, func(a, b time.Time) int { return b.Compare(a) }) // newest first
	return sent[need-1]
}

// ackedWithin reports whether follower id accepted an AppendEntries of term sent less
// than d ago.
func (t *ackTransport) ackedWithin(id raft.ServerID, term uint64, d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	a, ok := t.acks[id]
	return ok && a.term == term && time.Since(a.sent) < d
}

// warmConns keeps a pooled, authenticated raft connection from this node to every other
// voter. Followers never talk to each other until an election, and the first RPC to a
// peer dials TCP and runs the secret_file handshake: on a loaded host that took up to
// 200 ms in the middle of a failover (or failed the RPC, the handshake being bound by
// the RPC timeout). A stale pooled connection (the peer restarted) fails one of these
// instead of a (pre-)vote. The probe is an AppendEntries of term 0, which every raft
// node ignores (older than its term) without a log line or a state change.
func (c *Cluster) warmConns(ctx context.Context) {
	defer c.wg.Done()
	self := c.cfg.self()
	req := raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{
		ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(self.Name), Addr: []byte(self.Raft),
	}}
	t := time.NewTicker(4 * c.cfg.Timing.HeartbeatTimeout)
	defer t.Stop()
	for {
		for _, p := range c.cfg.Peers {
			if p.Name == self.Name {
				continue
			}
			// The pool holds up to rpcPool connections, any of them stale after the peer
			// restarted: each failure drops one. An error after that only means no warm
			// connection this round.
			for range rpcPool + 1 {
				var resp raft.AppendEntriesResponse
				if c.lead.trans.NetworkTransport.AppendEntries(raft.ServerID(p.Name), raft.ServerAddress(p.Raft), &req, &resp) == nil {
					break
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
