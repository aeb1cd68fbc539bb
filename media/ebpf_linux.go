package media

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The names of hapbx's program and map in the kernel: a program of this
// name attached at start is a leftover of an earlier run.
const (
	ebpfProgName = "hapbx_media"
	ebpfMapName  = "hapbx_legs"
)

// ebpfMaxLegs sizes the array map: one entry per possible relay port
// (2.5 MiB allocated at start).
const ebpfMaxLegs = 65536

// bpfKey is the map key: the relay port a packet is sent to (host order);
// the program checks the relay address itself.
type bpfKey uint32

// bpfVal is the map value: the only source the kernel takes (strict
// latching; any other passes up to the relay's socket), what the packet
// becomes (destination, and the relay's other port as its source; the
// source address becomes the relay address the packet was sent to), and
// what the program counts. Offsets are the program's (bv*). All zero: a
// free port. The first two 8-byte words are the halves the program reads
// in one load each (see apply).
type bpfVal struct {
	Src      [4]byte
	SrcPort  [2]byte
	_        [2]byte
	Dst      [4]byte
	NewSport [2]byte
	DstPort  [2]byte
	Packets  uint64 // forwarded packets
	Bytes    uint64 // their IP lengths, as the nftables counter counts
	Seen     uint64 // bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last one
}

const (
	bvSrc     = 0
	bvSrcPort = 4
	bvDst     = 8
	bvPorts   = 12 // new source port . destination port, one 32-bit word
	bvPackets = 16
	bvBytes   = 24
	bvSeen    = 32
	bvSize    = 40
)

// ebpfEngine forwards latched legs with a TC program (clsact ingress,
// attached through TCX links) on every Ethernet interface of the
// namespace: a packet to a relay port in the map, from the latched
// source, is rewritten, its checksums fixed, its next hop looked up
// (bpf_fib_lookup) and redirected out of that interface. Everything else
// goes on to the stack and the relay's sockets.
type ebpfEngine struct {
	relay [4]byte
	prog  *ebpf.Program
	legs  *ebpf.Map
	links []link.Link
}

// openEBPF loads the program and attaches it, after detaching the
// program a previous run left on any interface. TCX links are not
// pinned: the kernel detaches them when the process that holds them
// exits, so a leftover is rare (another live process of ours, or an
// attachment by hand), but the start removes it as the nftables path
// removes its table.
func openEBPF(relay [4]byte) (*ebpfEngine, error) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		// The program compares an entry's halves as little-endian words.
		return nil, errors.New("eBPF engine: big-endian host not supported")
	}
	legs, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: ebpfMapName, Type: ebpf.Array, KeySize: 4, ValueSize: bvSize,
		MaxEntries: ebpfMaxLegs,
	})
	if err != nil {
		return nil, fmt.Errorf("eBPF map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: ebpfProgName, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: ebpfProgram(legs.FD(), relay),
	})
	if err != nil {
		_ = legs.Close()
		return nil, fmt.Errorf("eBPF program: %w", err)
	}
	e := &ebpfEngine{relay: relay, prog: prog, legs: legs}
	ifs, err := net.Interfaces()
	if err != nil {
		e.close()
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, ifc := range ifs {
		// The program parses an Ethernet header: loopback and L3 devices
		// (tun, WireGuard) are left alone.
		if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
			continue
		}
		if err := detachLeftovers(ifc.Index); err != nil {
			e.close()
			return nil, fmt.Errorf("%s: %w", ifc.Name, err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			e.close()
			return nil, fmt.Errorf("attach to %s: %w", ifc.Name, err)
		}
		e.links = append(e.links, l)
	}
	if len(e.links) == 0 {
		e.close()
		return nil, errors.New("no Ethernet interface to attach the eBPF program to")
	}
	return e, nil
}

// ebpfOpener loads and attaches the eBPF engine for a relay address.
type ebpfOpener func(relay [4]byte) (kengine, error)

