package health

import "errors"

// Sentinel errors callers may branch on with errors.Is.
var (
	// ErrInvalidTarget wraps every problem found in a Target list.
	ErrInvalidTarget = errors.New("invalid health target")
	// ErrProbeTimeout is a probe that got no answer within the timeout.
	ErrProbeTimeout = errors.New("probe timed out")
	// ErrAMIAuth is an AMI login the server refused.
	ErrAMIAuth = errors.New("ami authentication failed")
	// ErrAMIProtocol is an AMI peer that does not speak the manager protocol.
	ErrAMIProtocol = errors.New("ami protocol error")
	// ErrAMIClosed is returned by AMIClient.WaitReady when its Run has ended.
	ErrAMIClosed = errors.New("ami client stopped")
)
