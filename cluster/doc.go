// Package cluster replaces Heartbeat for hapbx: it keeps membership of the proxies and a
// witness, elects exactly one VIP holder by consensus, moves the VIP, and carries the
// proxies' shared state. The PBX nodes' storage agents join as plain members so the
// proxies find them. It knows nothing of SIP.
//
// One file per concern, each owning its part of the node's state and saying how it works:
//
//   - membership.go: memberlist membership, encrypted with secret_file; node metadata.
//   - leadership.go: raft with a static voter set, the quorum lease that decides who
//     holds the VIP, hand-overs, why there are never two holders, the failure cases.
//   - vip.go: adding, removing and announcing the VIP.
//   - state.go: state channels of opaque records (RegisterState, StateSource).
//   - publish.go: small values through the raft log (Publish, Watch, RepublishOnTakeover).
//   - agent.go: storage agents as members without a vote (RoleAgent, Agents).
//
// # What it does not do
//
// No fencing/STONITH; no dynamic voter changes (peers is the bootstrap configuration:
// changing it means wiping data_dir on every node); raft traffic is authenticated per
// connection but not encrypted (keep the raft port on the cluster LAN); no ICMP ping
// (targets are TCP connects, a refusal counts as reached).
//
// # Configuration (section cluster:)
//
// For an agent only name, bind, advertise (default: bind's address), peers[].gossip,
// secret_file and the memberlist timing keys (probe_*, suspicion_mult, gossip_interval,
// push_pull_interval, join_retry_max) are used and checked (ValidateAgent); the
// proxies' peers list can be copied as is.
//
//	name: node1                  # default: host name; must be listed in peers
//	bind: 0.0.0.0:7946           # memberlist UDP+TCP
//	advertise: ""                # default: peers[self].gossip
//	raft_bind: ""                # default: 0.0.0.0:<port of peers[self].raft>
//	peers:                       # all voters, identical on every node
//	  - {name: node1, gossip: 192.168.1.11:7946, raft: 192.168.1.11:7947}
//	  - {name: node2, gossip: 192.168.1.12:7946, raft: 192.168.1.12:7947}
//	  - {name: witness, gossip: 192.168.1.20:7946, raft: 192.168.1.20:7947}
//	secret_file: /etc/hapbx/cluster.key  # base64 16/24/32-byte keys, one per line
//	priority: 100
//	failback: false
//	failback_delay: 2s           # a returning proxy must be up this long first
//	data_dir: /var/lib/hapbx/cluster
//	ping_targets: []             # host:port, e.g. [192.168.1.1:80]
//	ping_interval: 1s
//	ping_timeout: 500ms
//	timing:
//	  heartbeat_timeout: 250ms
//	  election_timeout: 250ms
//	  leader_lease: 100ms        # <= heartbeat_timeout/2
//	  probe_interval: 200ms      # memberlist
//	  probe_timeout: 100ms
//	  suspicion_mult: 3
//	  gossip_interval: 50ms
//	  push_pull_interval: 15s
//	  join_retry_max: 5s
//	vip:                         # ignored by a witness
//	  address: 192.168.1.13/24
//	  interface: eth0
//	  garp_count: 3
//	  garp_interval: 200ms
//
// # Metrics
//
//	hapbx_cluster_vip_held                       gauge, 1 while the VIP is on our interface
//	hapbx_cluster_members                        gauge, alive memberlist members incl. self and agents
//	hapbx_cluster_leader_changes_total           counter, raft leader changes seen
//	hapbx_cluster_quorum                         gauge, 1 with a fresh lease (leader) or a known leader (follower)
//	hapbx_cluster_raft_leader                    gauge, 1 while raft leader
//	hapbx_cluster_garp_sent_total                counter, VIP announcements sent
//	hapbx_cluster_vip_release_failures_total     counter, failed VIP removal attempts (retried each tick)
//	hapbx_cluster_state_records_received_total   counter, shared-state records applied from peers
//
// An agent exports hapbx_cluster_members only.
package cluster
