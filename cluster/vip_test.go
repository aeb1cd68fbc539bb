package cluster

import (
	"bytes"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// inNetns runs fn on an OS thread switched into namespace ns, then switches the thread
// back; only if that fails is the thread left locked (the runtime then discards it).
// Sockets and netlink calls made by fn live in ns.
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread()
		defer func() { done <- recover() }()
		orig, err := netns.Get()
		if err != nil {
			panic(err)
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			panic(err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			panic(err)
		}
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		fn()
	}()
	if p := <-done; p != nil {
		t.Fatalf("in netns %s: %v", ns, p)
	}
}

func TestVIPAcquireRelease(t *testing.T) {
	needRoot(t)
	labPreClean()
	t.Cleanup(labPreClean)
	ns := "hcl-vip"
	sh(t, "ip", "netns", "add", ns)
	sh(t, "ip", "netns", "add", ns+"2")
	sh(t, "ip", "link", "add", labIf, "netns", ns, "type", "veth", "peer", "name", labIf, "netns", ns+"2")
	sh(t, "ip", "-n", ns, "link", "set", labIf, "up")
	sh(t, "ip", "-n", ns+"2", "link", "set", labIf, "up")
	sh(t, "ip", "-n", ns, "addr", "add", "10.213.0.1/24", "dev", labIf)

	var mac net.HardwareAddr
	inNetns(t, ns, func() {
		ifi, err := net.InterfaceByName(labIf)
		if err != nil {
			panic(err)
		}
		mac = ifi.HardwareAddr
	})
	for _, addr := range []string{"10.213.0.13/24", "fd00:213::13/64"} {
		v, err := NewVIP(VIPConfig{Address: addr, Interface: labIf, GARPCount: 3, GARPInterval: 10 * time.Millisecond}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		vip := netip.MustParsePrefix(addr).Addr()
		stop := capture(t, ns+"2", vip.Is4())
		inNetns(t, ns, func() {
			check := func(want bool) {
				if held, err := v.Held(); err != nil || held != want {
					panic(addr + ": held=" + map[bool]string{true: "true", false: "false"}[held] + " " + errString(err))
				}
			}
			check(false)
			if err := v.Release(); err != nil { // absent: no error
				panic(err)
			}
			if err := v.Acquire(); err != nil {
				panic(err)
			}
			if err := v.Acquire(); err != nil { // already there: no error
				panic(err)
			}
			check(true)
			time.Sleep(50 * time.Millisecond) // the repeated announcements
			if err := v.Release(); err != nil {
				panic(err)
			}
			check(false)
		})
		if n := announcements(t, stop(), vip, mac); n < 3 {
			t.Errorf("%s: the peer saw %d announcements of the VIP with our MAC, want >= 3 (garp_count)", addr, n)
		}
	}
	out, _ := exec.Command("ip", "-n", ns, "addr", "show", "dev", labIf).CombinedOutput()
	t.Logf("after release:\n%s", out)

	bad, _ := NewVIP(VIPConfig{Address: "10.213.0.13/24", Interface: "hclnope", GARPCount: 1, GARPInterval: time.Millisecond}, zap.NewNop())
	inNetns(t, ns, func() {
		if err := bad.Acquire(); err == nil {
			panic("acquire on a missing interface succeeded")
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// capture records, in namespace ns on labIf, the ARP (v4) or IPv6 frames
// until the returned func is called, which returns them.
func capture(t *testing.T, ns string, v4 bool) func() [][]byte {
	t.Helper()
	et := ethernet.EtherTypeIPv6
	if v4 {
		et = ethernet.EtherTypeARP
	}
	var c *packet.Conn
	inNetns(t, ns, func() {
		ifi, err := net.InterfaceByName(labIf)
		if err != nil {
			panic(err)
		}
		if c, err = packet.Listen(ifi, packet.Raw, int(et), nil); err != nil {
			panic(err)
		}
	})
	var frames [][]byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			frames = append(frames, append([]byte(nil), buf[:n]...))
		}
	}()
	return func() [][]byte {
		time.Sleep(20 * time.Millisecond) // frames still in flight
		c.Close()
		<-done
		return frames
	}
}

// announcements counts the frames announcing vip at mac: gratuitous ARP
// (sender and target the VIP) or unsolicited, overriding neighbour
// advertisements for it.
func announcements(t *testing.T, frames [][]byte, vip netip.Addr, mac net.HardwareAddr) int {
	t.Helper()
	n := 0
	for _, b := range frames {
		var f ethernet.Frame
		if err := f.UnmarshalBinary(b); err != nil || !bytes.Equal(f.Source, mac) {
			continue
		}
		if vip.Is4() {
			var p arp.Packet
			err := p.UnmarshalBinary(f.Payload)
			if err == nil && p.SenderIP == vip && p.TargetIP == vip && bytes.Equal(p.SenderHardwareAddr, mac) {
				n++
			}
			continue
		}
		// IPv6 header (40 bytes, next header 58 = ICMPv6), then the NDP message.
		if len(f.Payload) < 40 || f.Payload[6] != 58 {
			continue
		}
		m, err := ndp.ParseMessage(f.Payload[40:])
		if na, ok := m.(*ndp.NeighborAdvertisement); err == nil && ok && na.TargetAddress == vip && na.Override && !na.Solicited {
			for _, o := range na.Options {
				if lla, ok := o.(*ndp.LinkLayerAddress); ok && bytes.Equal(lla.Addr, mac) {
					n++
				}
			}
		}
	}
	if n == 0 {
		t.Logf("%d frames captured, none announcing %s", len(frames), vip)
	}
	return n
}
