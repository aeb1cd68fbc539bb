package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// A VIP left on the interface by a crash is removed in Start before the node joins
// (TestStaleVIPRemovedAtStart). Only one VIP change runs at a time: the leader loop,
// close and the final shutdown take the same lock, and once close has begun no Acquire
// can follow (TestCloseSerializesVIP).

// VIP adds and removes the virtual address on a local link and announces it to the
// segment (gratuitous ARP for IPv4, unsolicited neighbour advertisement for IPv6). It
// knows nothing about leadership: the Cluster decides when to call Acquire and Release.
type VIP struct {
	cfg    VIPConfig
	prefix netip.Prefix
	log    *zap.Logger
	m      *metrics

	mu       sync.Mutex
	held     bool
	stopGARP context.CancelFunc
	garpDone chan struct{}
}

// NewVIP checks the configuration; it touches no interface yet. Used alone it exports
// no metrics (the Cluster registers hapbx_cluster_vip_held for its own VIP).
func NewVIP(cfg VIPConfig, log *zap.Logger) (*VIP, error) {
	return newVIP(cfg, log, newMetrics(nil))
}

func newVIP(cfg VIPConfig, log *zap.Logger, m *metrics) (*VIP, error) {
	p, err := netip.ParsePrefix(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("vip.address %q: %w", cfg.Address, err)
	}
	if cfg.GARPCount < 1 {
		cfg.GARPCount = 1
	}
	return &VIP{cfg: cfg, prefix: p, log: log.With(zap.String("vip", cfg.Address), zap.String("interface", cfg.Interface)), m: m}, nil
}

func (v *VIP) nlAddr() *netlink.Addr {
	a := v.prefix.Addr()
	bits := 32
	if a.Is6() {
		bits = 128
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(v.prefix.Bits(), bits)}}
	if a.Is6() {
		// No duplicate address detection: the address must answer at once; raft, not DAD,
		// guarantees there is one holder.
		addr.Flags = unix.IFA_F_NODAD
	}
	return addr
}

// Acquire adds the address (no error if already present) and sends the first
// announcement before returning; the remaining GARPCount-1 follow in the background.
func (v *VIP) Acquire() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	link, err := netlink.LinkByName(v.cfg.Interface)
	if err != nil {
		return fmt.Errorf("vip: interface %q: %w", v.cfg.Interface, err)
	}
	if err := netlink.AddrAdd(link, v.nlAddr()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("vip: add %s to %s: %w", v.cfg.Address, v.cfg.Interface, err)
	}
	if !v.held {
		v.log.Info("VIP added")
	}
	v.held = true
	v.m.vipHeld.Set(1)
	v.stopAnnounceLocked()
	ctx, cancel := context.WithCancel(context.Background())
	v.stopGARP = cancel
	done := make(chan struct{})
	v.garpDone = done
	ifi, err := net.InterfaceByName(v.cfg.Interface)
	if err != nil {
		close(done)
		return fmt.Errorf("vip: interface %q: %w", v.cfg.Interface, err)
	}
	// The socket is opened here, on the caller's thread: it stays in the caller's
	// network namespace for the repeats sent from another goroutine (and thread).
	an, err := v.openAnnouncer(ifi)
	if err != nil {
		close(done)
		v.log.Warn("VIP announcement failed", zap.Error(err))
		return nil // the address is there; neighbours learn it when they next ask
	}
	v.announce(an)
	go func() {
		defer close(done)
		defer an.Close()
		for i := 1; i < v.cfg.GARPCount; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(v.cfg.GARPInterval):
			}
			v.announce(an)
		}
	}()
	return nil
}

func (v *VIP) stopAnnounceLocked() {
	if v.stopGARP != nil {
		v.stopGARP()
		<-v.garpDone
		v.stopGARP = nil
	}
}

// Release removes the address (no error if absent) and stops pending announcements.
func (v *VIP) Release() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stopAnnounceLocked()
	link, err := netlink.LinkByName(v.cfg.Interface)
	if err != nil {
		return fmt.Errorf("vip: interface %q: %w", v.cfg.Interface, err)
	}
	err = netlink.AddrDel(link, v.nlAddr())
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("vip: remove %s from %s: %w", v.cfg.Address, v.cfg.Interface, err)
	}
	if v.held || err == nil {
		v.log.Info("VIP removed")
	}
	v.held = false
	v.m.vipHeld.Set(0)
	return nil
}

