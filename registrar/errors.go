package registrar

import "errors"

// Sentinel errors the proxy branches on with errors.Is.
var (
	// ErrUnknownAOR: no binding was ever known for the AOR; answer 404.
	ErrUnknownAOR = errors.New("registrar: unknown address of record")
	// ErrNoBinding: the AOR is known but has no live binding; answer 480.
	ErrNoBinding = errors.New("registrar: no live binding")
	// ErrFull: max_bindings reached, a new binding was refused; answer 503.
	ErrFull = errors.New("registrar: binding table full")
	// ErrAORFull: max_bindings_per_aor reached, a new binding of the AOR
	// was refused; answer 503.
	ErrAORFull = errors.New("registrar: too many bindings for the address of record")
	// ErrNotRefreshable: a REGISTER cannot be answered from the store (no
	// matching binding, or not a plain refresh); answer 503 with Retry-After.
	ErrNotRefreshable = errors.New("registrar: cannot answer REGISTER from store")
	// ErrInvalid: the REGISTER/2xx pair does not describe a registration.
	ErrInvalid = errors.New("registrar: invalid REGISTER or response")
	// ErrClosed: the registrar was closed.
	ErrClosed = errors.New("registrar: closed")
)
