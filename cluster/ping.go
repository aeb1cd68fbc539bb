package cluster

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
)

// reachable reports whether at least one target answers a TCP connect within timeout.
// A refused connection counts: the host answered (RST), so the path is up. This needs no
// privileges and no ICMP; point targets at the default gateway or a switch management
// address, any port.
func reachable(ctx context.Context, targets []string, timeout time.Duration) bool {
	if len(targets) == 0 {
		return true
	}
	res := make(chan bool, len(targets))
	for _, t := range targets {
		go func(t string) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(ctx, "tcp", t)
			if err == nil {
				c.Close()
				res <- true
				return
			}
			res <- errors.Is(err, syscall.ECONNREFUSED)
		}(t)
	}
	ok := false
	for range targets {
		if <-res {
			ok = true
		}
	}
	return ok
}
