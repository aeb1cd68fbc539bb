// Package storage is the node-local agent of a cold-standby PBX node: what
// Heartbeat's haresources line
//
//	drbdisk::r0 Filesystem::/dev/drbd0::/replica::ext3 IPaddr::... asterisk
//
// did, but ordered, time-bounded, monitored and fenced.
//
// The resource group is three steps, started in this order and stopped in
// reverse, each under its own timeout:
//
//  1. DRBD: `drbdadm primary RES` (`--force` only on an operator's forced
//     start) / `drbdadm secondary RES`; state from `drbdadm status RES` and
//     followed live with `drbdsetup events2 RES` (drbd-utils 9 formats).
//  2. File system: mount(2)/umount(2) of device on mount point with type and
//     options; state from /proc/self/mountinfo.
//  3. Service: a systemd unit (`systemctl start|stop|is-active`) or start
//     and stop commands; complete only when a ReadyChecker passes (the
//     health package's SIP OPTIONS + AMI FullyBooted check in production).
//
// A failed start rolls back: the failed step and those before it are stopped
// in reverse, and the report names the step and the reason.
//
// Never two primaries: unless the operator forces, Start refuses while DRBD
// shows a peer Primary (ErrPeerPrimary), the local disk not UpToDate
// (ErrDiskNotUpToDate) or an uncleared split brain (ErrSplitBrain), and
// when the peer is not connected it fences the peer first (ErrFenceFailed
// when that fails) unless the coordinator says it already did (below). A
// split brain is taken from events2 (the split-brain helper call) and from
// a StandAlone connection (what DRBD does on an unresolved split brain; the
// agent cannot tell it from an administrative disconnect, so it treats both
// as split brain). It is logged at error
// level, exported as hapbx_storage_split_brain and in the status, and blocks
// automatic promotion until ClearSplitBrain (POST
// /agent/v1/clear-split-brain) or a forced start.
//
// Fencing: CommandFencer runs a command (IPMI power-off, PDU, any script)
// whose exit status decides; PeerDisconnectFencer, used when no command is
// configured, waits until DRBD shows the peer disconnected plus a safety
// delay. The agent uses them before promoting with a disconnected peer; the
// failover coordinator uses them (with Client.DRBDState of the surviving
// agent as StateFunc) when an agent is unreachable.
//
// Who fences, once. In a failover the coordinator (the leader proxy, one
// move at a time) first stops the old holder's group, or, when its agent
// cannot confirm the group stopped with DRBD Secondary, fences the old node
// (its fence command, else the disconnection wait on the new node's DRBD).
// Only then does it ask the new node to start, and it says in the start
// request what it did: StartOptions.PeerDown, JSON "peer_down":{"node":
// "asterisk1", "how": "stopped"|"fenced"|"disconnected", "safety_delay_ns":
// N}. The agent then skips its own fencing, which would fence the same node
// a second time (and with the default, no fence command, wait safety_delay
// again). It trusts the word only as far as its own DRBD view agrees:
//
//   - The split-brain, peer-Primary and disk checks run first, with or
//     without the word: while DRBD shows a peer Primary the start is
//     refused (ErrPeerPrimary) whatever the coordinator says.
//   - The word covers one node, and DRBD names peers by connection name,
//     not backend name: it is used only when exactly one DRBD peer is not
//     connected (two-node DRBD); with more, the agent fences as before.
//   - "stopped" and "fenced" replace the agent's fencing: the old holder's
//     agent answered Secondary, or its power-off exited 0, moments before,
//     and only the leader starts a group, after such a stop or fence.
//   - "disconnected" is the coordinator's PeerDisconnectFencer, the same
//     wait as the agent's own: it counts towards the agent's safety_delay
//     (the agent waits the rest), and it never replaces a fence command
//     configured on the agent, which is stronger (it can stop a cut-off
//     peer that keeps writing; a wait cannot). A peer cut off but still
//     writing defeats that wait whoever runs it; DRBD then reports a split
//     brain on reconnection, which blocks automatic promotion (below).
//
// Without the word (a start not preceded by the coordinator's stop or
// fence: the initial start, a start through the agent API or by an older
// proxy; an invalid peer_down is refused by the API with 400 and ignored
// by Agent.Start) the agent fences as before. An older agent ignores the
// field and fences as before: slower, never less safe. A split brain
// (StandAlone, or the split-brain helper) still blocks every automatic
// start, word or not: stopping or fencing the old node does not reconcile
// diverged data, and a stale UpToDate disk after a replication-link loss is
// DRBD's own fencing policy's concern (resource-and-stonith), not the
// agent's.
//
// While the group is started, Run re-checks readiness, the DRBD role and the
// mount every monitor interval (2 s); a group that stopped serving turns "failed" and a new
// Start restarts what is missing (every start step is idempotent).
//
// Control API (Agent.Handler; `hapbx agent` serves it on `listen`; Client is
// its Go client): POST /agent/v1/start {"force":bool, "peer_down":{...}},
// POST /agent/v1/stop,
// POST /agent/v1/clear-split-brain (all with `Authorization: Bearer
// <token from token_file>`), GET /agent/v1/status (no token).
// AnnouncedClient is a Client whose URL is the one the backend's agent
// announces in the cluster, looked up on every call.
//
// Not here: choosing which node to start (the failover coordinator), agent
// membership (the cluster package), the VIP, DRBD configuration itself
// (drbd.conf, connect/disconnect, resync), split-brain recovery.
//
// Config keys (the `agent:` section; defaults in DefaultConfig):
//
//	listen: 127.0.0.1:7790            control API address ("" = not served)
//	token_file: /etc/hapbx/agent.token
//	drbd: {resource: r0, drbdadm: drbdadm, drbdsetup: drbdsetup, timeout: 10s}
//	filesystem: {device: /dev/drbd0, mount_point: /replica, type: ext3, options: "", timeout: 30s}
//	service: {unit: asterisk.service | start_command: ..., stop_command: ..., timeout: 30s}
//	ready_timeout: 60s                readiness wait after the service started
//	fence: {command: "", timeout: 30s, safety_delay: 5s}
//
// Metrics:
//
//	hapbx_storage_step_duration_seconds{step,op}  histogram; step drbd|filesystem|service, op start|stop|rollback
//	hapbx_storage_group_state                     0 stopped, 1 starting, 2 started, 3 stopping, 4 failed
//	hapbx_storage_failures_total{step}            drbd|filesystem|service|precheck|fence|monitor
//	hapbx_storage_split_brain                     1 while a split brain is uncleared
//	hapbx_storage_drbd_disk_uptodate              1 while the local disk is UpToDate
//	hapbx_storage_drbd_peer_disk_uptodate         1 while every peer's disk is UpToDate
package storage
