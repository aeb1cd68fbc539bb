package relaybench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Phone is one generator endpoint: a bound UDP socket and where it sends.
type Phone struct {
	fd   int
	Addr netip.AddrPort
	dst  unix.RawSockaddrInet4
	seq  uint16
	ts   uint32
	ssrc uint32
}

// NewPhone binds a UDP socket on ip with a kernel-chosen port.
func NewPhone(ip netip.Addr) (*Phone, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// Many streams share a socket: room for a burst of all of them (the
	// forced size needs CAP_NET_ADMIN; the plain one is capped by rmem_max).
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	// The kernel stamps each datagram as it arrives at the phone's host
	// (netif_rx on its interface): latency up to there is the path's, not
	// the generator's own wait for a CPU to read it.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("relaybench: SO_TIMESTAMPNS: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ip.As4()}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	p := sa.(*unix.SockaddrInet4).Port
	return &Phone{fd: fd, Addr: netip.AddrPortFrom(ip, uint16(p)), ssrc: uint32(fd) * 2654435761}, nil
}

// SetDest sets where the phone sends.
func (p *Phone) SetDest(ap netip.AddrPort) {
	p.dst = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	pp := ap.Port()
	*(*[2]byte)(unsafe.Pointer(&p.dst.Port)) = [2]byte{byte(pp >> 8), byte(pp)}
}

// Close closes the socket.
func (p *Phone) Close() { unix.Close(p.fd) }

// Stream is one direction of a call: datagrams from a phone socket to Dst.
// Many streams may share a socket (one socket per many streams keeps the
// generator's receive cost per datagram low); the relay latches each of its
// ports to the socket's address.
type Stream struct {
	Phone *Phone
	Dst   netip.AddrPort
}

// Load is the run configuration.
type Load struct {
	// Phones: one stream each, to the phone's SetDest (two per call).
	Phones []*Phone
	// Streams: more streams, any number per phone; their phones must be
	// listed in Sockets so their replies are read.
	Streams  []Stream
	Sockets  []*Phone
	PPS      int           // packets per second per stream
	Size     int           // datagram size (RTP header included)
	Warmup   time.Duration // sent but not measured
	Duration time.Duration // measured window
	// OnWindow is called at the start and end of the measured window
	// (e.g. to read the relay's CPU time).
	OnWindow func(start bool)
	// Ready, when set, is asked after Warmup every 100 ms, for up to
	// readyWait, until it reports the relay settled (every leg handed
	// to the kernel); the window starts then.
	Ready func() bool
}

// readyWait bounds the wait for Load.Ready.
const readyWait = 30 * time.Second

// Result are the figures of one run, over the measured window. Latency is
// from the send (the timestamp written just before the datagram's
// sendmmsg) to its arrival: P50, P99 and Max at the phone's host (the
// kernel's receive timestamp, SO_TIMESTAMPNS), AppP50 and AppP99 when the
// generator read it (adds the generator's own wait for a CPU, which on a
// loaded two-core machine dominates).
type Result struct {
	Sent, Received uint64
	Elapsed        time.Duration
	P50, P99, Max  time.Duration
	AppP50, AppP99 time.Duration
	Stamped        uint64 // received with the kernel's stamp (the rest count at the read)
}

const bucket = 10 * time.Microsecond
const nBuckets = 20000 // up to 200 ms

// genBatch is the number of datagrams per sendmmsg/recvmmsg.
const genBatch = 64

// recvEvery is the receivers' pace.
const recvEvery = time.Millisecond

type recvStats struct {
	count   uint64
	stamped uint64
	hist    [nBuckets]uint64 // to the kernel's receive timestamp
	app     [nBuckets]uint64 // to the generator's read
}

// cmsgSpace is room for one SCM_TIMESTAMPNS control message.
const cmsgSpace = unix.SizeofCmsghdr + 16

