package proxy

import "errors"

// Errors of a MediaAnchor the proxy answers differently, recognised by a
// marker method of the implementation's sentinel, so that the proxy does not
// import the relay.
type (
	// NoPortsError: no relay ports are left (503 to a new call).
	NoPortsError interface{ NoPorts() }
	// SessionKeptError: the call's session was left unchanged (488 to its re-offer).
	SessionKeptError interface{ SessionKept() }
	// CodecMismatchError: two calls' phones use different codecs; they
	// cannot be joined (takeover.go).
	CodecMismatchError interface{ CodecMismatch() }
)

// is reports whether err's chain holds an error with the marker M.
func is[M any](err error) bool {
	var m M
	return errors.As(err, &m)
}
