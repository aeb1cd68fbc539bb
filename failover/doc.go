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
//   - Routable(name), OnlyRoutable(name): whether Candidates lists name
//     (alone), without building the list.
//   - Changed(): a channel closed at the next health change or reload, for
//     a request held for a backend to wait on instead of polling.
//   - Active(): the active backend in active-standby mode.
//   - Subscribe(ctx): BackendDown events (health lost a routable backend;
//     the proxy ends its dialogs), BackendRemoved events (a reload dropped
//     it; it still runs, its calls go on) and ActiveChanged events.
//   - WithEvents, WithColdEvents: changes of the active backend and the cold
//     standby moves also go to an event.Sink (the status page's last events).
//
// Routing modes:
//
//   - active-standby: the active backend is the first up backend in
//     configuration order. With failback: true (Heartbeat's auto_failback)
//     a returning preferred backend takes the role back; with false, the
//     current active keeps it while it is up. That stickiness starts once
//     start-up has settled (every backend has a first verdict, or
//     WithStartupSettle's time, rise probes long, has passed): until then
//     the highest-priority up backend is chosen, so the standby answering
//     its first probes a few milliseconds earlier does not keep the role
//     for good. A suspect active backend keeps
//     the role (the next probes settle a suspicion within a fraction of a
//     second) but Candidates lists it after the up backends meanwhile.
//   - balance: rendezvous (highest random weight) hashing of the key (the
//     Call-ID) over the up backends: stable across proxies and restarts; a
//     key moves only when its backend is lost, and comes back with it.
//
// Cold standby (Coordinator, cold.go): one resource group (DRBD Primary,
// file system, Asterisk) runs on one PBX node at a time, driven by each
// node's storage agent (package storage). The Coordinator
//
//   - learns the holder from the agents' status (polled every
//     poll_interval) and, with initial_start, starts the group on the first
//     fit node when it runs nowhere (every agent answered, none Primary);
//   - when the holder's backend goes from routable to down in health (or
//     its agent reports the group failed), picks the next fit node (agent
//     reachable, no split brain, disk UpToDate), asks the holder's agent to
//     stop, and when that fails or the node stays Primary, fences the node
//     (ColdNode.Fence, else storage.PeerDisconnectFencer on the new node's
//     DRBD state); only then asks the new node's agent to start, telling
//     it which node was stopped or fenced and how (storage.PeerDown, so its
//     agent does not fence that node a second time), and waits until
//     health sees the backend up, so the Selector routes there;
//   - never starts a node before the old one is stopped or fenced: a failed
//     fencing, a split brain or no fit node blocks the move (retried every
//     10 s; ColdStatus.Blocked says why);
//   - moves the group on request (Switchover: hb_standby / hb_takeover),
//     which requires a clean stop and never fences;
//   - acts only while IsLeader (WithLeader) is true; followers only watch.
//     A holder lost while this proxy did not lead is moved once it leads
//     again, if it is still the holder, still down in health and no agent
//     is stopping or starting the group (the former leader's move).
//     Without WithLeader it always acts. hapbx run passes the cluster's VIP
//     leadership (always true for a proxy without a cluster: one cold proxy
//     only).
//
// Agents are reached through ColdNode.Agent. hapbx run gives each node a
// storage.Client at backends[].agent.url, or, when that is empty and the
// proxy is clustered, an Agent that looks up on every call the URL
// announced by the alive service member of the cluster whose backend is the
// node's name (cluster.Services). An agent that has not joined, or has been
// declared dead, answers with an error: the node counts as unreachable,
// exactly like an agent that does not answer, so the initial start waits
// for every agent and a move fences the old node first.
//
// What it does not do: probe backends (package health), run DRBD, mounts or
// services (storage's agent does), discover agents itself (the caller's
// Agent does), or forward anything.
//
// Configuration:
//
//	routing: active-standby   # or balance
//	failback: true
//	cold:                     # ColdConfig
//	  enabled: false          # true: cold standby
//	  request_timeout: 2s
//	  stop_timeout: 60s
//	  start_timeout: 120s
//	  up_timeout: 30s
//	  poll_interval: 1s
//	  initial_start: true
//
// Metrics:
//
//	hapbx_failover_active{backend}          1 for the active backend, else 0
//	hapbx_failover_switches_total           times the active role moved between two backends
//	hapbx_failover_cold_moves_total{result} resource group moves, ok|failed
//	hapbx_failover_cold_fences_total{result} fencings by the coordinator, ok|failed
//	hapbx_failover_cold_blocked             1 while automatic promotion is blocked
//	hapbx_failover_cold_split_brain{node}   1 while a node's agent reports a split brain
//	hapbx_failover_cold_move_seconds        backend down (or request) -> group started
//	hapbx_failover_cold_overhead_seconds    that minus the service's own start-to-ready time
package failover