// openEBPFKengine is the ebpfOpener of a running relay: openEBPF.
func openEBPFKengine(relay [4]byte) (kengine, error) {
	e, err := openEBPF(relay)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// detachLeftovers detaches the TCX ingress links of programs named
// ebpfProgName on the interface.
func detachLeftovers(ifindex int) error {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("query TCX programs: %w", err)
	}
	for _, ap := range res.Programs {
		p, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := p.Info()
		_ = p.Close()
		lid, ok := ap.LinkID()
		if err != nil || info.Name != ebpfProgName || !ok {
			continue
		}
		l, err := link.NewFromID(lid)
		if err != nil {
			continue
		}
		err = linkDetach(l)
		_ = l.Close()
		if err != nil {
			return fmt.Errorf("detach leftover link %d: %w", lid, err)
		}
	}
	return nil
}

// linkDetach detaches a link someone else holds (BPF_LINK_DETACH, which
// this version of cilium/ebpf does not wrap).
func linkDetach(l link.Link) error {
	f, ok := l.(interface{ FD() int })
	if !ok {
		return errors.New("link without a descriptor")
	}
	attr := struct{ fd uint32 }{uint32(f.FD())}
	_, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_DETACH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if e != 0 {
		return e
	}
	return nil
}

func (e *ebpfEngine) name() string { return EngineEBPF }

// close detaches the program and frees the map.
func (e *ebpfEngine) close() {
	for _, l := range e.links {
		_ = l.Close()
	}
	e.links = nil
	_ = e.prog.Close()
	_ = e.legs.Close()
}

// The program's frame: the map key at fp-8, the bpf_fib_lookup
// parameters at fp-72 (64 bytes), the old ports word at fp-80, the map
// entry's halves at fp-88 and fp-96.
const (
	fpKey   = -8
	fpLen   = -4 // the IP total length, host order, for the byte counter
	fpFib   = -72
	fpPorts = -80
	fpSrc   = -88 // the entry's first half: latched source and port
	fpDst   = -96 // its second half: destination, new ports
	// struct bpf_fib_lookup offsets
	fibFamily  = 0
	fibL4      = 1
	fibSport   = 2
	fibDport   = 4
	fibIfindex = 8
	fibTos     = 12
	fibSrc     = 16
	fibDst     = 32
	fibSmac    = 52
	fibDmac    = 58
	fibSize    = 64
	// struct __sk_buff offsets
	skbVLAN    = 20 // vlan_present
	skbIfindex = 40
	skbData    = 76
	skbDataEnd = 80
	// Packet offsets: Ethernet, IPv4 without options, UDP, first payload byte.
	pktEthType = 12
	pktVerIHL  = 14
	pktTos     = 15
	pktTotLen  = 16
	pktFrag    = 20
	pktProto   = 23
	pktIPCsum  = 24
	pktSrc     = 26
	pktDst     = 30
	pktSport   = 34
	pktDport   = 36
	pktUDPCsum = 40
	pktPayload = 42

	fibRetSuccess = 0 // BPF_FIB_LKUP_RET_SUCCESS
	fibRetNoNeigh = 7 // BPF_FIB_LKUP_RET_NO_NEIGH: the route is known, the neighbour not yet
	tcxNext       = -1
	csumPseudoHdr = 0x10 // BPF_F_PSEUDO_HDR
	csumMangled0  = 0x20 // BPF_F_MARK_MANGLED_0: a zero UDP checksum stays zero
)

