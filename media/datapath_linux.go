package media

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	batch     = 32   // datagrams per recvmmsg/sendmmsg
	bufSize   = 2048 // larger than any RTP over Ethernet; bigger datagrams are dropped
	maxEvents = 256
)

// Drop reasons, the `reason` label of hapbx_media_dropped_total.
const (
	dropStranger = iota // source is not the latched peer, or not one of the leg's allowed addresses
	dropNotRTP          // failed the RTP/RTCP header check, or truncated
	dropNoDest          // the other leg has no address yet (no SDP, or held)
	dropSendErr         // sendmmsg failed (socket buffer full, unreachable)
	nDrops
)

var dropNames = [nDrops]string{"stranger", "not_rtp", "no_destination", "send_error"}

// sock is one relay UDP port: the RTP or RTCP port of one stream facing one
// leg. fd is bound to the port and never connected: it receives everything
// the connected descriptor does not, i.e. the latched peer before the first
// send back to it, and strangers. Once the relay sends to a latched peer, cfd
// (a second socket on the same port, connected to that peer) carries the
// traffic with the peer: the kernel keeps its route and the sender's address
// (see connectLocked).
// All fields but fd/port/leg/rtcp are owned by w.mu.
type sock struct {
	fd   int
	cfd  int // connected to connTo; -1 when none
	port int
	leg  Leg
	rtcp bool
	w    *worker
	peer *sock // the socket facing the other leg; packets received here leave through it
	rtp  *sock // on an RTCP socket: the RTP socket of the same stream and leg; else nil
	// ptMap, on the RTP socket of a joined leg (join.go), renumbers the
	// payload type of what it receives for the other call's phone; nil: as is.
	ptMap *[128]byte

	hint     unix.RawSockaddrInet4 // where the SDP of this leg says to send
	hasHint  bool
	signal   [4]byte // IP the leg's last SDP-carrying SIP message came from
	hasSig   bool
	latch    unix.RawSockaddrInet4 // source of the packets we accept and send back to
	latched  bool
	lastRx   int64 // nanotime of the last accepted packet
	lastLatc int64 // nanotime of the last packet from the latched source
	stats    *dirStats
	relatch  int64 // ns of silence from the latched source before another may take over
	learn    int64 // ns after the first latch during which another allowed source takes over at once
	learnEnd int64 // nanotime the learning window of the current latch ends

	// Loss already added to the worker's counter, and stats.received when it
	// was: received only grows until the stats restart (new SSRC or
	// sequence), which resets this watermark too.
	lostSeen, lostRecv uint64

	connTo unix.RawSockaddrInet4 // the address cfd is connected to (or failed to connect to)
	connAt int64                 // nanotime of the last connectLocked; 0: never

	kernel bool // the kernel forwards the latched source's packets (an element is installed)
	kgone  bool // released: the kernel path must not install it again; kernel.mu
}

// connRetry spaces attempts to open a connected socket that failed (out of
// descriptors, address not local yet), so a failing attempt costs nothing per packet.
const connRetry = int64(time.Second)

// worker owns an epoll instance and every socket registered with it. One
// mutex per worker serialises its data path against control-plane changes;
// the data path takes it once per epoll wake-up, not per packet.
type worker struct {
	id     int
	epfd   int
	file   *os.File // epfd, registered with Go's netpoller
	closed atomic.Bool
	done   chan struct{}
	budget *connBudget      // shared by the Relay's workers
	now    func() time.Time // the Relay's clock
	kern   *kernel          // the kernel data path; nil in user-space mode

	mu    sync.Mutex
	socks map[int32]*sock
	pkts  [2]uint64 // accepted RTP+RTCP packets by source leg
	bytes uint64
	drops [nDrops]uint64
	lost  [2]uint64 // RTP packets lost (sequence gaps) by source leg
	// Interarrival jitter of each RTP direction at its release, by source
	// leg: per-bucket (not cumulative) counts for jitterBuckets and the sum.
	jitCount [2][len(jitterBuckets) + 1]uint64
	jitSum   [2]float64

	events [maxEvents]unix.EpollEvent
	rxHdr  [batch]unix.Mmsghdr
	rxIov  [batch]unix.Iovec
	rxName [batch]unix.RawSockaddrInet4
	rxBuf  [batch][bufSize]byte
	txHdr  [batch]unix.Mmsghdr // to txName, from the unconnected socket
	txHdrC [batch]unix.Mmsghdr // no address, from the connected socket
	txIov  [batch]unix.Iovec
	txName unix.RawSockaddrInet4
}

// connBudget bounds the connected sockets of all workers of a Relay, so
// they never take the descriptors the port range needs for its bound sockets.
type connBudget struct {
	max  int64
	used atomic.Int64
}

