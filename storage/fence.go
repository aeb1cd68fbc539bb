package storage

import (
	"context"
	"fmt"
	"time"
)

// Fencer makes sure a peer node can no longer write to the replicated
// storage before the local node (or the node the coordinator is about to
// promote) takes over. Fence returns nil only when the peer is known fenced.
type Fencer interface {
	Fence(ctx context.Context) error
}

// CommandFencer fences by running a command through /bin/sh -c: an IPMI
// power-off (`ipmitool -H bmc-a -U admin -f pw chassis power off`), a PDU
// outlet switch, any script. Exit status 0 means the peer is fenced; any
// other status, or running past Timeout, means it is not.
type CommandFencer struct {
	Command string
	Timeout time.Duration
}

// Fence runs the command.
func (f CommandFencer) Fence(ctx context.Context) error {
	if f.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout)
		defer cancel()
	}
	if _, err := runShell(ctx, f.Command); err != nil {
		return fmt.Errorf("%w: fence command: %w", ErrFenceFailed, err)
	}
	return nil
}

// StateFunc reads the DRBD state as seen by a node: Agent.DRBDState for the
// local agent, or Client.Status for a remote one.
type StateFunc func(ctx context.Context) (DRBDState, error)

// PeerDisconnectFencer is the fencing of last resort when no power switch is
// configured: it waits until DRBD on the surviving node shows no peer
// connected and none Primary, then waits SafetyDelay more (time for a peer
// that is merely cut off to notice and stop: its watchdog, its own agent) and
// checks once more. It cannot stop a peer that keeps writing while cut off;
// a CommandFencer can, so prefer one.
type PeerDisconnectFencer struct {
	// State reads the surviving node's DRBD state.
	State StateFunc
	// Timeout bounds the wait for the disconnection.
	Timeout time.Duration
	// SafetyDelay is waited after the disconnection was seen.
	SafetyDelay time.Duration
	// Poll is the interval between state reads (default 100ms).
	Poll time.Duration
}

// Fence waits for the disconnection plus the safety delay.
func (f PeerDisconnectFencer) Fence(ctx context.Context) error {
	poll := f.Poll
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	if f.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.Timeout+f.SafetyDelay)
		defer cancel()
	}
	deadline := time.Now().Add(f.Timeout)
	var seenAt time.Time
	var last error
	for {
		st, err := f.State(ctx)
		switch {
		case err != nil:
			last, seenAt = err, time.Time{}
		case peerGone(st):
			if seenAt.IsZero() {
				seenAt = time.Now()
			}
			if time.Since(seenAt) >= f.SafetyDelay {
				return nil
			}
			last = nil
		default:
			last, seenAt = fmt.Errorf("peer %s still connection %s role %s", st.Peer().Name, st.Peer().Connection, st.Peer().Role), time.Time{}
		}
		if seenAt.IsZero() && f.Timeout > 0 && time.Now().After(deadline) {
			return fmt.Errorf("%w: peer not disconnected within %s: %w", ErrFenceFailed, f.Timeout, last)
		}
		select {
		case <-ctx.Done():
			if last == nil {
				return fmt.Errorf("%w: %w", ErrFenceFailed, ctx.Err())
			}
			return fmt.Errorf("%w: %w (last: %w)", ErrFenceFailed, ctx.Err(), last)
		case <-time.After(poll):
		}
	}
}

// peerGone: no peer connected and none known Primary.
func peerGone(st DRBDState) bool {
	for _, p := range st.Peers {
		if p.Connection == ConnConnected || p.Role == RolePrimary {
			return false
		}
	}
	return true
}

// NewFencer returns a CommandFencer when cfg.Command is set, else a
// PeerDisconnectFencer reading state.
func NewFencer(cfg FenceConfig, state StateFunc) Fencer {
	if cfg.Command != "" {
		return CommandFencer{Command: cfg.Command, Timeout: cfg.Timeout}
	}
	return PeerDisconnectFencer{State: state, Timeout: cfg.Timeout, SafetyDelay: cfg.SafetyDelay}
}
