package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// Published values: Publish(key, value) on the raft leader goes through the raft log
// (consistent, persisted, replicated to all voters); Get reads the local copy (what
// this node has applied: committed values, possibly one commit behind the leader).
// Meant for the failover
// coordinator's active-backend decision, not for bulk data. A new leader does not
// know the app's decision; RepublishOnTakeover(key, fn) makes a proxy publish fn()
// each time it takes the VIP, after a raft barrier (so it compares against
// everything earlier leaders committed) and only if the value differs, retried
// while it holds the VIP (TestRepublishOnTakeover).

// published is the raft-replicated key/value map and what to re-publish on takeover.
type published struct {
	fsm       *kvFSM
	mu        sync.Mutex
	republish map[string]func() []byte // RepublishOnTakeover
}

// takeoverFuncs returns a copy of what RepublishOnTakeover registered.
func (p *published) takeoverFuncs() map[string]func() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.republish)
}

// Publish stores key=value through the raft log (strongly consistent, replicated to all
// voters, witness included). Only the raft leader can publish: ErrNotLeader elsewhere.
func (c *Cluster) Publish(key string, value []byte) error {
	if c.role == RoleService {
		return fmt.Errorf("publish %q: a service member is not a voter: %w", key, ErrNotLeader)
	}
	if c.lead.r == nil || c.closed.Load() {
		return ErrClosed
	}
	b, err := json.Marshal(kvCommand{Key: key, Value: value})
	if err != nil {
		return err
	}
	if err := c.lead.r.Apply(b, 2*time.Second).Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("publish %q: %w", key, ErrNotLeader)
		}
		return fmt.Errorf("publish %q: %w", key, err)
	}
	return nil
}

// Get returns the last published value of key this node has applied (may trail the
// leader by a commit on followers).
func (c *Cluster) Get(key string) ([]byte, bool) { return c.kv.fsm.get(key) }

// RepublishOnTakeover makes this node publish key=current() each time it takes the
// VIP, before or right after it starts acting as the leader: a new holder learns every
// entry committed by earlier leaders first (raft barrier), then publishes current()
// unless the committed value already equals it, retrying while it keeps the VIP.
// current must be cheap and must not block; nil means nothing to publish. Call before
// Run; a second call for the same key replaces the first.
func (c *Cluster) RepublishOnTakeover(key string, current func() []byte) {
	c.kv.mu.Lock()
	c.kv.republish[key] = current
	c.kv.mu.Unlock()
}

// takeover starts the re-publication for hold generation gen (called under vipMu when
// the VIP was just added; c.wg is held by the leader loop, so Add is safe).
func (c *Cluster) takeover(gen uint64) {
	if len(c.kv.takeoverFuncs()) == 0 || c.lead.r == nil || c.runCtx == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.republishAll(gen)
	}()
}

// republishAll runs until every registered key is published or this node no longer
// holds the VIP it took in generation gen.
func (c *Cluster) republishAll(gen uint64) {
	ctx := c.runCtx
	retry := c.cfg.Timing.HeartbeatTimeout
	current := func() bool { return c.hold.gen.Load() == gen && c.hold.holding.Load() && ctx.Err() == nil }
	for current() {
		if err := c.lead.r.Barrier(2 * time.Second).Error(); err != nil {
			c.log.Debug("barrier before re-publishing failed", zap.Error(err))
		} else if c.republishOnce(current) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// republishOnce publishes what differs from the committed values; true when all match.
// A value the app publishes meanwhile wins: the loop compares again after each Publish.
func (c *Cluster) republishOnce(current func() bool) bool {
	for key, fn := range c.kv.takeoverFuncs() {
		for i := 0; ; i++ {
			if !current() {
				return false
			}
			v := fn()
			if v == nil {
				break
			}
			if old, ok := c.Get(key); ok && bytes.Equal(old, v) {
				break
			}
			if i == 3 {
				return false // the value keeps changing: next round
			}
			if err := c.Publish(key, v); err != nil {
				c.log.Warn("re-publish after takeover failed", zap.String("key", key), zap.Error(err))
				return false
			}
			c.log.Info("re-published after takeover", zap.String("key", key), zap.ByteString("value", v))
		}
	}
	return true
}