// newConnBudget leaves room under RLIMIT_NOFILE for one socket per port of
// the range plus 1024 for everything else in the process.
func newConnBudget(ports int) *connBudget {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return &connBudget{}
	}
	return &connBudget{max: max(int64(lim.Cur)-int64(ports)-1024, 0)}
}

func newWorker(id int, budget *connBudget, now func() time.Time) (*worker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll set non-blocking: %w", err)
	}
	w := &worker{id: id, epfd: epfd, socks: make(map[int32]*sock), done: make(chan struct{}), budget: budget, now: now}
	w.file = os.NewFile(uintptr(epfd), "media-epoll")
	for i := range w.rxHdr {
		w.rxIov[i] = unix.Iovec{Base: &w.rxBuf[i][0], Len: bufSize}
		w.rxHdr[i].Hdr.Iov = &w.rxIov[i]
		w.rxHdr[i].Hdr.Iovlen = 1
		w.rxHdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.rxName[i]))
		w.txHdr[i].Hdr.Iov = &w.txIov[i]
		w.txHdr[i].Hdr.Iovlen = 1
		w.txHdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&w.txName))
		w.txHdr[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		w.txHdrC[i].Hdr.Iov = &w.txIov[i]
		w.txHdrC[i].Hdr.Iovlen = 1
	}
	return w, nil
}

// openSock binds a non-blocking UDP socket on addr:port. IP_FREEBIND lets a
// standby bind the VIP before it owns it, so the socket receives the moment
// the address arrives.
func openSock(addr netip.Addr, port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("setsockopt IP_FREEBIND: %w", err)
	}
	sa := &unix.SockaddrInet4{Port: port, Addr: addr.As4()}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s:%d: %w", addr, port, err)
	}
	return fd, nil
}

func (w *worker) add(s *sock) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(s.fd)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add fd %d: %w", s.fd, err)
	}
	w.socks[int32(s.fd)] = s
	return nil
}

// removeLocked unregisters and closes s; w.mu must be held so the data path
// never reads a closed (and possibly reused) descriptor.
func (w *worker) removeLocked(s *sock) {
	if s == nil {
		return
	}
	w.closeConnLocked(s)
	if s.fd < 0 {
		return
	}
	w.observeJitterLocked(s)
	if w.socks[int32(s.fd)] == s {
		delete(w.socks, int32(s.fd))
		_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	}
	_ = unix.Close(s.fd)
	s.fd = -1
}

// close stops run (if started) and closes every socket left.
func (w *worker) close(started bool) {
	w.closed.Store(true)
	w.mu.Lock()
	for _, s := range w.socks {
		w.removeLocked(s)
	}
	w.mu.Unlock()
	_ = w.file.Close() // wakes run's parked Read with an error
	if started {
		<-w.done
	}
}

// run is the data path. The worker's epoll descriptor is itself registered
// with Go's netpoller (through an os.File), so an idle worker parks as a
// goroutine instead of blocking an OS thread in epoll_wait: a blocking
// syscall loses its P after 20µs and costs futex hand-offs on every wake-up,
// which profiling showed dominating CPU per packet at low packet rates.
// On readiness it polls its epoll set without blocking, drains each ready
// socket with recvmmsg and forwards with one sendmmsg per batch.
func (w *worker) run() {
	defer close(w.done)
	rc, err := w.file.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		for {
			if w.closed.Load() {
				return true
			}
			n, err := unix.EpollWait(int(fd), w.events[:], 0)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return true
			}
			if n <= 0 {
				return false // nothing ready: park until the netpoller says so
			}
			w.mu.Lock()
			for i := range n {
				fd := w.events[i].Fd
				if s := w.socks[fd]; s != nil {
					w.drain(s, int(fd))
				}
			}
			w.mu.Unlock()
		}
	})
}

// nanotime is the worker's clock in Unix nanoseconds, the unit of its
// packet times.
func (w *worker) nanotime() int64 { return w.now().UnixNano() }

// drain reads fd (s.fd or s.cfd) until it is empty.
func (w *worker) drain(s *sock, fd int) {
	for retried := false; ; {
		for i := range w.rxHdr {
			w.rxHdr[i].Hdr.Namelen = unix.SizeofSockaddrInet4
			w.rxHdr[i].Hdr.Flags = 0
		}
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&w.rxHdr[0])), batch, unix.MSG_DONTWAIT, 0, 0)
		if e != 0 {
			// A connected socket reports an ICMP error (the peer's port
			// closed) once, in place of the datagrams queued behind it:
			// read those now rather than on the next wake-up.
			if e == unix.ECONNREFUSED && !retried {
				retried = true
				continue
			}
			return // EAGAIN: drained; anything else: try again on the next wake-up
		}
		n := int(r)
		w.forward(s, n, w.nanotime())
		if n < batch {
			return
		}
	}
}