// rxStamp returns the SCM_TIMESTAMPNS of a datagram's control data in
// UnixNano, or 0 when there is none. The socket asks for nothing else, so
// the stamp is the one message there (read in place: parsing into a slice
// of messages would allocate per datagram).
func rxStamp(ctl []byte) int64 {
	if len(ctl) < cmsgSpace {
		return 0
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	if h.Level != unix.SOL_SOCKET || h.Type != unix.SO_TIMESTAMPNS || h.Len < cmsgSpace {
		return 0
	}
	return (*unix.Timespec)(unsafe.Pointer(&ctl[unix.SizeofCmsghdr])).Nano()
}

func bucketOf(d int64) int {
	return int(min(max(d/int64(bucket), 0), nBuckets-1))
}

type stream struct {
	fd   int
	dst  unix.RawSockaddrInet4
	seq  uint16
	ts   uint32
	ssrc uint32
}

func raw(ap netip.AddrPort) unix.RawSockaddrInet4 {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	pp := ap.Port()
	*(*[2]byte)(unsafe.Pointer(&sa.Port)) = [2]byte{byte(pp >> 8), byte(pp)}
	return sa
}

// Run drives the load and returns what was measured. Senders spread the
// streams over the slots of each 1/PPS period and send each slot's
// datagrams of one socket with one sendmmsg; receivers drain every socket
// with recvmmsg each millisecond.
func Run(l Load) (Result, error) {
	socks := append([]*Phone(nil), l.Sockets...)
	var streams []*stream
	for _, p := range l.Phones {
		socks = append(socks, p)
		streams = append(streams, &stream{fd: p.fd, dst: p.dst, ssrc: p.ssrc})
	}
	for i, st := range l.Streams {
		streams = append(streams, &stream{fd: st.Phone.fd, dst: raw(st.Dst), ssrc: st.Phone.ssrc + uint32(i)*7919})
	}
	if l.PPS <= 0 || l.Size < 24 || len(streams) == 0 {
		return Result{}, errors.New("relaybench: bad load")
	}
	var measuring, stop atomic.Bool
	var sent atomic.Uint64
	nRecv := 2
	stats := make([]*recvStats, nRecv)
	var wg sync.WaitGroup
	for i := range nRecv {
		var fds []int
		for j := i; j < len(socks); j += nRecv {
			fds = append(fds, socks[j].fd)
		}
		stats[i] = &recvStats{}
		wg.Add(1)
		go func(st *recvStats) {
			defer wg.Done()
			var hdr [genBatch]unix.Mmsghdr
			var iov [genBatch]unix.Iovec
			var bufs [genBatch][2048]byte
			var ctl [genBatch][cmsgSpace]byte
			for k := range hdr {
				iov[k] = unix.Iovec{Base: &bufs[k][0], Len: 2048}
				hdr[k].Hdr.Iov, hdr[k].Hdr.Iovlen = &iov[k], 1
				hdr[k].Hdr.Control = &ctl[k][0]
			}
			// Every recvEvery, drain each socket: latency is read from
			// the kernel's stamps, so the generator need not wake for
			// each datagram, and a fixed pace keeps its own cost per
			// datagram the same from run to run (woken by epoll it
			// varied by half between runs with the pace of arrivals).
			for !stop.Load() {
				time.Sleep(recvEvery)
				for _, fd := range fds {
					for drained := false; !drained; {
						for k := range hdr {
							hdr[k].Hdr.SetControllen(cmsgSpace)
						}
						r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdr[0])), genBatch, unix.MSG_DONTWAIT, 0, 0)
						if e != 0 {
							break
						}
						at := time.Now().UnixNano()
						for k := range int(r) {
							b := bufs[k][:hdr[k].Len]
							if len(b) < 21 || b[20] == 0 { // short, or sent outside the window
								continue
							}
							sentAt := int64(binary.BigEndian.Uint64(b[12:]))
							rx := rxStamp(ctl[k][:hdr[k].Hdr.Controllen])
							if rx == 0 {
								rx = at
							} else {
								st.stamped++
							}
							st.count++
							st.hist[bucketOf(rx-sentAt)]++
							st.app[bucketOf(at-sentAt)]++
						}
						drained = r < genBatch
					}
				}
			}
		}(stats[i])
	}
	period := time.Second / time.Duration(l.PPS)
	slots := max(int(period/time.Millisecond), 1)
	nSend := 2
	var swg sync.WaitGroup
	for sIdx := range nSend {
		// This sender's streams by slot, grouped by socket so that one
		// sendmmsg carries a slot's datagrams of a socket.
		bySlot := make([][]*stream, slots)
		for j := sIdx; j < len(streams); j += nSend {
			sl := (j / 2) % slots
			bySlot[sl] = append(bySlot[sl], streams[j])
		}
		for _, ss := range bySlot {
			slices.SortStableFunc(ss, func(a, b *stream) int { return a.fd - b.fd })
		}
		swg.Add(1)
		go func() {
			defer swg.Done()
			var hdr [genBatch]unix.Mmsghdr
			var iov [genBatch]unix.Iovec
			pkts := make([][]byte, genBatch)
			for k := range pkts {
				pkts[k] = make([]byte, l.Size)
				pkts[k][0], pkts[k][1] = 0x80, 8
				iov[k] = unix.Iovec{Base: &pkts[k][0], Len: uint64(l.Size)}
				hdr[k].Hdr.Iov, hdr[k].Hdr.Iovlen = &iov[k], 1
				hdr[k].Hdr.Namelen = unix.SizeofSockaddrInet4
			}
			flush := func(fd, n int, flag byte) {
				for done := 0; done < n; {
					r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdr[done])), uintptr(n-done), 0, 0, 0)
					if e != 0 {
						done++ // that one failed; go on with the rest
						continue
					}
					if flag == 1 {
						sent.Add(uint64(r))
					}
					done += int(r)
				}
			}
			next := time.Now()
			slot := 0
			for !stop.Load() {
				flag := byte(0)
				if measuring.Load() {
					flag = 1
				}
				n, fd := 0, -1
				for _, st := range bySlot[slot] {
					if n == genBatch || (n > 0 && st.fd != fd) {
						flush(fd, n, flag)
						n = 0
					}
					fd = st.fd
					st.seq++
					st.ts += 160
					p := pkts[n]
					binary.BigEndian.PutUint16(p[2:], st.seq)
					binary.BigEndian.PutUint32(p[4:], st.ts)
					binary.BigEndian.PutUint32(p[8:], st.ssrc)
					// Wall clock, as the kernel's receive stamp.
					binary.BigEndian.PutUint64(p[12:], uint64(time.Now().UnixNano()))
					p[20] = flag
					hdr[n].Hdr.Name = (*byte)(unsafe.Pointer(&st.dst))
					n++
				}
				if n > 0 {
					flush(fd, n, flag)
				}
				slot = (slot + 1) % slots
				next = next.Add(period / time.Duration(slots))
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				} else if d < -period {
					// More than a period behind: the slots missed are not
					// sent in a burst to catch up (a burst of 1 s of
					// datagrams is no load a relay meets); offered shows
					// the shortfall.
					next = time.Now()
				}
			}
		}()
	}
	time.Sleep(l.Warmup)
	if l.Ready != nil {
		for deadline := time.Now().Add(readyWait); !l.Ready(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				stop.Store(true)
				swg.Wait()
				wg.Wait()
				return Result{}, fmt.Errorf("relaybench: relay not settled %v after the warm-up", readyWait)
			}
		}
	}
	if l.OnWindow != nil {
		l.OnWindow(true)
	}
	t0 := time.Now()
	measuring.Store(true)
	time.Sleep(l.Duration)
	measuring.Store(false)
	el := time.Since(t0)
	if l.OnWindow != nil {
		l.OnWindow(false)
	}
	time.Sleep(time.Second) // let in-flight packets arrive (late ones still count, at their latency)
	stop.Store(true)
	swg.Wait()
	wg.Wait()
	var res Result
	res.Sent, res.Elapsed = sent.Load(), el
	var hist, app [nBuckets]uint64
	for _, st := range stats {
		res.Received += st.count
		res.Stamped += st.stamped
		for i := range st.hist {
			hist[i] += st.hist[i]
			app[i] += st.app[i]
		}
	}
	res.P50, res.P99, res.Max = quantile(&hist, res.Received, 0.50), quantile(&hist, res.Received, 0.99), quantile(&hist, res.Received, 1)
	res.AppP50, res.AppP99 = quantile(&app, res.Received, 0.50), quantile(&app, res.Received, 0.99)
	return res, nil
}

func quantile(h *[nBuckets]uint64, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	want := uint64(q * float64(total))
	if want == 0 {
		want = 1
	}
	var acc uint64
	for i, c := range h {
		acc += c
		if acc >= want {
			return time.Duration(i+1) * bucket
		}
	}
	return nBuckets * bucket
}

// Loss is the fraction of packets sent in the window that never arrived.
func (r Result) Loss() float64 {
	if r.Sent == 0 {
		return 0
	}
	if r.Received >= r.Sent {
		return 0
	}
	return float64(r.Sent-r.Received) / float64(r.Sent)
}

// String formats the figures on one line.
func (r Result) String() string {
	return fmt.Sprintf("sent=%d recv=%d rx_pps=%.0f loss=%.4f%% lat_p50=%s lat_p99=%s lat_max=%s app_p50=%s app_p99=%s",
		r.Sent, r.Received, float64(r.Received)/r.Elapsed.Seconds(), 100*r.Loss(), r.P50, r.P99, r.Max, r.AppP50, r.AppP99)
}
