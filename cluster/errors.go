package cluster

import "errors"

var (
	// ErrNotLeader is returned by Publish on a node that is not the raft leader.
	ErrNotLeader = errors.New("cluster: not the leader")
	// ErrBadKey means the secret file holds no usable gossip key.
	ErrBadKey = errors.New("cluster: bad gossip key")
	// ErrKeyMismatch means a peer answered but our gossip key cannot talk to it.
	ErrKeyMismatch = errors.New("cluster: gossip key does not match the peers' (check secret_file)")
	// ErrClosed is returned once Run returned.
	ErrClosed = errors.New("cluster: closed")
	// ErrUnknownChannel is returned by Broadcast for a channel never registered.
	ErrUnknownChannel = errors.New("cluster: unknown state channel")
)