// be16 is what a 16-bit load of the big-endian value v yields on this host.
func be16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// ebpfProgram is the TC program, written with cilium/ebpf's asm package
// (no compiler needed at build or run time). R6 holds the context, R7 the
// map value, R8 the packet start (bounds checked once for the 43 bytes
// read or written), R9 the fib lookup's result.
func ebpfProgram(legsFD int, relay [4]byte) asm.Instructions {
	const pass = "pass"
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// A VLAN-tagged packet (on the parent interface, its tag moved
		// into the metadata) goes on to its VLAN device, whose own
		// program forwards it: redirected from here it would keep its
		// tag on the way out, onto a network not of that VLAN.
		asm.LoadMem(asm.R2, asm.R6, skbVLAN, asm.Word),
		asm.JNE.Imm(asm.R2, 0, pass),
		asm.LoadMem(asm.R8, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R9, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R2, asm.R8),
		asm.Add.Imm(asm.R2, pktPayload+1),
		asm.JGT.Reg(asm.R2, asm.R9, pass),
		// IPv4 without options, UDP, not a fragment, RTP/RTCP version 2.
		asm.LoadMem(asm.R2, asm.R8, pktEthType, asm.Half),
		asm.JNE.Imm(asm.R2, be16(unix.ETH_P_IP), pass),
		asm.LoadMem(asm.R2, asm.R8, pktVerIHL, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, pass),
		asm.LoadMem(asm.R2, asm.R8, pktProto, asm.Byte),
		asm.JNE.Imm(asm.R2, unix.IPPROTO_UDP, pass),
		asm.LoadMem(asm.R2, asm.R8, pktFrag, asm.Half),
		asm.And.Imm(asm.R2, be16(0x3fff)),
		asm.JNE.Imm(asm.R2, 0, pass),
		asm.LoadMem(asm.R2, asm.R8, pktPayload, asm.Byte),
		asm.And.Imm(asm.R2, 0xc0),
		asm.JNE.Imm(asm.R2, 0x80, pass),
		// Look up (destination address, destination port).
		asm.LoadMem(asm.R2, asm.R8, pktDst, asm.Word),
		asm.JNE.Imm32(asm.R2, int32(binary.NativeEndian.Uint32(relay[:])), pass),
		asm.LoadMem(asm.R2, asm.R8, pktDport, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, fpKey, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, legsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.Mov.Reg(asm.R7, asm.R0),
		// Only the latched source: a stranger, or any packet to a free
		// port (a zero entry), goes up to user space. The entry's two
		// halves are read with one 8-byte load each and used from the
		// stack: user space rewrites an entry in place, and a half read
		// in two loads could mix an old and a new address.
		asm.LoadMem(asm.R3, asm.R7, bvSrc, asm.DWord),
		asm.JEq.Imm(asm.R3, 0, pass),
		asm.LoadMem(asm.R2, asm.R8, pktSrc, asm.Word),
		asm.LoadMem(asm.R4, asm.R8, pktSport, asm.Half),
		asm.LSh.Imm(asm.R4, 32),
		asm.Or.Reg(asm.R2, asm.R4),
		asm.JNE.Reg(asm.R2, asm.R3, pass),
		asm.StoreMem(asm.RFP, fpSrc, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, asm.R7, bvDst, asm.DWord),
		asm.Mov.Reg32(asm.R4, asm.R3),
		asm.JEq.Imm(asm.R4, 0, pass),
		asm.StoreMem(asm.RFP, fpDst, asm.R3, asm.DWord),
		// Route to the new destination from the relay address.
		asm.StoreImm(asm.RFP, fpFib, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+8, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+16, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+24, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+32, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+40, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+48, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+56, 0, asm.DWord),
		asm.StoreImm(asm.RFP, fpFib+fibFamily, unix.AF_INET, asm.Byte),
		asm.StoreImm(asm.RFP, fpFib+fibL4, unix.IPPROTO_UDP, asm.Byte),
		asm.LoadMem(asm.R2, asm.RFP, fpDst+4, asm.Half),
		asm.StoreMem(asm.RFP, fpFib+fibSport, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, fpDst+6, asm.Half),
		asm.StoreMem(asm.RFP, fpFib+fibDport, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R6, skbIfindex, asm.Word),
		asm.StoreMem(asm.RFP, fpFib+fibIfindex, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R8, pktTos, asm.Byte),
		asm.StoreMem(asm.RFP, fpFib+fibTos, asm.R2, asm.Byte),
		asm.LoadMem(asm.R2, asm.R8, pktDst, asm.Word),
		asm.StoreMem(asm.RFP, fpFib+fibSrc, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, fpDst, asm.Word),
		asm.StoreMem(asm.RFP, fpFib+fibDst, asm.R2, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpFib),
		asm.Mov.Imm(asm.R3, fibSize),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnFibLookup.Call(),
		// No route, a local destination, forwarding off: user space.
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.JEq.Imm(asm.R9, fibRetSuccess, "rewrite"),
		asm.JNE.Imm(asm.R9, fibRetNoNeigh, pass),
		// The IP length, for the byte counter (not the frame's: a short
		// frame's Ethernet padding is no part of it, as nftables counts).
		asm.LoadMem(asm.R2, asm.R8, pktTotLen, asm.Half).WithSymbol("rewrite"),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, fpLen, asm.R2, asm.Half),
		// The old ports word (source port . relay port) for the checksum.
		asm.LoadMem(asm.R2, asm.RFP, fpSrc+4, asm.Half),
		asm.StoreMem(asm.RFP, fpPorts, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.R8, pktDport, asm.Half),
		asm.StoreMem(asm.RFP, fpPorts+2, asm.R2, asm.Half),
		// Rewrite: source the relay address (the old destination),
		// destination and ports from the map.
		asm.LoadMem(asm.R2, asm.R8, pktDst, asm.Word),
		asm.StoreMem(asm.R8, pktSrc, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, fpDst, asm.Word),
		asm.StoreMem(asm.R8, pktDst, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, fpDst+4, asm.Word),
		asm.StoreMem(asm.R8, pktSport, asm.R2, asm.Word),
		asm.JNE.Imm(asm.R9, fibRetSuccess, "csum"),
		// MACs of the next hop (fp-relative loads stay 2-byte aligned).
		asm.LoadMem(asm.R2, asm.RFP, fpFib+fibDmac, asm.Half),
		asm.StoreMem(asm.R8, 0, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, fpFib+fibDmac+2, asm.Half),
		asm.StoreMem(asm.R8, 2, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, fpFib+fibDmac+4, asm.Half),
		asm.StoreMem(asm.R8, 4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, fpFib+fibSmac, asm.Word),
		asm.StoreMem(asm.R8, 6, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, fpFib+fibSmac+4, asm.Half),
		asm.StoreMem(asm.R8, 10, asm.R2, asm.Half),
		// Checksums: the addresses (relay address moved from destination
		// to source, which cancels out) change the source for the new
		// destination in the IP header and the UDP pseudo-header; the
		// ports word changes in the UDP checksum.
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("csum"),
		asm.Mov.Imm(asm.R2, pktIPCsum),
		asm.LoadMem(asm.R3, asm.RFP, fpSrc, asm.Word),
		asm.LoadMem(asm.R4, asm.RFP, fpDst, asm.Word),
		asm.Mov.Imm(asm.R5, 4),
		asm.FnL3CsumReplace.Call(),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, pktUDPCsum),
		asm.LoadMem(asm.R3, asm.RFP, fpSrc, asm.Word),
		asm.LoadMem(asm.R4, asm.RFP, fpDst, asm.Word),
		asm.Mov.Imm(asm.R5, csumPseudoHdr|csumMangled0|4),
		asm.FnL4CsumReplace.Call(),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, pktUDPCsum),
		asm.LoadMem(asm.R3, asm.RFP, fpPorts, asm.Word),
		asm.LoadMem(asm.R4, asm.RFP, fpDst+4, asm.Word),
		asm.Mov.Imm(asm.R5, csumMangled0|4),
		asm.FnL4CsumReplace.Call(),
		// Count (atomically: several CPUs may carry one leg) and stamp.
		asm.Mov.Imm(asm.R2, 1),
		xadd(asm.R7, bvPackets, asm.R2),
		asm.LoadMem(asm.R2, asm.RFP, fpLen, asm.Half),
		xadd(asm.R7, bvBytes, asm.R2),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R7, bvSeen, asm.R0, asm.DWord),
		// Out of the route's interface; without the neighbour's MAC the
		// kernel resolves it (bpf_redirect_neigh).
		asm.LoadMem(asm.R1, asm.RFP, fpFib+fibIfindex, asm.Word),
		asm.Mov.Imm(asm.R2, 0),
		asm.JEq.Imm(asm.R9, fibRetNoNeigh, "neigh"),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R2, 0).WithSymbol("neigh"),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol(pass),
		asm.Return(),
	}
}

