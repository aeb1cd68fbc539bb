package media

import "errors"

var (
	// ErrNoPorts means no RTP/RTCP port pair is free or max_sessions is reached;
	// the proxy answers 503. Sessions already relaying are untouched.
	ErrNoPorts = errors.New("media: no free relay ports")
	// ErrBadSDP means a body could not be parsed or uses something the relay
	// cannot anchor (e.g. IPv6); the proxy passes the call un-anchored or answers 488.
	ErrBadSDP = errors.New("media: bad SDP")
	// ErrSessionKept comes with ErrBadSDP or ErrNoPorts when the Call-ID
	// already has a relay session, which the failed Anchor left as it was:
	// answering the re-offer 488 keeps the call's media on the relay, while
	// forwarding the body raw would move it off.
	ErrSessionKept = errors.New("media: relay session kept unchanged")
	// ErrNoSession means the Call-ID has no relay session.
	ErrNoSession = errors.New("media: no such session")
	// ErrClosed means the relay has been closed.
	ErrClosed = errors.New("media: relay closed")
)
