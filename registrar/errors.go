package registrar

import "errors"

// Sentinel errors; callers branch with errors.Is.
var (
	// ErrUnknownAOR: no binding was ever known for the AOR; answer 404.
	ErrUnknownAOR = unknownAORError{}
	// ErrNoBinding: the AOR is known but has no live binding; answer 480.
	ErrNoBinding = noBindingError{}
	// ErrFull: max_bindings reached, a new binding was refused; answer 503.
	ErrFull = errors.New("registrar: binding table full")
	// ErrNotRefreshable: a REGISTER cannot be answered from the store (no
	// matching binding, or not a plain refresh); answer 503 with Retry-After.
	ErrNotRefreshable = errors.New("registrar: cannot answer REGISTER from store")
	// ErrInvalid: the REGISTER/2xx pair does not describe a registration.
	ErrInvalid = errors.New("registrar: invalid REGISTER or response")
	// ErrClosed: the registrar was closed.
	ErrClosed = errors.New("registrar: closed")
)

// The lookup sentinels also say what they are by a method, so that the proxy
// recognises them by behaviour without importing registrar.
type (
	unknownAORError struct{}
	noBindingError  struct{}
)

func (unknownAORError) Error() string { return "registrar: unknown address of record" }
func (noBindingError) Error() string  { return "registrar: no live binding" }

// UnknownAOR marks ErrUnknownAOR.
func (unknownAORError) UnknownAOR() {}

// NoBinding marks ErrNoBinding.
func (noBindingError) NoBinding() {}