// xadd is an atomic 64-bit *(dst+off) += src.
func xadd(dst asm.Register, off int16, src asm.Register) asm.Instruction {
	ins := asm.StoreXAdd(dst, src, asm.DWord)
	ins.Offset = off
	return ins
}

// keyOf and valOf translate a kernel element (kkey/kval, the nftables
// layout) into the map's.
func (e *ebpfEngine) keyOf(k kkey) bpfKey {
	return bpfKey(binary.BigEndian.Uint16(k[0:2]))
}

func valOf(el kelem) bpfVal {
	return bpfVal{
		Src: [4]byte(el.key[4:8]), SrcPort: [2]byte(el.key[8:10]),
		Dst: [4]byte(el.val[0:4]), NewSport: [2]byte(el.val[4:6]), DstPort: [2]byte(el.val[8:10]),
	}
}

// elemOf is the kernel element a map entry stands for, with its counters
// and how long ago (by the kernel's clock, mono) it last forwarded.
func elemOf(k bpfKey, v *bpfVal, mono uint64) kelem {
	var el kelem
	binary.BigEndian.PutUint16(el.key[0:2], uint16(k))
	copy(el.key[4:8], v.Src[:])
	copy(el.key[8:10], v.SrcPort[:])
	el.pkts, el.octets = v.Packets, v.Bytes
	if v.Packets > 0 && mono > v.Seen {
		el.idle = time.Duration(mono - v.Seen)
	}
	return el
}