// Held reports whether the address is on the interface right now (asks the kernel).
func (v *VIP) Held() (bool, error) {
	link, err := netlink.LinkByName(v.cfg.Interface)
	if err != nil {
		return false, fmt.Errorf("vip: interface %q: %w", v.cfg.Interface, err)
	}
	fam := netlink.FAMILY_V4
	if v.prefix.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, fam)
	if err != nil {
		return false, fmt.Errorf("vip: list addresses of %q: %w", v.cfg.Interface, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == v.prefix.Addr() {
			return true, nil
		}
	}
	return false, nil
}

// announcer sends one announcement of the VIP per call over a socket kept open
// for all of them.
type announcer interface {
	announce() error
	Close() error
}

func (v *VIP) openAnnouncer(ifi *net.Interface) (announcer, error) {
	if v.prefix.Addr().Is4() {
		return openGARP(ifi, v.prefix.Addr())
	}
	return openUnsolicitedNA(ifi, v.prefix.Addr())
}

func (v *VIP) announce(an announcer) {
	if err := an.announce(); err != nil {
		v.log.Warn("VIP announcement failed", zap.Error(err))
		return
	}
	v.m.garpSent.Inc()
}

// garp broadcasts an ARP request and an ARP reply whose sender and target are both
// the VIP: hosts and switches that have the address cached update it to our MAC (Linux
// applies a gratuitous ARP even within its neighbour locktime).
type garp struct {
	c      *packet.Conn
	ifi    string
	frames [][]byte
}

func openGARP(ifi *net.Interface, ip netip.Addr) (*garp, error) {
	g := &garp{ifi: ifi.Name}
	for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
		p, err := arp.NewPacket(op, ifi.HardwareAddr, ip, ethernet.Broadcast, ip)
		if err != nil {
			return nil, fmt.Errorf("garp: %w", err)
		}
		pb, err := p.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("garp: %w", err)
		}
		f := &ethernet.Frame{Destination: ethernet.Broadcast, Source: ifi.HardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
		fb, err := f.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("garp: %w", err)
		}
		g.frames = append(g.frames, fb)
	}
	c, err := packet.Listen(ifi, packet.Raw, int(ethernet.EtherTypeARP), nil)
	if err != nil {
		return nil, fmt.Errorf("garp: raw socket on %s: %w", ifi.Name, err)
	}
	g.c = c
	return g, nil
}

func (g *garp) announce() error {
	for _, fb := range g.frames {
		if _, err := g.c.WriteTo(fb, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
			return fmt.Errorf("garp: send on %s: %w", g.ifi, err)
		}
	}
	return nil
}

func (g *garp) Close() error { return g.c.Close() }

// unsolicitedNA sends an unsolicited, overriding neighbour advertisement for the VIP
// to all nodes (RFC 4861 7.2.6), from the VIP itself: it is added without DAD and so
// usable at once, whereas the interface's link-local address may still be tentative
// (a link that just came up), and a tentative address cannot be a source.
type unsolicitedNA struct {
	c   *ndp.Conn
	ifi string
	m   *ndp.NeighborAdvertisement
}

func openUnsolicitedNA(ifi *net.Interface, ip netip.Addr) (*unsolicitedNA, error) {
	c, _, err := ndp.Listen(ifi, ndp.Addr(ip.String()))
	if err != nil {
		return nil, fmt.Errorf("unsolicited NA: listen on %s: %w", ifi.Name, err)
	}
	return &unsolicitedNA{c: c, ifi: ifi.Name, m: &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}},
	}}, nil
}

func (n *unsolicitedNA) announce() error {
	if err := n.c.WriteTo(n.m, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
		return fmt.Errorf("unsolicited NA: send on %s: %w", n.ifi, err)
	}
	return nil
}

func (n *unsolicitedNA) Close() error { return n.c.Close() }
