package media

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// The eBPF engine runs the nftables tests' scenarios (kernel_test.go) in
// namespaces of its own (testEngine picks the engine by the TestEBPF
// prefix; inKernelNamespaces re-executes the test by name).

// TestEBPFDatapath: rewrite both ways, RTCP, a stranger reaching user
// space and not forwarded, a re-INVITE moving B, kernel counters credited,
// release removing the entries.
func TestEBPFDatapath(t *testing.T) { TestKernelDatapath(t) }

// TestEBPFDatapathRelatchAfterSilence: the entry moves to the new source
// after relatch_after; the old source is no longer forwarded.
func TestEBPFDatapathRelatchAfterSilence(t *testing.T) { TestKernelDatapathRelatchAfterSilence(t) }

// TestEBPFDatapathHoldResumeCodec: hold, resume and codec change keep the
// legs in the kernel; a resume on a new port re-points the entry.
func TestEBPFDatapathHoldResumeCodec(t *testing.T) { TestKernelDatapathHoldResumeCodec(t) }

// TestEBPFJoin: joined legs are forwarded phone to phone, the dead PBX's
// entries removed, renumbered payload types kept in user space.
func TestEBPFJoin(t *testing.T) { TestKernelJoin(t) }

// TestEBPFDatapathVLAN: a phone on a voice VLAN (802.1Q, tag 100) calls
// one on the untagged LAN. The program on the parent interface sees the
// tagged packet with its tag moved into the packet's metadata: it must
// leave it to the VLAN device (whose own program forwards it), or the
// redirect would carry the tag onto the untagged LAN. The phones' host
// filters strictly by reverse path, as a phone on one network would drop
// a frame on a VLAN it is not on.
func TestEBPFDatapathVLAN(t *testing.T) {
	const vlanRelay, vlanPhone = "10.77.100.1", "10.77.100.2"
	pns := inKernelNamespacesWith(t, func(run func(args ...string), rns, pns string) {
		if out, err := exec.Command("ip", "-n", rns, "link", "add", "link", "v0", "name", "v0.100", "type", "vlan", "id", "100").CombinedOutput(); err != nil {
			t.Skipf("no 802.1Q VLAN devices in this kernel (CONFIG_VLAN_8021Q): %v %s", err, out)
		}
		run("ip", "-n", rns, "addr", "add", vlanRelay+"/24", "dev", "v0.100")
		run("ip", "-n", rns, "link", "set", "v0.100", "up")
		run("ip", "-n", pns, "link", "add", "link", "v1", "name", "v1.100", "type", "vlan", "id", "100")
		run("ip", "-n", pns, "addr", "add", vlanPhone+"/24", "dev", "v1.100")
		run("ip", "-n", pns, "link", "set", "v1.100", "up")
		// The VLAN phone reaches the relay through its VLAN's gateway.
		run("ip", "-n", pns, "rule", "add", "from", vlanPhone, "table", "100")
		run("ip", "-n", pns, "route", "add", "default", "via", vlanRelay, "dev", "v1.100", "table", "100")
		run("ip", "netns", "exec", pns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.v1.rp_filter=1")
	})
	if pns == "" {
		return
	}
	r := newKernelRelay(t, DatapathKernel, nil)
	a, b := phoneIn(t, pns, vlanPhone), phoneIn(t, pns, kPhoneB)
	pa, pb, toA, toB := latchedCall(t, r, "vlan", a, b)
	before := kernelPackets(t, r, pa, a.addr())
	relayOnce(t, a, toA, b, toB)
	relayOnce(t, b, toB, a, toA)
	if got := kernelPackets(t, r, pa, a.addr()); got <= before {
		t.Fatalf("kernel forwarded %d packets from the VLAN phone, want more than %d", got, before)
	}
	if got := kernelPackets(t, r, pb, b.addr()); got == 0 {
		t.Fatal("kernel forwarded nothing from the LAN phone to the VLAN phone")
	}
}

// TestEBPFDatapathImport: a replicated session's latches are installed at
// Import.
func TestEBPFDatapathImport(t *testing.T) { TestKernelDatapathImport(t) }

// TestEBPFDatapathFailoverVIP: entries installed before the VIP arrives
// forward once it does (the route lookup finds the VIP as source).
func TestEBPFDatapathFailoverVIP(t *testing.T) { TestKernelDatapathFailoverVIP(t) }

// TestEBPFDatapathManyLegs: 3000 legs latching at once all get entries.
func TestEBPFDatapathManyLegs(t *testing.T) { TestKernelDatapathManyLegs(t) }

// tcxPrograms lists the names of the programs attached at TCX ingress of
// the interface.
func tcxPrograms(t *testing.T, ifname string) []string {
	t.Helper()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ap := range res.Programs {
		p, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		_ = p.Close()
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, info.Name)
	}
	return names
}

