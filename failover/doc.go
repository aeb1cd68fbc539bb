// Package failover decides which backend new requests go to: Selector is
// the one place that knows the active backend.
//
// It reads backend health (a HealthSource such as *health.Checker) and
// answers the proxy's questions:
//
//   - Candidates(key): the backends to try for a new request, in order: the
//     chosen one, then the other up backends (for retry on 408/503/transport
//     error), then suspect ones. Down and unknown backends are never listed;
//     an empty list means "answer 503".
//   - Active(): the active backend in active-standby mode.
//   - Subscribe(ctx): BackendDown events (a routable backend was lost; the
//     proxy ends its dialogs) and ActiveChanged events.
//
// Routing modes:
//
//   - active-standby: the active backend is the first up backend in
//     configuration order. With failback: true (Heartbeat's auto_failback)
//     a returning preferred backend takes the role back; with false, the
//     current active keeps it while it is up (so at start, the first backend
//     to come up keeps the role). A suspect active backend keeps
//     the role (the next probes settle a suspicion within a fraction of a
//     second) but Candidates lists it after the up backends meanwhile.
//   - balance: rendezvous (highest random weight) hashing of the key (the
//     Call-ID) over the up backends: stable across proxies and restarts; a
//     key moves only when its backend is lost, and comes back with it.
//
// What it does not do: probe backends (package health), drive promotions of
// cold standbys (storage, later), or forward anything.
//
// Configuration:
//
//	routing: active-standby   # or balance
//	failback: true
//
// Metrics:
//
//	hapbx_failover_active{backend}   1 for the active backend, else 0
//	hapbx_failover_switches_total    times the active role moved between two backends
package failover