func sameAddr(a, b *unix.RawSockaddrInet4) bool { return a.Port == b.Port && a.Addr == b.Addr }

func (w *worker) forward(s *sock, n int, now int64) {
	st := s.stats
	k := 0
	for i := range n {
		h := &w.rxHdr[i]
		src := &w.rxName[i]
		b := w.rxBuf[i][:h.Len]
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 || (!s.rtcp && !validRTP(b)) || (s.rtcp && !validRTCP(b)) {
			st.invalid++
			w.drops[dropNotRTP]++
			continue
		}
		if !s.latched || !sameAddr(&s.latch, src) {
			if !s.mayLatch(src, now) {
				st.stranger++
				w.drops[dropStranger]++
				continue
			}
			s.learnEnd = 0 // a moved latch is settled
			if !s.latched {
				s.learnEnd = now + s.learn
			}
			s.latch, s.latched = *src, true
			w.kern.notify(s)
		}
		s.lastLatc, s.lastRx = now, now
		if s.rtcp {
			st.rtcpPackets++
		} else {
			st.packets++
			st.bytes += uint64(len(b))
			st.rtpSeen(b, now)
			w.countLossLocked(s)
		}
		if s.ptMap != nil {
			b[1] = b[1]&0x80 | s.ptMap[b[1]&0x7f]
		}
		w.pkts[s.leg]++
		w.bytes += uint64(len(b))
		w.txIov[k] = unix.Iovec{Base: &w.rxBuf[i][0], Len: uint64(len(b))}
		k++
	}
	if k == 0 {
		return
	}
	p := s.peer
	fd, hdr := p.fd, &w.txHdr
	switch {
	case p.latched:
		if p.connAt == 0 || !sameAddr(&p.connTo, &p.latch) || p.cfd < 0 && now-p.connAt > connRetry {
			w.connectLocked(p, now)
		}
		if p.cfd >= 0 && sameAddr(&p.connTo, &p.latch) {
			fd, hdr = p.cfd, &w.txHdrC
		} else {
			w.txName = p.latch
		}
	case p.hasHint:
		w.txName = p.hint
	default:
		st.noDest += uint64(k)
		w.drops[dropNoDest] += uint64(k)
		return
	}
	for sent := 0; sent < k; {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdr[sent])), uintptr(k-sent), unix.MSG_DONTWAIT, 0, 0)
		if e != 0 {
			// Count the one that failed and go on: an ICMP error reported on
			// one datagram must not drop the rest of the batch.
			st.sendErr++
			w.drops[dropSendErr]++
			sent++
			continue
		}
		sent += int(r)
	}
}

// countLossLocked adds what the RTP socket s lost since its last packet to
// the worker's counter. RFC 3550 loss goes down when a late packet arrives,
// and a counter cannot: only growth beyond the highest value seen is added.
func (w *worker) countLossLocked(s *sock) {
	st := s.stats
	if st.received <= s.lostRecv { // the stats restarted (new SSRC or sequence)
		s.lostSeen = 0
	}
	s.lostRecv = st.received
	if l := st.lost(); l > s.lostSeen {
		w.lost[s.leg] += l - s.lostSeen
		s.lostSeen = l
	}
}

// jitterBuckets are the upper bounds, in seconds, of hapbx_media_jitter_seconds.
var jitterBuckets = [...]float64{.001, .0025, .005, .01, .02, .03, .05, .1, .2, .5}

// observeJitterLocked records the jitter of the RTP socket s, which is being
// closed, if it relayed any RTP. w.mu must be held.
func (w *worker) observeJitterLocked(s *sock) {
	if s.rtcp || s.stats == nil || !s.stats.started {
		return
	}
	j := s.stats.jitterMs() / 1000
	i := 0
	for i < len(jitterBuckets) && j > jitterBuckets[i] {
		i++
	}
	w.jitCount[s.leg][i]++
	w.jitSum[s.leg] += j
}

// allows tells whether src's IP is one the leg may send media from: the
// address its SDP names for this port, or the IP its SDP-carrying SIP
// message came from (a phone behind NAT names its private address in SDP
// and sends from its public one, the source of its SIP). Any port: NAT
// picks the port.
func (s *sock) allows(src *unix.RawSockaddrInet4) bool {
	return s.hasHint && s.hint.Addr == src.Addr || s.hasSig && s.signal == src.Addr
}

