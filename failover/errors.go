package failover

import "errors"

// ErrInvalidBackends is a backend list that is empty or names one twice.
var ErrInvalidBackends = errors.New("invalid backend list")
