package relaybench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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

// Load is the run configuration.
type Load struct {
	Phones   []*Phone      // two per call; each sends to its Dest
	PPS      int           // packets per second per phone
	Size     int           // datagram size (RTP header included)
	Warmup   time.Duration // sent but not measured
	Duration time.Duration // measured window
	// OnWindow is called at the start and end of the measured window
	// (e.g. to read the relay's CPU time).
	OnWindow func(start bool)
}

// Result are the figures of one run, over the measured window.
type Result struct {
	Sent, Received uint64
	Elapsed        time.Duration
	P50, P99, Max  time.Duration
}

const bucket = 10 * time.Microsecond
const nBuckets = 20000 // up to 200 ms

type recvStats struct {
	count uint64
	hist  [nBuckets]uint64
}

// Run drives the load and returns what was measured.
func Run(l Load) (Result, error) {
	if l.PPS <= 0 || l.Size < 20 || len(l.Phones) == 0 {
		return Result{}, errors.New("relaybench: bad load")
	}
	var measuring, stop atomic.Bool
	var sent atomic.Uint64
	epoch := time.Now()
	// Receivers: two epoll loops.
	nRecv := 2
	stats := make([]*recvStats, nRecv)
	var wg sync.WaitGroup
	for i := range nRecv {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return Result{}, err
		}
		defer unix.Close(epfd)
		for j := i; j < len(l.Phones); j += nRecv {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(j)}
			if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, l.Phones[j].fd, &ev); err != nil {
				return Result{}, err
			}
		}
		stats[i] = &recvStats{}
		wg.Add(1)
		go func(st *recvStats) {
			defer wg.Done()
			events := make([]unix.EpollEvent, 256)
			buf := make([]byte, 2048)
			for !stop.Load() {
				n, err := unix.EpollWait(epfd, events, 50)
				if err != nil {
					continue
				}
				for _, ev := range events[:n] {
					// One datagram per ready socket and wake-up: at 50
					// packets/s a socket rarely holds two, and reading until
					// EAGAIN would double the generator's system calls; the
					// level-triggered epoll reports a socket that still has one.
					fd := l.Phones[ev.Fd].fd
					m, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_DONTWAIT, 0, 0)
					if e != 0 || int(m) < 20 {
						continue
					}
					at := int64(time.Since(epoch))
					sentAt := int64(binary.BigEndian.Uint64(buf[12:]))
					flag := buf[20]
					if flag == 0 { // sent outside the window
						continue
					}
					d := (at - sentAt) / int64(bucket)
					d = min(max(d, 0), nBuckets-1)
					st.count++
					st.hist[d]++
				}
			}
		}(stats[i])
	}
	// Senders: phones split in slots across each 1/PPS period, so the load
	// is smooth rather than one burst per period.
	period := time.Second / time.Duration(l.PPS)
	slots := int(period / time.Millisecond)
	if slots < 1 {
		slots = 1
	}
	nSend := 2
	var swg sync.WaitGroup
	for s := range nSend {
		swg.Add(1)
		go func() {
			defer swg.Done()
			pkt := make([]byte, l.Size)
			pkt[0], pkt[1] = 0x80, 8
			next := time.Now()
			slot := 0
			for !stop.Load() {
				flag := byte(0)
				if measuring.Load() {
					flag = 1
				}
				for j := s; j < len(l.Phones); j += nSend {
					if (j/2)%slots != slot {
						continue
					}
					p := l.Phones[j]
					p.seq++
					p.ts += 160
					binary.BigEndian.PutUint16(pkt[2:], p.seq)
					binary.BigEndian.PutUint32(pkt[4:], p.ts)
					binary.BigEndian.PutUint32(pkt[8:], p.ssrc)
					binary.BigEndian.PutUint64(pkt[12:], uint64(time.Since(epoch)))
					pkt[20] = flag
					_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(p.fd), uintptr(unsafe.Pointer(&pkt[0])), uintptr(len(pkt)),
						0, uintptr(unsafe.Pointer(&p.dst)), unix.SizeofSockaddrInet4)
					if e == 0 && flag == 1 {
						sent.Add(1)
					}
				}
				slot = (slot + 1) % slots
				next = next.Add(period / time.Duration(slots))
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
			}
		}()
	}
	time.Sleep(l.Warmup)
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
	var hist [nBuckets]uint64
	for _, st := range stats {
		res.Received += st.count
		for i, c := range st.hist {
			hist[i] += c
		}
	}
	res.P50, res.P99, res.Max = quantile(&hist, res.Received, 0.50), quantile(&hist, res.Received, 0.99), quantile(&hist, res.Received, 1)
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
	return fmt.Sprintf("sent=%d recv=%d rx_pps=%.0f loss=%.4f%% lat_p50=%s lat_p99=%s lat_max=%s",
		r.Sent, r.Received, float64(r.Received)/r.Elapsed.Seconds(), 100*r.Loss(), r.P50, r.P99, r.Max)
}