// mayLatch tells whether src, which is not the latched source (or the
// socket has none), may become it. src must be an allowed address; then an
// unlatched socket latches it. A latched socket moves to it only
//   - within the learning window of its first latch, when src is exactly
//     the SDP's endpoint: another sender at an allowed IP (a stale port of
//     the phone, another device behind the same NAT) that came first loses
//     the leg to the endpoint the SDP names, or
//   - after the latched source was silent for relatch_after (a NAT
//     rebinding; for RTCP see rtpAllowsRelatch).
//
// Everyone else is a stranger, even when first.
func (s *sock) mayLatch(src *unix.RawSockaddrInet4, now int64) bool {
	switch {
	case !s.allows(src):
		return false
	case !s.latched:
		return true
	case now < s.learnEnd && s.hasHint && sameAddr(&s.hint, src):
		return true
	}
	return now-s.lastLatc >= s.relatch && s.rtpAllowsRelatch(src, now)
}

// rtpAllowsRelatch tells whether src may take over the RTCP socket s whose
// latched source went silent. RTCP comes only every 2.5-7.5 s (RFC 3550), so
// its own silence says little: the RTP and RTCP ports are one stream, and
// RTCP moves only when the leg's RTP has been silent for relatch_after too,
// or when RTP already moved to src's host. RTP sockets are not restricted.
func (s *sock) rtpAllowsRelatch(src *unix.RawSockaddrInet4, now int64) bool {
	r := s.rtp
	if r == nil || !r.latched || now-r.lastLatc >= s.relatch {
		return true
	}
	return r.latch.Addr == src.Addr
}

// connectLocked points k.cfd at k.latch, opening it if needed. A connected
// UDP socket keeps its route, so a send needs no address and no route
// lookup, and the kernel finds it for the peer's datagrams by the full
// address pair. It shares k's port with the unconnected k.fd (SO_REUSEPORT
// only while binding, so no other socket can join the port afterwards): the
// kernel delivers a datagram to the connected socket when it comes from the
// peer and to k.fd otherwise, so strangers still reach the data path, are
// counted, and can take the leg over after relatch_after of silence, when
// this is called again for the new source. When the descriptor budget is
// spent or on any failure k keeps sending through k.fd with the address, as
// before, and the attempt is repeated after connRetry. w.mu must be held.
func (w *worker) connectLocked(k *sock, now int64) {
	k.connTo, k.connAt = k.latch, now
	if k.cfd >= 0 {
		if connectRaw(k.cfd, &k.latch) == nil {
			return
		}
		w.closeConnLocked(k)
	}
	if w.budget.used.Add(1) > w.budget.max {
		w.budget.used.Add(-1)
		return
	}
	fd, err := openConnected(k.fd, &k.latch)
	if err != nil {
		w.budget.used.Add(-1)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = unix.Close(fd)
		w.budget.used.Add(-1)
		return
	}
	k.cfd = fd
	w.socks[int32(fd)] = k
}

// closeConnLocked closes k.cfd; datagrams from the peer go to k.fd again.
func (w *worker) closeConnLocked(k *sock) {
	if k.cfd < 0 {
		return
	}
	if w.socks[int32(k.cfd)] == k {
		delete(w.socks, int32(k.cfd))
		_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, k.cfd, nil)
	}
	_ = unix.Close(k.cfd)
	k.cfd = -1
	w.budget.used.Add(-1)
}

// openConnected opens a socket on the address and port of the bound socket
// fd, connected to peer. Both sockets carry SO_REUSEPORT only while the new
// one binds.
func openConnected(fd int, peer *unix.RawSockaddrInet4) (int, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1, fmt.Errorf("getsockname: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return -1, fmt.Errorf("setsockopt SO_REUSEPORT: %w", err)
	}
	defer func() { _ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 0) }()
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	err = unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	if err == nil {
		err = unix.SetsockoptInt(c, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	}
	if err == nil {
		err = unix.Bind(c, sa)
	}
	if err == nil {
		err = unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_REUSEPORT, 0)
	}
	if err == nil {
		err = connectRaw(c, peer)
	}
	if err != nil {
		_ = unix.Close(c)
		return -1, fmt.Errorf("connected socket to %s: %w", addrPortFromRaw(peer), err)
	}
	return c, nil
}

func connectRaw(fd int, sa *unix.RawSockaddrInet4) error {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrInet4)
	if e != 0 {
		return e
	}
	return nil
}

func rawFromAddrPort(ap netip.AddrPort) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	p := ap.Port()
	// sin_port is in network byte order.
	*(*[2]byte)(unsafe.Pointer(&sa.Port)) = [2]byte{byte(p >> 8), byte(p)}
	return sa
}

func addrPortFromRaw(sa *unix.RawSockaddrInet4) netip.AddrPort {
	pb := *(*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(pb[0])<<8|uint16(pb[1]))
}

func closeFD(fd int) { _ = unix.Close(fd) }
