// Package cluster replaces Heartbeat for hapbx: it keeps membership of the proxies and a
// witness, elects exactly one VIP holder by consensus, moves the VIP, and carries the
// proxies' shared state. The PBX nodes' storage agents join as plain members so the
// proxies find them. It knows nothing of SIP.
//
// # Parts
//
//   - Membership: hashicorp/memberlist (SWIM gossip), always encrypted with the keyring
//     of secret_file (AES-GCM; first key encrypts, all decrypt). A node with a wrong key
//     cannot join and logs "cannot join the cluster" at error level with the hint
//     "gossip key does not match the peers' (check secret_file)"; the peers log the
//     decryption failures with the same hint. Joining retries with exponential backoff
//     (100 ms .. timing.join_retry_max) and keeps re-joining lost peers afterwards.
//     memberlist's and raft's loggers are bridged to zap (logbridge.go).
//   - Leadership: hashicorp/raft with a static voter set (every entry of peers: the
//     proxies and the witness), bootstrapped identically on every node when data_dir is
//     empty. Term, vote and log live in data_dir (raft-boltdb v2 on bbolt): a voter that
//     forgot its vote could vote twice in a term. Transport: raft's NetworkTransport
//     over TCP on peers[self].raft (what raft.NewTCPTransport builds), with a stream
//     layer that makes both ends prove, by HMAC challenge-response, that they hold a key
//     of secret_file (raftauth.go): a host that merely reaches the port cannot vote or
//     append entries. Raft traffic is authenticated at connect, not encrypted.
//   - The VIP (type VIP): netlink add/remove, then a gratuitous ARP (request and reply)
//     for IPv4 or an unsolicited overriding neighbour advertisement for IPv6, sent at once
//     and repeated vip.garp_count-1 times every vip.garp_interval. A VIP left on the
//     interface by a crash is removed in Start before the node joins
//     (TestStaleVIPRemovedAtStart). Only one VIP change runs at a time: the leader
//     loop, Close and the final shutdown take the same lock, and once Close has begun
//     no Acquire can follow (TestCloseSerializesVIP).
//   - Shared state: named channels (RegisterState) of opaque records; see below.
//   - Agents (RoleAgent, `hapbx agent` with a cluster: section): memberlist members
//     with the same keyring, so a wrong key cannot join either and says so the same
//     way. Never raft servers (not in peers, no raft transport, no data_dir), never VIP
//     holders or leadership transfer targets (transfers go to role "proxy" members
//     only), never sent shared state (RegisterState is refused on an agent, and
//     Broadcast and full pushes skip members of role "agent" whatever their metadata
//     says). An agent's metadata (JSON, well under memberlist's 512 bytes, checked by
//     New) carries {"r":"agent","b":BACKEND,"api":URL}, given by WithAgentInfo. A proxy
//     reads them with Agents(): name, backend, API URL, alive. An agent joins the
//     gossip addresses of its peers (names optional) with the same backoff and keeps
//     re-joining; it starts at once (no heartbeat_timeout of silence: it casts no
//     vote). Its arrival or death changes no quorum, term or leader
//     (TestAgentJoinsWithoutVoting).
//   - Published values: Publish(key, value) on the raft leader goes through the raft log
//     (consistent, persisted, replicated to all voters); Get reads the local copy (what
//     this node has applied: committed values, possibly one commit behind the leader);
//     Watch(key) delivers the current value and every later committed change, snapshot
//     restores included (latest value only if the reader lags). Meant for the failover
//     coordinator's active-backend decision, not for bulk data. A new leader does not
//     know the app's decision; RepublishOnTakeover(key, fn) makes a proxy publish fn()
//     each time it takes the VIP, after a raft barrier (so it compares against
//     everything earlier leaders committed) and only if the value differs, retried
//     while it holds the VIP (TestRepublishOnTakeover).
//
// # Who holds the VIP
//
// A node holds the VIP iff it is a proxy, it is the raft leader, its quorum lease is
// fresh, it reaches at least one of ping_targets (when configured) and it is not
// handing leadership over. The quorum lease: every timing.leader_lease/4 the leader
// issues raft's VerifyLeader (a heartbeat round); the lease is fresh while the issue
// time of the newest successful round is less than timing.leader_lease ago. This check
// runs in its own goroutine, outside raft's main loop, so a raft loop stuck on a disk
// write also drops the VIP. raft's own LeaderLeaseTimeout (which only makes raft step
// down) is set to heartbeat_timeout, the maximum raft allows, so late acknowledgements
// under CPU starvation cost the VIP for a moment but not a whole new election.
//
// ping_targets are Heartbeat's ping nodes on top of the witness, not instead of it: a
// proxy that cannot reach any of them may not hold the VIP, but they cast no vote. Two
// proxies cut apart that both still reach the gateway would each count it, so a pair
// with ping targets alone cannot agree; raft needs the third voter (New refuses fewer).
//
// A witness that wins an election, a leader that lost its ping targets, and (with
// failback: true) a leader that sees a ping-healthy proxy of higher priority alive for
// failback_delay,
// release the VIP first and then transfer raft leadership to the best proxy (highest
// priority, then lowest name; priorities are gossiped in memberlist node metadata).
// With failback: false the current holder keeps the VIP when a higher-priority proxy
// returns.
//
// "Holds" means the address is on the interface as far as the node knows: IsLeader,
// LeaderCh, Status.vip_held and the node's gossiped metadata ("v") all follow the
// Acquire/Release outcome, not the raft decision. A removal that fails leaves the node
// holding: the leader loop retries it every lease tick until the kernel confirms the
// address is gone, logs "cannot remove the VIP" at error level once per streak of
// failures and counts every failed attempt in hapbx_cluster_vip_release_failures_total.
// Meanwhile the node starts no leadership transfer (failback, ping loss, Close): that
// would knowingly make a second holder. If raft elects the other proxy anyway (this
// node lost its quorum), both hold the address until the removal succeeds; the timing
// argument below assumes removals succeed (TestReleaseFailureRetried).
//
// Status.leader is the raft leader; Status.vip_holders lists the alive members whose
// metadata says they hold the VIP (this node from its own state): normally one, none
// while the VIP moves or while the leader may not hold it (lease lapsed, ping targets
// lost, witness), two only with a failing removal. Metadata travels by gossip, so
// another node's entry lags by a gossip round or so (TestStatusVIPHolders).
//
// # Timing argument (why there are never two holders)
//
// Defaults: heartbeat_timeout H = 250 ms, election_timeout = 250 ms, leader_lease
// L = 100 ms, lease check tick = L/4 = 25 ms. Validate demands L <= H/2.
//
// Every raft RPC, heartbeats included, has an I/O deadline of rpc = H - L - tick - H/10
// (= 100 ms) from the moment it is sent.
//
// Let t be the issue time of the holder's newest successful VerifyLeader. Success means
// a majority of voters (the holder included) acknowledged a heartbeat that was sent after
// t, or that was already in flight at t and so was sent after t - rpc. Each of those
// voters therefore set its "last contact" to a time >= t - rpc. The holder drops the VIP
// at the latest at t + L + tick (+ the netlink call, ~1 ms) = t + 125 ms.
//
// A new leader needs (pre-)votes from a majority, which shares at least one voter X with
// the majority that acknowledged t. X refuses (pre-)votes while it knows a leader, and
// forgets the leader only when its heartbeat timer finds no contact for H; if X is the
// candidate itself, it does not start an election before H without contact. So no new
// leader exists before t - rpc + H = t + 150 ms, at least 25 ms after the old holder
// released the VIP, even in the worst case of a 100 ms heartbeat round trip straddling
// t. In the usual case (round trips well under a millisecond) t - rpc is really ~t and
// the margin is ~125 ms, absorbing scheduling and GC pauses of the old holder. A holder
// whose whole process or machine is frozen longer (SIGSTOP, VM pause) cannot run its
// lease check; this library has no fencing for that case. Validate enforces L <= H/2,
// which keeps rpc >= 0.275 H > 0.
//
// A voter that restarts forgets whom it followed and would grant votes at once; Start
// therefore waits H before it starts raft, so a vote it grants comes at least H after
// any acknowledgement it gave in its previous life.
//
// The one raft path that bypasses the "I have a leader" refusal is leadership transfer
// (TimeoutNow). hapbx only starts a transfer after releasing the VIP itself (failback,
// ping loss, Close); a witness never holds it.
//
// Failover time after the holder dies: the followers' timers fire between H and 3H after
// the last heartbeat (raft re-arms a random [H, 2H) timer), then one pre-vote and one vote
// round trip and an fsync; if the witness wins, one leadership transfer follows (a few
// ms). Then a VerifyLeader round and the VIP add. When the surviving proxy and the
// witness time out within a few ms of each other, each refuses the other's pre-vote
// (it still knows the dead leader) and the proxy retries after a random
// [election_timeout, 2x) wait: that is the tail. Measured in network namespaces on a
// shared, loaded 2-core machine (TestFailoverFigures, HAPBX_BENCH=1): median 0.55-0.7 s,
// most runs' max 0.7-1.1 s, single outliers up to ~2 s.
//
// # Failure cases
//
//   - Holder dies (power, SIGKILL): the other proxy and the witness elect the other
//     proxy within about 0.3–0.8 s; it adds the VIP and sends gratuitous ARP, so clients'
//     ARP entries follow at once (TestFailoverSIGKILL). If only the hapbx process died and
//     the host lives, the address stays on its interface until hapbx restarts (Start
//     removes it) — deploy the systemd unit with
//     ExecStopPost=-/usr/sbin/ip addr del <vip> dev <interface> so a crashed process does
//     not leave a second owner answering ARP.
//   - Pair cut apart, both see the witness: the holder keeps its quorum with the witness
//     and keeps the VIP; the witness refuses the other proxy's pre-votes (it has a
//     leader), so nothing moves and terms do not inflate. Shared-state broadcasts
//     between the two stop; a full push runs when they see each other again
//     (TestPartition).
//   - Holder cut from everyone: its lease runs out and it releases the VIP after at most
//     L + tick; the others elect a new holder after at least H (TestPartition samples
//     every 50 ms in both namespaces: never two holders). Healed, the old holder becomes
//     a follower; failback decides whether it takes the VIP back.
//   - Witness dies: the two proxies keep a quorum of 2 of 3; nothing moves. A second
//     failure then leaves no quorum: restore the witness.
//   - Two nodes die: the survivor has no quorum and holds no VIP (released within L if it
//     held it). The service is down until a second voter returns: that is the price of
//     never having two holders. There is no manual override in this package.
//   - Holder loses its ping targets: it releases the VIP and hands leadership to a proxy
//     that reaches them; if none does, no node holds the VIP.
//   - Removing the VIP fails (netlink error): the node keeps reporting it holds the VIP,
//     retries every lease tick and logs/counts it (see Who holds the VIP); no hand-over
//     starts from it. On Close the removal is tried once more in shutdown; after that
//     only ExecStopPost (hapbx release-vip) can remove it.
//
// # Shared state
//
// RegisterState(name, src) adds a channel; Broadcast(name, record) queues one change
// for every other alive member that has state channels itself (announced in its
// memberlist metadata; a witness normally has none). Each peer has an outbox drained by its own goroutine
// into one message per channel over memberlist's encrypted TCP stream (chunks of at most
// 1 MiB: memberlist refuses encrypted stream messages above 20 MiB, which is also why
// its push/pull LocalState is not used for bulk state). When memberlist reports a member
// up (join, restart, healed partition), every node pushes the full Snapshot of every
// channel to it the same way. A failed send or an overflowing outbox (200k records)
// drops the batch and resends the full state to that peer, retried every second while
// it is alive. So records arrive at least once, possibly twice and out of order:
// StateSource.Apply must be idempotent and resolve conflicts (version/expiry in the
// record). Figures (TestStateSyncOnJoin, TestBroadcastFigures with HAPBX_BENCH=1):
// 100k records of 300 bytes reach a joining node in ~0.15 s over veth; bursts of
// broadcasts arrive at >100k records/s on loopback. memberlist's TransmitLimitedQueue
// (UDP gossip) was tried first and dropped: it lost ~10% of a 2000-record burst.
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