// apply deletes (zeroes) and adds map entries. The map is an array
// indexed by relay port, and user space rewrites an entry in place, not
// in one atomic step as a hash map's update would; the program reads each
// 8-byte half of an entry (latched source; destination and new ports) in
// one load, so a packet sees each half either old or new. An entry whose
// source stays (a new destination: the peer re-latched, hold, resume, a
// codec change, a join) is rewritten in place, so no packet meets a
// missing entry; one whose source changes is zeroed first (its packets
// reach user space meanwhile, which keeps the socket), so a packet never
// pairs one leg's source with another's destination. Unlike an nftables
// transaction the entries change one by one; on a failed update (short
// of memory: an in-range key of an array cannot fail otherwise) every
// entry the call touched is zeroed and the error returned.
func (e *ebpfEngine) apply(del []kkey, add []kelem) error {
	// A kernel key is the relay port and the latched source: the same
	// key deleted and added is the same source with a new destination.
	keep := make(map[kkey]bool, len(add))
	for _, el := range add {
		keep[el.key] = true
	}
	for _, k := range del {
		bk := e.keyOf(k)
		if keep[k] {
			continue
		}
		if err := e.legs.Update(bk, &bpfVal{}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("zero eBPF map entry for port %d: %w", uint16(bk), err)
		}
	}
	for _, el := range add {
		bk, v := e.keyOf(el.key), valOf(el)
		if err := e.legs.Update(bk, &v, ebpf.UpdateAny); err != nil {
			e.zero(del, add)
			return fmt.Errorf("update eBPF map entry for port %d: %w", uint16(bk), err)
		}
	}
	return nil
}

// zero clears every entry a failed apply touched: their legs' packets go
// up to the relay's sockets, which user space keeps and relays from,
// whatever the kernel layer believes installed until their next change.
func (e *ebpfEngine) zero(del []kkey, add []kelem) {
	for _, k := range del {
		_ = e.legs.Update(e.keyOf(k), &bpfVal{}, ebpf.UpdateAny)
	}
	for _, el := range add {
		_ = e.legs.Update(e.keyOf(el.key), &bpfVal{}, ebpf.UpdateAny)
	}
}

// ebpfBatch is the number of entries one BPF_MAP_LOOKUP_BATCH reads.
const ebpfBatch = 1024

// counters reads the entries in use, in batches over the whole array (64
// system calls of ebpfBatch entries, 2.5 MiB copied: at thousands of legs
// polled every second, an entry-by-entry walk would cost two calls each).
func (e *ebpfEngine) counters() ([]kelem, error) {
	mono := monotonic()
	var out []kelem
	var cursor ebpf.MapBatchCursor
	keys := make([]bpfKey, ebpfBatch)
	vals := make([]bpfVal, ebpfBatch)
	for {
		n, err := e.legs.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if vals[i].Src != [4]byte{} {
				out = append(out, elemOf(keys[i], &vals[i], mono))
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read eBPF map: %w", err)
		}
	}
}

// get reads the entries of keys; one whose source is no longer the
// key's is left out, as a missing nftables element would be.
func (e *ebpfEngine) get(keys []kkey) ([]kelem, error) {
	mono := monotonic()
	var out []kelem
	for _, k := range keys {
		bk := e.keyOf(k)
		var v bpfVal
		if err := e.legs.Lookup(bk, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return out, fmt.Errorf("read eBPF map entry for port %d: %w", binary.BigEndian.Uint16(k[0:2]), err)
		}
		if el := elemOf(bk, &v, mono); el.key == k {
			out = append(out, el)
		}
	}
	return out, nil
}

// monotonic is CLOCK_MONOTONIC in nanoseconds, bpf_ktime_get_ns's clock.
func monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
