// Package media anchors RTP on the proxy: it rewrites SDP so both call legs
// send media to the relay, relays RTP/RTCP between them, and can hand its
// sessions to a standby proxy.
//
// # What it does
//
// A call (keyed by Call-ID) has two legs: A, where the dialog's initial
// INVITE came from, and B, the callee. Every m= line of the call becomes a
// stream with one RTP/RTCP port pair facing each leg (RTP even, RTCP = RTP+1).
// Relay.Anchor takes any SDP body one leg sent (INVITE, 18x, 200, ACK late
// offer, UPDATE, re-INVITE, in either direction) and returns it rewritten for
// the other leg: o=, c= (session and media level), m= port and a=rtcp point at
// the relay address and the ports facing the receiver (o= of any address
// type, IPv6 included, becomes IN IP4 relay); codecs and direction
// attributes are left alone; ICE attributes (a=candidate, ice-ufrag, ice-pwd,
// ice-options, ice-lite, remote-candidates, end-of-candidates) are removed at
// session and media level: the relay is the media endpoint of both legs and
// candidates naming a phone would route around it. Held streams (c=0.0.0.0)
// keep 0.0.0.0 so hold still means hold, but their m= port and a=rtcp name
// the relay's port pair, which a held stream keeps; disabled streams (port 0)
// stay disabled, lose a=rtcp and have their c= pointed at the relay, so no
// phone address or port reaches the other leg. a=rtcp-mux (and
// rtcp-mux-only) is removed in both directions: RFC 5761 muxes RTP and RTCP
// only when offer and answer both carry it, so each phone then sends RTCP to
// the relay's separate RTCP port, where it is relayed; RTCP arriving on an RTP
// port is dropped (reason "not_rtp"). Re-INVITEs reuse the session's
// ports: hold, resume, codec change and new remote ports never allocate or
// leak. Relay.Release ends a session on BYE, CANCEL or a final error.
//
// # Latching (symmetric RTP) and allowed sources
//
// The address in a leg's SDP is a hint: the relay sends there until that leg
// has sent a valid packet. Media is accepted for a leg only from its allowed
// addresses: the address its SDP names for that stream (c=, a=rtcp) and the
// IP the leg's SDP-carrying SIP message came from (Relay.AnchorFrom: the
// INVITE's source for the caller, the answering 18x/200's source for the
// callee; a phone behind NAT names its private address in SDP and sends RTP
// from the public address its SIP comes from), any port (NAT picks it).
// Every other source is dropped and counted (reason "stranger"), also when
// it comes first, in any window, and however much it sends: a stranger that
// learnt a call's relay port (RTP bleed) changes neither the latch nor the
// forwarded stream. A leg whose SDP is not known yet accepts nothing.
//
// The first valid RTP packet (RTCP on the RTCP port) from an allowed address
// latches its source address, and from then on the relay accepts packets on
// that socket only from that source and sends the other leg's media back to
// it, which traverses NAT. The latch moves only to an allowed address, and
// only
//   - within learn_window (default 2s) of the first latch, to the exact
//     endpoint the SDP names: another sender at an allowed address that came
//     first (a stale port of the phone, a device behind the same NAT) loses
//     the leg to it, or
//   - when an SDP from that leg (re-INVITE, UPDATE) changes the leg's
//     endpoint (address or port): the latch is cleared and the next valid
//     packet from the (new) allowed addresses latches, or
//   - when the latched source has been silent for relatch_after (default 5s):
//     a phone whose NAT binding changed recovers on its own, as long as its
//     public address stays; a phone that roamed to another address recovers
//     with its next re-INVITE or UPDATE. RTP and RTCP of a leg are one
//     stream: since RTCP is sent only every 2.5-7.5s (RFC 3550), the RTCP
//     port may re-latch only when the leg's RTP has also been silent for
//     relatch_after, or when the leg's RTP has already re-latched to the new
//     source's host.
//
// Only a sender at a leg's allowed addresses (the phone's own host or NAT,
// or the host its SDP names) can therefore take the leg, in the windows
// above. Relay.Anchor, without a signalling source, allows the SDP address
// only (a later AnchorFrom of the leg adds its source; an Anchor keeps it).
// The allowed addresses are replicated (StreamRecord.Signal), so the twin
// applies the same rule after a failover; a record without them (from an
// earlier build) allows the latched source's address.
//
// Datagrams that are not RTP (version 2, complete header, CSRC, extension and
// padding lengths) on an RTP port, or not RTCP (version 2, length multiple of
// 4, type 192-223) on an RTCP port, are dropped (reason "not_rtp").
//
// # Data path
//
// One socket per relay port, created with raw syscalls (non-blocking,
// IP_FREEBIND). Sockets are spread over a few workers (GOMAXPROCS by default);
// each session belongs to one worker, so its counters are touched by one
// goroutine only. A worker owns an epoll set; the epoll descriptor itself is
// registered with Go's netpoller, so an idle worker parks as a goroutine
// instead of holding an OS thread in epoll_wait (a blocking syscall loses its
// P after 20µs and pays futex hand-offs on each wake-up: with a blocking
// epoll_wait the relay used 18µs of CPU per packet at 100 calls, 12µs with the
// netpoller). A ready socket is drained with recvmmsg (32 datagrams a call)
// and the accepted datagrams leave through the peer socket with one sendmmsg.
// Nothing is allocated per packet; per-packet accounting is plain increments
// under the worker mutex the data path already holds (one lock per epoll
// wake-up), summed by a Prometheus collector at scrape time.
//
// Profile (pprof and perf of the relay child in media/relaybench, 1000 calls,
// 100k packets/s, loopback, machine shared with other jobs): about 98% of the
// relay's CPU is in the kernel: sendmmsg 72%, recvmmsg 16%, epoll_wait 4%;
// the Go runtime (netpoll, scheduling) under 3%, and the relay's own code
// (map lookup, header check, latching, RFC 3550 statistics) under 3%. On
// loopback sendmmsg also runs the receiver's softirq (net_rx_action, 25% of
// the relay's CPU) and wakes the receiving socket (sock_def_readable, 7%), so
// a relay sending to a real NIC pays roughly a third less per packet.
//
// Once the relay sends to a latched source it opens a second socket on the
// same port, connected to that source (SO_REUSEPORT set only while it binds,
// so no other socket can join the port): the kernel keeps its route, a send
// carries no address, and the source's datagrams are found by the full
// address pair. Everything else (strangers, a new source after
// relatch_after) still arrives on the unconnected socket, so strangers are
// dropped and counted and re-latching works as before; a re-latch reconnects
// the second socket. A latched port therefore holds two descriptors; the
// connected ones are capped so that RLIMIT_NOFILE keeps room for one bound
// socket per port of the range plus 1024 (with a 20000 limit and the default
// range of 10001 ports: 8975 connected sockets, i.e. all of 2000 calls).
// Beyond the cap, or if the connected socket cannot be opened, the relay
// sends from the unconnected one with the address and retries after 1s.
// On loopback this saves 0-4% of the relay's CPU (the route lookup; within
// the noise of a shared machine).
//
// Floor (2-core VM, loopback, measured): one connected sendto including the
// loopback delivery costs 2.5-2.8µs and one recvfrom 0.65µs when nobody
// sleeps on the receiving socket; a send that wakes a thread asleep in
// epoll_wait on the other vCPU costs the sender about 12µs. Under the
// relaybench load both the relay and the generator pay 6-8µs per datagram
// for one receive plus one send, and the relay is within a few percent of
// the generator's own cost. Tried and not kept (no gain or worse): polling
// the epoll set every 0.5-1ms instead of waking per readiness, spinning
// 10-30µs before parking, sendto/one-datagram reads instead of
// sendmmsg/recvmmsg batches of one, 1 or 4 workers instead of 2; GOMAXPROCS=1
// saves about 5% CPU but p99 latency exceeds 100ms. One socket per port
// means at least one recvmmsg and one sendmmsg per packet at 50 packets/s
// per port; further gains need fewer system calls or no socket per packet,
// e.g. io_uring or an eBPF/nftables redirect, which are out of scope.
//
// Per stream and direction the relay counts packets, bytes, RTCP packets,
// loss from RTP sequence gaps (RFC 3550 A.1/A.3) and interarrival jitter
// (RFC 3550 A.8, clock rate from the SDP), shown by Relay.Snapshot. The same
// figures feed metrics without per-call labels: loss is added to
// hapbx_media_lost_packets_total{leg} as it grows (a late packet lowers RFC
// 3550 loss, the counter keeps its high-water mark; a new SSRC or sequence
// restart starts afresh), and each RTP direction's jitter is observed once
// in hapbx_media_jitter_seconds{leg} when its session ends (release, idle
// timeout, shutdown), so a call in progress shows up there only at its end.
// Both are plain increments in the worker, nothing is allocated per packet.
//
// # Idle timeout
//
// An answered session (SDP seen from both legs) that relayed no packet in
// either direction for idle_timeout, counted from its last packet or its last
// Anchor (so a re-INVITE restarts the clock), is released. A session not yet
// answered is only released after 5 minutes (or idle_timeout if longer):
// a call may ring without early media, and the proxy releases it on CANCEL
// or a final error anyway. This includes calls on hold whose
// phones send no RTP and no RTCP; most phones keep sending RTCP while holding.
// Sessions a standby imported follow the replica rules (see Replication).
//
// # Replication
//
// Relay.Export returns a SessionRecord per session (ports, SDP endpoints,
// latched sources, signalling sources, hold flags, state, the caller's From
// tag, each leg's last SDP body, version);
// SessionRecord implements encoding.BinaryMarshaler. Relay.Import on a
// standby recreates the session with the same ports on its own address (the
// VIP): IP_FREEBIND lets it bind before the VIP is local, so the sockets
// receive the moment the VIP arrives, and the restored latches let media
// flow back to NATed phones at once.
//
// Versions: a session's version grows whenever its replicated content
// changes on the holder (max(previous+1, Unix ns), so it keeps growing on a
// new holder). Import ignores a record not newer than the session it has,
// and one older than a released record of the same Call-ID (remembered for
// at least a minute); a newer record with the same ports updates endpoints and
// latches in place, keeping sockets and counters. Version 0 (a peer without
// versions) always applies. Release sends a released record whose version
// outranks the session's last one, even one a previous holder with a clock
// ahead made; the standby keeps it as a tombstone.
//
// Cluster: the relay is a state channel of package cluster (replicate.go):
// once StateChanges is called, Anchor and Release send the session's record
// and the VIP holder runs the refresh below on the same channel.
//
// Refresh: the VIP holder calls Relay.Refresh every RefreshPeriod
// (idle_timeout/3, within [1s, 20s]; 20s by default) and broadcasts what it
// returns: the records of sessions whose content changed since the previous
// Refresh (in practice the latches learned from the first packets, which
// the Anchor-time record cannot carry), released records for sessions
// idle_timeout ended, and a keep-alive (KeepAlive: Call-ID and version) for
// every other session. One steady-state refresh of 2000 sessions costs about
// 160 KB of keep-alives and 3 ms of CPU (encode, decode, apply); re-sending
// all records would be 760 KB and 21 ms (BenchmarkRefresh2000, shared
// 2-core VM). Since the records carry each leg's last SDP for Join (kept
// compact: v, o, s, c, t, m and the codec, packetisation and direction
// attributes) a full sync of the same sessions is 1.46 MB (30 ms, load
// average 6-12).
//
// Replicas: an imported session is a replica. A standby receives no
// packets, so idle_timeout does not apply to it; it lives as long as
// records or keep-alives for it keep coming (Relay.KeepAlive), ends on a
// released record, and expires after 4 refresh periods without news (the
// holder died or a release was lost), so nothing leaks. When packets reach
// a replica (this proxy holds the VIP now), or when this proxy's own Refresh
// adopts it (it became the holder), it becomes an ordinary session and
// idle_timeout applies, counted from then. Both proxies are assumed to use
// the same idle_timeout, from which each derives the refresh period.
//
// Caller tag: Relay.SetCallerTag records the caller's From tag (before or
// after the first Anchor); it travels in SessionRecord.CallerTag, so after
// a failover the twin's proxy tells the legs of re-INVITEs and UPDATEs apart
// with Relay.CallerTag.
//
// # Joining two calls (join.go)
//
// When the PBX bridging two calls dies, Relay.Join connects the phone legs
// of the two sessions: what one phone sends to its relay port leaves
// through the other call's port facing the other phone, and the reverse, so
// each phone keeps sending to the same relay address and nothing is
// re-negotiated. Both sessions move to one worker (the data path follows
// the peer pointers under that worker's lock only) and the sockets facing
// the dead PBX are closed. Each session keeps the last SDP of each leg;
// the negotiated codec of a call is the first voice format of the SDP that
// came last (the answer). The two calls must have the same number of
// streams and the same codec per stream (name, clock rate, channels), and
// each phone must declare it: otherwise ErrCodecMismatch (no transcoding);
// a call without SDP from both legs is ErrNotJoinable. Payload types are
// renumbered on the way (telephone-event 101 for one phone, 96 for the
// other) by a 128-byte table on the receiving RTP socket, nil when
// nothing changes. Relay.AnswerJoined answers a joined phone's re-offer
// from the relay's state: the last SDP given to that phone (relay address,
// its relay port, the negotiated codec) with the o= version raised and the
// offer's direction mirrored (sendonly: recvonly, inactive: inactive); the
// offer updates the leg's endpoint as any Anchor does. Releasing either
// session undoes the join. The legs' last SDP travel in SessionRecord
// (Bodies, Answer), so the twin can join calls it imported; a join itself
// is not replicated.
//
// # What it does not do
//
// No IPv6, no multicast, no ICE/DTLS-SRTP termination, no transcoding, no
// RTP/RTCP multiplexing on one port (RFC 5761: a=rtcp-mux is removed from
// SDP instead, so a phone that offers only mux, a=rtcp-mux-only, fails to
// negotiate), no recording. It does not
// parse SIP: the proxy decides which body goes with which leg and when a
// session ends. Sessions are keyed by Call-ID only (no parallel forking by
// to-tag): when the proxy retries the INVITE on the next backend it keeps the
// session (the callee got the relay's B-facing ports already) and anchors the
// new backend's answer, which moves leg B; it releases only when the caller
// gets a final error. At most 8 m= lines per SDP (ErrBadSDP beyond), so one
// body cannot drain the pool; an m= line with port 0 still reserves its ports.
//
// # Config keys (section media:)
//
//	enabled        false          anchor media (the proxy consults it)
//	address        SIP advertise  IPv4 the relay binds and puts in SDP
//	ports          "20000-30000"  UDP range; even RTP port, RTCP = RTP+1
//	idle_timeout   60s            release sessions without packets
//	relatch_after  5s             silence of a latched source before another allowed one may latch
//	learn_window   2s             after a first latch, the SDP's exact endpoint may still take it; 0: off
//	max_sessions   0              0 = limited by the port range only
//	workers        0              data-path workers; 0 = GOMAXPROCS
//
// # Metrics
//
//	hapbx_media_sessions                       gauge, sessions in progress
//	hapbx_media_packets_total{dir}             a_to_b, b_to_a (RTP+RTCP relayed)
//	hapbx_media_bytes_total                    bytes relayed
//	hapbx_media_dropped_total{reason}          stranger, not_rtp, no_destination, send_error
//	hapbx_media_lost_packets_total{leg}        RTP lost on the way to the relay (sequence gaps), by sending leg a, b
//	hapbx_media_jitter_seconds{leg}            histogram, per RTP direction at session end, by sending leg a, b
//	hapbx_media_sdp_errors_total               SDP that could not be parsed or anchored
//	hapbx_media_port_exhausted_total           anchors refused: no ports or max_sessions
//	hapbx_media_idle_timeouts_total            sessions ended by idle_timeout
//	hapbx_media_updates_refused_total{reason}  bad_sdp, no_ports: SDP for a call with a session
//	                                           (re-INVITE, UPDATE) not anchored; session kept as it was
//
// # Errors
//
// ErrNoPorts (answer 503; running sessions are untouched), ErrBadSDP (pass
// the call un-anchored or answer 488), ErrNoSession, ErrClosed. When the
// Call-ID already has a session, ErrBadSDP and ErrNoPorts also match
// ErrSessionKept: the session was left unchanged, and the proxy answers the
// re-INVITE or UPDATE 488 so the call keeps its relayed media (forwarded
// raw, the body would move the media off the relay).
package media
