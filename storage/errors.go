package storage

import "errors"

// Sentinel errors; callers (the failover coordinator, the CLI) branch on
// them with errors.Is.
var (
	// ErrPeerPrimary: DRBD reports a peer in role Primary; promoting would
	// make two primaries.
	ErrPeerPrimary = errors.New("storage: peer is Primary")
	// ErrDiskNotUpToDate: the local disk is not UpToDate; promoting would
	// serve stale or inconsistent data.
	ErrDiskNotUpToDate = errors.New("storage: local disk not UpToDate")
	// ErrSplitBrain: a DRBD split brain was detected and not yet cleared by
	// an operator (ClearSplitBrain or a forced start).
	ErrSplitBrain = errors.New("storage: DRBD split brain not cleared")
	// ErrFenceFailed: the peer is not connected and fencing it failed, so it
	// may still be Primary.
	ErrFenceFailed = errors.New("storage: fencing the peer failed")
	// ErrStepFailed: a step of the resource group failed; the group was
	// rolled back (start) or left partly stopped (stop).
	ErrStepFailed = errors.New("storage: resource group step failed")
	// ErrUnauthorized: a control request without the right bearer token.
	ErrUnauthorized = errors.New("storage: unauthorized")
	// ErrAgentNotJoined: no alive cluster member announces the backend's
	// agent (AnnouncedClient).
	ErrAgentNotJoined = errors.New("agent has not joined the cluster")
)
