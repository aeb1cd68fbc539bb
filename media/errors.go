package media

import "errors"

var (
	// ErrNoPorts means no RTP/RTCP port pair is free or max_sessions is reached;
	// the proxy answers 503. Sessions already relaying are untouched.
	ErrNoPorts = noPortsError{}
	// ErrBadSDP means a body could not be parsed or uses something the relay
	// cannot anchor (e.g. IPv6); the proxy passes the call un-anchored or answers 488.
	ErrBadSDP = errors.New("media: bad SDP")
	// ErrSessionKept comes with ErrBadSDP or ErrNoPorts when the Call-ID
	// already has a relay session, which the failed Anchor left as it was:
	// answering the re-offer 488 keeps the call's media on the relay, while
	// forwarding the body raw would move it off.
	ErrSessionKept = sessionKeptError{}
	// ErrNoSession means the Call-ID has no relay session.
	ErrNoSession = errors.New("media: no such session")
	// ErrClosed means the relay has been closed.
	ErrClosed = errors.New("media: relay closed")
)

// The sentinels the proxy branches on also say what they are by a method, so
// that the proxy recognises them by behaviour without importing media.
type (
	noPortsError     struct{}
	sessionKeptError struct{}
)

func (noPortsError) Error() string     { return "media: no free relay ports" }
func (sessionKeptError) Error() string { return "media: relay session kept unchanged" }

// NoPorts marks ErrNoPorts.
func (noPortsError) NoPorts() {}

// SessionKept marks ErrSessionKept.
func (sessionKeptError) SessionKept() {}
