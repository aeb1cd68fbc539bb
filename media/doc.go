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
// per port; the kernel data path below removes both for latched legs.
//
// # Kernel data path (media.datapath)
//
// With datapath kernel, or auto when it can be set up, a latched leg is
// forwarded in the kernel, without a system call or a user-space wake-up
// per packet, by the engine media.kernel_engine names: ebpf (the default,
// a TC program; nftables when it cannot be loaded, logged once) or
// nftables. Both hold one element per latched leg and share everything
// above the engine (kernel_linux.go: which elements, when, counters,
// hand-over); the nftables engine is described first.
//
// nftables: hapbx owns the table "hapbx_media" (family ip): one map, legs,
// keyed by relay port . source address . source port, whose value is
// destination address . relay source port . destination port, with a
// counter in every element; and three rules. In prerouting (priority raw),
// a UDP datagram to the relay address, not a fragment, whose first byte
// says RTP/RTCP version 2, and whose (port, source) is in the map gets its
// destination address and both ports rewritten from the element (IP and
// UDP checksums updated incrementally), a mark bit (0x4b000000) and notrack
// (no conntrack entry, no NAT). The routing decision then forwards it (or
// delivers it, for a peer on this host), and the postrouting/input rule
// sets the marked packet's source to the relay address: setting it before
// routing would make it a martian (a local source arriving from outside).
// Stateless rewriting with notrack was chosen over conntrack NAT because a
// flow the user-space relay already carried has a conntrack entry without
// NAT that a later NAT rule would never apply to, and a re-latch would have
// to flush entries; the map makes a re-latch one element replaced.
//
// There is one element per latched sock whose peer has a destination:
// packets from the leg's latched source to that relay port go where the
// user-space relay would send them (the other leg's latched source, else
// its SDP endpoint; a held leg keeps its destination, as in user space),
// from the other leg's relay port. RTP and RTCP ports have their own
// elements. Everything the map does not match reaches the relay's sockets
// as before: the first packets of a leg (latching stays in user space,
// with all its rules), strangers (dropped and counted), sources after
// relatch_after, fragments and non-version-2 datagrams. A latch, re-latch,
// Anchor (re-INVITE, hold/resume, codec change, new endpoint), Import or
// Release recomputes the session's elements and applies the difference in
// one nftables transaction: a replaced element (re-latch) is a delete and
// an add that apply atomically. Latches learned by the data path are
// queued to a goroutine that applies them; control-plane changes apply
// synchronously, and Release removes the elements before the sockets close
// (the ports may be reused at once).
//
// Nothing is lost in the hand-over: the sockets stay open for the whole
// session, so a packet that arrives before its element is installed, or
// that was already queued on the socket, is relayed by user space, and a
// packet arriving after it is forwarded by the kernel. If an update fails
// the kernel state is unchanged (transactions are atomic), the failure is
// logged (at warn once, then debug) and the legs stay in user space.
//
// Counters: the element counters are read every second (a GETSETELEM dump)
// and before an element is deleted or replaced (a get of those elements),
// and what grew is credited to the session: packets and bytes (UDP payload:
// the counters' 28 bytes of IPv4+UDP header are subtracted), the metrics
// hapbx_media_packets_total and bytes_total, and the last-packet times
// that idle_timeout, relatch_after and replica adoption use, so those are
// judged at a 1 s granularity. A read costs about 1.3 us per element
// (3000 elements: 3.8 ms on the shared VM), the kernel path's main fixed
// cost. Loss and jitter come from RTP sequence numbers and timestamps,
// which only user space reads: in kernel mode they cover the packets
// relayed in user space (a leg's first packets and anything not matched)
// and stop growing once a leg is in the kernel; the per-direction status
// (Snapshot) says so with "kernel": true. The kernel
// path checks only the RTP/RTCP version: RTCP arriving on an RTP port from
// the latched source, or a packet larger than 2048 bytes, is forwarded
// where user space would drop it (not_rtp). A datagram without a UDP
// checksum (0) stays in user space with nftables (its port rewrites update
// the checksum field unconditionally, which would make "none" a wrong
// checksum; found by a test that sends complete checksums from a raw
// socket, which the receiving stack verifies); the eBPF program forwards
// it with the checksum left 0.
//
// Failover: Import installs the elements of the replicated latches at
// once. The rules match only packets to the relay address (the VIP), which
// reach the standby only once it holds the VIP; from then on they are
// forwarded without a user-space step, and the replica is adopted when the
// kernel counters show packets.
//
// Requirements and fallback (nftables; the eBPF engine's are above):
// CAP_NET_ADMIN, nf_tables, an IPv4 relay
// address outside 127/8 (the kernel forwards no loopback traffic, so a
// relay on loopback, as in the unit tests, stays in user space), and
// net.ipv4.ip_forward=1 (checked at start; hapbx does not change sysctls);
// another firewall's forward chain must accept the relayed packets, and one
// hapbx per network namespace (the table has a fixed name: what a killed
// run left behind is replaced, in one transaction, at start, and removed at
// shutdown). datapath kernel fails at start without them; auto logs once
// and relays in user space; user never touches nftables.
//
// Measured with the nftables engine (media/relaybench, as root: generator
// and relay in two network namespaces joined by a veth pair, so the
// rewritten packets are routed and leave by an interface as on a NIC;
// shared 2-core VM under a load average of 8-16 from other jobs): the
// relay process spends about 0.1 us per
// packet in kernel mode (0.47 us at 4000 calls, mostly the counter poll of
// 8000 elements) against 4-6 us in user space, and the forwarding itself
// runs in the softirq of the sending core (0.9-4.7 us per packet including
// veth and delivery, noisy on that machine); no loss, the full load
// offered at 1000 calls (user space: 59%; rtpengine lost 40-58%). The
// figures are in the README (Performance). Loopback was not
// used for the kernel figures: its packets keep the route of their send and
// are delivered locally, not forwarded.
//
// eBPF (kernel_engine ebpf, ebpf_linux.go): a TC program written with
// cilium/ebpf's asm package (instructions in Go source, loaded at start: no
// compiler, no object file in the tree or the build), attached at clsact
// ingress through TCX links on every Ethernet interface of the namespace
// (loopback and L3 devices such as tun are skipped; an interface created
// after the start is not covered), with one array map, hapbx_legs, indexed
// by relay port (65 536 entries of 40 bytes, 2.5 MiB allocated at start;
// the program first checks the packet is to the relay address, and a
// zero entry is a free port). An array, not a hash map keyed by address
// and port: the JIT inlines its lookup, and the hash map's bucket walk was
// 13% of all CPU at 4000 calls (perf), the program 0.51-0.54 us a run
// against 0.21-0.29 us with the array (BPF_STATS_RUN_TIME, relaybench
// -calls 4000, alternating, idle machine). The value holds the latched source (strict
// latching: a packet from any other source goes on to the socket, where
// user space counts the stranger or moves the latch), the destination and
// the relay's other port, and the element's packets, bytes (IP length, as
// nftables counts) and the time of its last packet (bpf_ktime_get_ns),
// which makes the last-packet times credited at each poll exact rather
// than the poll's time. The program takes Ethernet + IPv4 without options
// + UDP, not a fragment, version 2; looks up the route from the relay
// address to the destination (bpf_fib_lookup: no route, a local
// destination or forwarding off pass the packet up unchanged); rewrites
// addresses, ports and the next hop's MACs, updates the IP checksum and
// the UDP checksum incrementally (bpf_l3/l4_csum_replace; a zero UDP
// checksum stays zero); counts (atomic adds) and redirects out of the
// route's interface (bpf_redirect, or bpf_redirect_neigh while the
// neighbour is unresolved). It runs before netfilter: firewall rules and
// conntrack do not see the forwarded packets, and the TTL is left as the
// sender set it (nftables lets the stack decrement it). User space
// rewrites an entry in place (an array's update is a copy, not a swap),
// so the program reads each 8-byte half of it (latched source and port;
// destination and ports) with one load and works on those copies: a
// packet sees each half old or new. A new destination for the same
// source (the peer re-latched, hold, resume, a codec change, a join) is
// written in place, so no packet meets a missing entry; a new source is
// written after the entry is zeroed (its packets reach the socket
// meanwhile), so no packet pairs one leg's source with another's
// destination. Updates are one system call each and not transactional: a
// failed one zeroes every entry of its batch, so those legs' packets reach
// the sockets and user space relays them. Counters are read with batched lookups (1024 entries a
// call). The TCX links are not pinned, so the kernel detaches the program
// when hapbx exits, even killed; at start a program of hapbx's name still
// attached to an interface (another live process, one attached by hand) is
// detached, as the nftables table is replaced (finding it by name needs
// CAP_SYS_ADMIN; without it that step is skipped). It needs Linux 6.6
// (TCX) and CAP_BPF + CAP_NET_ADMIN (checked: enough for a non-root user;
// CAP_NET_ADMIN alone cannot create the map); without them the relay logs
// once and uses nftables. XDP was not built: on veth (the bench, containers)
// XDP_TX/redirect needs a program on the peer too, and native XDP depends
// on the NIC driver; TC works on every Ethernet device, and with the array
// map it meets issue 16's goals at 4000 calls (median 0.79 us per packet
// from /proc/stat, 0.59 us accounted, p99 50 us at the phones' host, no
// loss; README, Performance).
//
// Which engine: ebpf is the default, by measurement (relaybench -calls
// 2000 -modes kernel,ebpf, four runs alternating the engines on the shared
// machine, load average 14-21 from other jobs, 5 December): CPU of
// generator, relay and ksoftirqd per relayed packet, minus the generator
// alone, 0.7-1.25 us with the eBPF engine against 2.0-2.5 us with
// nftables in every pair, and the generator offered 44-68% of the load
// through it against 26-41% (the rest of the CPU went to other jobs in
// both). The program itself runs in 0.38-0.43 us per packet on a lighter
// load (load average 5-8; 0.54-0.61 us at 14-21; BPF_STATS_RUN_TIME),
// in place of netfilter's prerouting chain and map, the routing decision,
// ip_forward and the postrouting chain; counters cost the relay process
// less too (batched map reads against a netlink dump). On a quiet machine
// with the array map (relaybench -repeat 3, medians): 0.55-0.59 us
// accounted at 2000 and 4000 calls against nftables' 1.07-1.76 us.
// nftables remains
// the choice where the kernel is older than 6.6, CAP_BPF cannot be
// granted, or firewall rules must see the relayed packets.
//
// Library: github.com/cilium/ebpf v0.15.0, the newest whose requirements
// leave go.mod's others as they are (v0.16 and later pull mdlayher/netlink
// v1.7 and mdlayher/socket v0.5, which break the mdlayher/packet v1.0 the
// cluster's ARP uses); it lacks BPF_LINK_DETACH, which linkDetach issues.
// github.com/google/nftables v0.1.0 for nftables (v0.2 and later need
// mdlayher/socket v0.5 too), plus a raw NFT_MSG_GETSETELEM on a netlink
// socket for the element counters, which that version does not decode.
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
// No IPv6 (nor in the kernel path), no multicast, no ICE/DTLS-SRTP termination, no transcoding, no
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
//	datapath       auto           kernel (nftables, or fail at start), user, auto (kernel if possible)
//
// # Metrics
//
//	hapbx_media_sessions                       gauge, sessions in progress
//	hapbx_media_packets_total{dir}             a_to_b, b_to_a (RTP+RTCP relayed; kernel-forwarded ones added at each counter read)
//	hapbx_media_bytes_total                    bytes relayed (UDP payload, also in kernel mode)
//	hapbx_media_dropped_total{reason}          stranger, not_rtp, no_destination, send_error (user space only)
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