// TestEBPFDatapathStartCleansUp: a program of an earlier run still
// attached (with an entry that would forward A's packets to B) is
// detached when a relay starts: one program left on the interface, the
// leftover entry forwards nothing, the new relay's forwarding works. At
// close the relay's program is detached too.
func TestEBPFDatapathStartCleansUp(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	dead, err := openKernel(netip.MustParseAddr(kRelay), EngineEBPF, zaptest.NewLogger(t), time.Now, openEBPFKengine)
	if err != nil {
		t.Fatal(err)
	}
	if dead.eng.name() != EngineEBPF {
		t.Fatalf("engine %s, want ebpf", dead.eng.name())
	}
	t.Cleanup(dead.eng.close)
	const leftPort = 40090
	var e kelem
	binary.BigEndian.PutUint16(e.key[0:], leftPort)
	ap, bp := a.addr(), b.addr()
	copy(e.key[4:8], ap.Addr().AsSlice())
	binary.BigEndian.PutUint16(e.key[8:], ap.Port())
	copy(e.val[0:4], bp.Addr().AsSlice())
	binary.BigEndian.PutUint16(e.val[4:], leftPort+2)
	binary.BigEndian.PutUint16(e.val[8:], bp.Port())
	if err := dead.eng.apply(nil, []kelem{e}); err != nil {
		t.Fatal(err)
	}
	// The leftover forwards while attached: the scenario is real.
	relayOnce(t, a, kAP(kRelay, leftPort), b, kAP(kRelay, leftPort+2))

	r := newKernelRelay(t, DatapathKernel, nil)
	if got := tcxPrograms(t, "v0"); len(got) != 1 || got[0] != ebpfProgName {
		t.Fatalf("programs on v0 after the start: %v, want the new relay's only", got)
	}
	a.sendRTP(kAP(kRelay, leftPort))
	mustNotReceive(t, b, 300*time.Millisecond)
	checkFreshRelay(t, r, pns)
	r.Close()
	if got := tcxPrograms(t, "v0"); len(got) != 0 {
		t.Fatalf("programs on v0 after close: %v, want none", got)
	}
}

// TestEBPFDatapathFallback: a program that cannot be loaded falls back to
// nftables, logged once, and the kernel path still forwards.
func TestEBPFDatapathFallback(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	core, logs := observer.New(zap.WarnLevel)
	cfg := kernelConfig(t)
	cfg.KernelEngine = EngineEBPF
	noBPF := func([4]byte) (kengine, error) { return nil, errors.New("no BPF here") }
	r, err := newRelay(cfg, zap.New(core), nil, time.Now, noBPF)
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	t.Cleanup(r.Close)
	if r.KernelEngine() != EngineNftables || logs.FilterMessage("eBPF data path unavailable, forwarding latched legs with nftables").Len() != 1 {
		t.Fatalf("engine %q, warnings %v; want nftables after one warning", r.KernelEngine(), logs.All())
	}
	checkFreshRelay(t, r, pns)
}

// TestEBPFDatapathChecksums: IP and UDP checksums valid after the
// program's rewrite, a zero UDP checksum kept.
func TestEBPFDatapathChecksums(t *testing.T) { TestKernelDatapathChecksums(t) }
