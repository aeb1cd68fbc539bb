package proxy

import "errors"

// The collaborators' errors the proxy answers differently, recognised by a
// marker method (the implementation's sentinel has it), so that the proxy
// imports neither the registrar nor the relay.
type (
	// UnknownAORError from a Locator: the AOR was never registered (404).
	UnknownAORError interface{ UnknownAOR() }
	// NoBindingError from a Locator: the AOR has no live binding (480).
	NoBindingError interface{ NoBinding() }
	// NoPortsError from a MediaAnchor: no relay ports are left (503 to a new call).
	NoPortsError interface{ NoPorts() }
	// SessionKeptError from a MediaAnchor: the call's relay session was
	// left unchanged (488 to its re-offer).
	SessionKeptError interface{ SessionKept() }
	// NoSessionError from MediaAnchor.Release: the call was not anchored.
	NoSessionError interface{ NoSession() }
)

// is reports whether err's chain holds an error with the marker M.
func is[M any](err error) bool {
	var m M
	return errors.As(err, &m)
}
