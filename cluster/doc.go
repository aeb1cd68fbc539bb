// Package cluster replaces Heartbeat for hapbx: it keeps membership of the proxies and a
// witness, elects exactly one VIP holder by consensus, moves the VIP, and carries the
// proxies' shared state. Members that announce a service (the PBX nodes' storage
// agents) join without a vote so the proxies find them. It knows nothing of SIP.
//
// One file per concern, each owning its part of the node's state and saying how it works:
//
//   - membership.go: memberlist membership, encrypted with secret_file; node metadata.
//   - leadership.go: raft with a static voter set, the quorum lease that decides who
//     holds the VIP, hand-overs, why there are never two holders (the timing
//     argument: the holder's lease runs out before any follower of the majority that
//     last acknowledged it may vote for another), the failure cases.
//   - lease.go: raft's transport noting when each follower's acknowledged heartbeat
//     was sent, what the lease counts from.
//   - vip.go: adding, removing and announcing the VIP.
//   - state.go: state channels of opaque records (RegisterState, StateSource).
//   - publish.go: small values through the raft log (Publish, Get, RepublishOnTakeover).
//   - service.go: members without a vote that announce a service (RoleService, Services).
//
// # What it does not do
//
// No fencing/STONITH; no dynamic voter changes (peers is the bootstrap configuration:
// changing it means wiping data_dir on every node); raft traffic is authenticated per
// connection but not encrypted (keep the raft port on the cluster LAN); no ICMP ping
// (targets are TCP connects, a refusal counts as reached).
//
// WithEvents reports this node's VIP additions and removals, raft leader changes and
// members joining or lost to an event.Sink (the status page's last events).
//
// # Configuration (section cluster:)
//
// Keys, annotated with their defaults, in deploy/hapbx.example.yaml (DefaultConfig):
// name, bind, advertise, raft_bind, peers[] {name, gossip, raft}, secret_file,
// priority, failback, failback_delay, data_dir, ping_targets, ping_interval,
// ping_timeout, timing {heartbeat_timeout, election_timeout, leader_lease (at most
// heartbeat_timeout less a tenth of it, heartbeat_timeout/20 and 1 ms),
// probe_interval, probe_timeout, suspicion_mult, gossip_interval,
// push_pull_interval, join_retry_max}, vip {address, interface,
// garp_count, garp_interval} (ignored by a witness).
//
// For a service member only name, bind, advertise (default: bind's address), peers[].gossip,
// secret_file and the memberlist timing keys (probe_*, suspicion_mult, gossip_interval,
// push_pull_interval, join_retry_max) are used and checked (ValidateService); the
// proxies' peers list can be copied as is.
//
// # Metrics
//
//	hapbx_cluster_vip_held                       gauge, 1 while the VIP is on our interface
//	hapbx_cluster_members                        gauge, alive memberlist members incl. self and service members
//	hapbx_cluster_leader_changes_total           counter, raft leader changes seen
//	hapbx_cluster_quorum                         gauge, 1 with a fresh lease (leader) or a known leader (follower)
//	hapbx_cluster_raft_leader                    gauge, 1 while raft leader
//	hapbx_cluster_garp_sent_total                counter, VIP announcements sent
//	hapbx_cluster_vip_release_failures_total     counter, failed VIP removal attempts (retried each tick)
//	hapbx_cluster_state_records_received_total   counter, shared-state records applied from peers
//
// A service member exports hapbx_cluster_members only.
package cluster
