package media

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Data path modes, the values of media.datapath.
const (
	DatapathAuto   = "auto"   // kernel if it can be set up, else user space (logged once)
	DatapathKernel = "kernel" // kernel or fail at start
	DatapathUser   = "user"   // every packet through the relay's sockets
)

// Kernel engines, the values of media.kernel_engine.
const (
	EngineEBPF     = "ebpf"     // a TC program (ebpf_linux.go); nftables when it cannot be loaded
	EngineNftables = "nftables" // the nftables table (kernel_linux.go)
)

// kernelTable is the nftables table hapbx owns (family ip). Whatever holds
// this name at start is a leftover of an earlier run and is replaced.
const kernelTable = "hapbx_media"

// kernelMark is the packet mark bit the prerouting rule sets on a packet it
// rewrote, so the input/postrouting rule (after the routing decision)
// rewrites its source to the relay address. Setting the source before
// routing would make the packet a martian (a local source arriving from
// outside).
const kernelMark = 0x4b000000

// kernelPoll is how often the kernel's per-element counters are read: the
// granularity of idle detection, relatch_after and the counters of a leg
// forwarded in the kernel.
const kernelPoll = time.Second

// udpIPHeaders is what an nft counter counts beyond the UDP payload
// (IPv4 header without options + UDP header); the relay's byte counters
// count payload bytes.
const udpIPHeaders = 28

// kkey is a map key: relay port . source address . source port, each field
// padded to 4 bytes as nftables concatenations are.
type kkey [12]byte

// kval is a map value: destination address . relay source port .
// destination port.
type kval [12]byte

// kelem is the element installed for the packets received on one sock,
// with the counter values last read.
type kelem struct {
	key          kkey
	val          kval
	pkts, octets uint64
	// idle is how long ago, when read, the element last forwarded (0:
	// unknown, the last read is taken as the time).
	idle time.Duration
}

// kengine is what holds the elements in the kernel: nftables (nftEngine)
// or a TC eBPF program (ebpfEngine, ebpf_linux.go). Both take the
// nftables layout of kkey/kval. Called with kernel.mu held.
type kengine interface {
	name() string
	// apply deletes the elements of del and adds those of add; a key in
	// both is replaced with its counters starting again from 0.
	apply(del []kkey, add []kelem) error
	// counters reads every element with its counters.
	counters() ([]kelem, error)
	// get reads the elements of keys (missing ones are left out).
	get(keys []kkey) ([]kelem, error)
	// close removes everything the engine installed.
	close()
}

// kernel is the kernel data path of a Relay: one element per latched
// sock whose peer has somewhere to send, from (relay port, latched
// source) to (destination, relay source port), held by an engine.
// Lock order: Relay.mu, kernel.mu, worker.mu; the data path (under
// worker.mu) only queues socks through notify.
type kernel struct {
	log *zap.Logger
	eng kengine
	now func() time.Time

	mu      sync.Mutex
	inst    map[*sock]kelem
	byKey   map[kkey]*sock
	warned  bool // a failed update was logged at warn level
	closed  bool
	pendMu  sync.Mutex
	pend    []*sock
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	started bool
}

// errNotForwardable: the relay address is one the kernel path cannot serve.
var errNotForwardable = errors.New("kernel data path needs an IPv4 relay address that is not loopback")

// errNoForwarding: the kernel would not forward the rewritten packets.
var errNoForwarding = errors.New("net.ipv4.ip_forward is 0: the kernel does not forward rewritten packets to other hosts")

// nftEngine is the nftables engine: hapbx's table, whose map the rules
// look packets up in.
type nftEngine struct {
	log   *zap.Logger
	conn  *nftables.Conn
	table *nftables.Table
	legs  *nftables.Set // the map
	nl    *netlink.Conn // counter reads
	netns int           // the relay's network namespace (fd), where nl is opened
}

// openKernel sets up the kernel data path for addr with engine (ebpf or
// nftables; "" is ebpf). An eBPF program that cannot be loaded or
// attached falls back to nftables, logged once. It fails without
// CAP_NET_ADMIN, without kernel support for either, or with IPv4
// forwarding off (the eBPF program's route lookup, like nftables,
// forwards only where the kernel would).
func openKernel(addr netip.Addr, engine string, log *zap.Logger, now func() time.Time, openEBPF ebpfOpener) (*kernel, error) {
	if addr.IsLoopback() || !addr.Is4() {
		// The kernel never forwards to or from 127/8 (martians), and the
		// rules are IPv4 only: such a relay stays in user space.
		return nil, fmt.Errorf("%w: relay address %s", errNotForwardable, addr)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(b)) != "1" {
		if err != nil {
			return nil, fmt.Errorf("read ip_forward: %w", err)
		}
		return nil, errNoForwarding
	}
	k := &kernel{
		log: log, now: now,
		inst:  make(map[*sock]kelem),
		byKey: make(map[kkey]*sock),
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	var ebpfErr error
	if engine != EngineNftables {
		e, err := openEBPF(addr.As4())
		if err == nil {
			k.eng = e
			return k, nil
		}
		ebpfErr = err
	}
	e, err := openNft(addr.As4(), log)
	if err != nil {
		if ebpfErr != nil {
			// One failure, one line (the caller's): both causes in it.
			return nil, fmt.Errorf("eBPF: %v; nftables: %w", ebpfErr, err)
		}
		return nil, err
	}
	if ebpfErr != nil {
		log.Warn("eBPF data path unavailable, forwarding latched legs with nftables", zap.Error(ebpfErr))
	}
	k.eng = e
	return k, nil
}

// openNft replaces hapbx's nftables table (a leftover of an earlier run
// is removed in the same transaction) with the relay's rules for relay.
func openNft(relay [4]byte, log *zap.Logger) (*nftEngine, error) {
	// A netlink socket talks to the network namespace of the thread that
	// opens it: keep this thread's, so that sockets opened later, from
	// other threads, talk to the same.
	ns, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open own network namespace: %w", err)
	}
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(ns))
	if err != nil {
		_ = unix.Close(ns)
		return nil, fmt.Errorf("nftables netlink: %w", err)
	}
	n := &nftEngine{log: log, conn: conn, netns: ns, table: &nftables.Table{Name: kernelTable, Family: nftables.TableFamilyIPv4}}
	if err := n.install(relay); err != nil {
		_ = conn.CloseLasting()
		_ = unix.Close(ns)
		return nil, err
	}
	if err := n.dial(); err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

func (n *nftEngine) name() string { return EngineNftables }

// Registers: 32-bit registers NFT_REG32_00.. are numbered from 8.
const (
	regKey = 8  // key: 3 registers
	regVal = 12 // value: 3 registers
	regTmp = 1
)

func (n *nftEngine) install(relay [4]byte) error {
	c := n.conn
	// add + delete + add: the table is new and empty whether or not an
	// earlier run left one, in one atomic transaction.
	c.AddTable(n.table)
	c.DelTable(n.table)
	c.AddTable(n.table)
	n.legs = &nftables.Set{
		Table: n.table, Name: "legs", IsMap: true, Counter: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeInetService),
	}
	if err := c.AddSet(n.legs, nil); err != nil {
		return fmt.Errorf("nftables map: %w", err)
	}
	pre := c.AddChain(&nftables.Chain{Name: "pre", Table: n.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw})
	ip := func(off, n uint32, reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	}
	udp := func(off, n uint32, reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: n}
	}
	// The rule: UDP, unfragmented, to the relay address, RTP/RTCP version
	// 2, with a UDP checksum, from a (relay port, source) in the map: destination and ports
	// rewritten, marked for the source rewrite, not tracked.
	c.AddRule(&nftables.Rule{Table: n.table, Chain: pre, Exprs: []expr.Any{
		ip(9, 1, regTmp),
		&expr.Cmp{Op: expr.CmpOpEq, Register: regTmp, Data: []byte{unix.IPPROTO_UDP}},
		ip(16, 4, regTmp),
		&expr.Cmp{Op: expr.CmpOpEq, Register: regTmp, Data: relay[:]},
		ip(6, 2, regTmp),
		&expr.Bitwise{SourceRegister: regTmp, DestRegister: regTmp, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regTmp, Data: []byte{0, 0}},
		udp(8, 1, regTmp),
		&expr.Bitwise{SourceRegister: regTmp, DestRegister: regTmp, Len: 1, Mask: []byte{0xc0}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regTmp, Data: []byte{0x80}},
		// A datagram without a UDP checksum (0) stays in user space: the
		// port writes below update the checksum field unconditionally,
		// which would turn "none" into a wrong one.
		udp(6, 2, regTmp),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: regTmp, Data: []byte{0, 0}},
		udp(2, 2, regKey),
		ip(12, 4, regKey+1),
		udp(0, 2, regKey+2),
		&expr.Lookup{SourceRegister: regKey, DestRegister: regVal, IsDestRegSet: true, SetName: n.legs.Name, SetID: n.legs.ID},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regVal, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4,
			CsumType: expr.CsumTypeInet, CsumOffset: 10, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regVal + 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2,
			CsumType: expr.CsumTypeInet, CsumOffset: 6},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regVal + 2, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2,
			CsumType: expr.CsumTypeInet, CsumOffset: 6},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regTmp},
		&expr.Bitwise{SourceRegister: regTmp, DestRegister: regTmp, Len: 4, Mask: mark32(^uint32(kernelMark)), Xor: mark32(kernelMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regTmp},
		&expr.Notrack{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	// After routing: forwarded (postrouting) or delivered here (input, a
	// peer on this host), the marked packet leaves from the relay address.
	src := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regTmp},
		&expr.Bitwise{SourceRegister: regTmp, DestRegister: regTmp, Len: 4, Mask: mark32(kernelMark), Xor: mark32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regTmp, Data: mark32(kernelMark)},
		&expr.Immediate{Register: regTmp, Data: relay[:]},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: regTmp, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4,
			CsumType: expr.CsumTypeInet, CsumOffset: 10, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: regTmp},
		&expr.Bitwise{SourceRegister: regTmp, DestRegister: regTmp, Len: 4, Mask: mark32(^uint32(kernelMark)), Xor: mark32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: regTmp},
	}
	for _, h := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"post", nftables.ChainHookPostrouting}, {"in", nftables.ChainHookInput}} {
		ch := c.AddChain(&nftables.Chain{Name: h.name, Table: n.table, Type: nftables.ChainTypeFilter,
			Hooknum: h.hook, Priority: nftables.ChainPriorityRef(-300)})
		c.AddRule(&nftables.Rule{Table: n.table, Chain: ch, Exprs: src})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", kernelTable, err)
	}
	return nil
}

// rawPort is sin_port as it is in memory: network byte order.
func rawPort(sa *unix.RawSockaddrInet4) []byte { return (*[2]byte)(unsafe.Pointer(&sa.Port))[:] }

// mark32 is a mark value as the register holds it: the packet mark is a
// host-endian u32.
func mark32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// run applies the data path's latch changes and reads the counters every
// kernelPoll until close.
func (k *kernel) run() {
	defer close(k.done)
	t := time.NewTicker(kernelPoll)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-k.wake:
			k.pendMu.Lock()
			socks := k.pend
			k.pend = nil
			k.pendMu.Unlock()
			k.sync(socks)
		case <-t.C:
			k.poll()
		}
	}
}

// start runs the kernel goroutine; close stops it and removes the table.
func (k *kernel) start() {
	if k == nil {
		return
	}
	k.mu.Lock()
	k.started = true
	k.mu.Unlock()
	go k.run()
}

func (k *kernel) close() {
	if k == nil {
		return
	}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return
	}
	k.closed = true
	started := k.started
	k.mu.Unlock()
	close(k.stop)
	if started {
		<-k.done
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.eng.close()
}

// close removes the table.
func (n *nftEngine) close() {
	n.conn.DelTable(n.table)
	if err := n.conn.Flush(); err != nil {
		n.log.Warn("nftables table not removed", zap.String("table", kernelTable), zap.Error(err))
	}
	_ = n.conn.CloseLasting()
	if n.nl != nil {
		_ = n.nl.Close()
	}
	if n.netns > 0 {
		_ = unix.Close(n.netns)
	}
}

// notify queues s and its peer (whose element's destination depends on
// s's latch) for sync. Called from the data path with w.mu held.
func (k *kernel) notify(s *sock) {
	if k == nil {
		return
	}
	k.pendMu.Lock()
	k.pend = append(k.pend, s, s.peer)
	k.pendMu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// syncSession brings the kernel state of every sock of s in line with
// its latches and destinations. r.mu is held; s.w.mu is not.
func (k *kernel) syncSession(s *session) {
	if k == nil {
		return
	}
	k.sync(sessionSocks(s))
}

func sessionSocks(s *session) []*sock {
	socks := make([]*sock, 0, 4*len(s.streams))
	for _, st := range s.streams {
		for l := range 2 {
			for j := range 2 {
				if so := st.socks[l][j]; so != nil {
					socks = append(socks, so)
				}
			}
		}
	}
	return socks
}

// want is the element packets received on s need: from its latched
// source to where s's peer sends (its latch, else its SDP endpoint), from
// the peer's port. w.mu must be held.
func want(s *sock) (kelem, bool) {
	if s.fd < 0 || !s.latched || s.peer == nil || s.ptMap != nil {
		// A joined leg whose payload types are renumbered (join.go) stays
		// in user space: the kernel rule does not rewrite RTP headers.
		return kelem{}, false
	}
	p := s.peer
	var dst *unix.RawSockaddrInet4
	switch {
	case p.latched:
		dst = &p.latch
	case p.hasHint:
		dst = &p.hint
	default:
		return kelem{}, false
	}
	var e kelem
	binary.BigEndian.PutUint16(e.key[0:], uint16(s.port))
	copy(e.key[4:8], s.latch.Addr[:])
	// sin_port is already in network byte order in memory.
	copy(e.key[8:10], rawPort(&s.latch))
	copy(e.val[0:4], dst.Addr[:])
	binary.BigEndian.PutUint16(e.val[4:], uint16(p.port))
	copy(e.val[8:10], rawPort(dst))
	return e, true
}

// change is one sock's element moving from had to e.
type change struct {
	s         *sock
	e, had    kelem
	ok, hadOK bool
}

// changesPerBatch bounds one transaction: the whole batch is one sendmsg
// on the netlink socket, which refuses messages beyond its buffer (4000
// calls latching at once make 8000 elements).
const changesPerBatch = 1024

// sync installs, replaces or removes the elements of socks, in
// transactions of up to changesPerBatch socks; a sock's delete and add
// are always in the same one. A failed transaction leaves the kernel as it
// was: those legs go on being relayed in user space (their sockets
// receive what the map does not match).
func (k *kernel) sync(socks []*sock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || len(socks) == 0 {
		return
	}
	var changes []change
	seen := make(map[*sock]bool, len(socks))
	for _, s := range socks {
		if s == nil || seen[s] || s.kgone {
			continue
		}
		seen[s] = true
		s.w.mu.Lock()
		e, ok := want(s)
		s.w.mu.Unlock()
		had, hadOK := k.inst[s]
		if ok == hadOK && (!ok || e.key == had.key && e.val == had.val) {
			continue
		}
		changes = append(changes, change{s: s, e: e, ok: ok, had: had, hadOK: hadOK})
	}
	for batch := range slices.Chunk(changes, changesPerBatch) {
		k.applyChanges(batch)
	}
}

// applyChanges applies one transaction. k.mu must be held.
func (k *kernel) applyChanges(changes []change) {
	var del []kkey
	var add []kelem
	var replaced []*sock
	for _, c := range changes {
		if c.hadOK {
			del = append(del, c.had.key)
			replaced = append(replaced, c.s)
		}
		if c.ok {
			add = append(add, c.e)
		}
	}
	k.creditBeforeDelete(replaced)
	if err := k.eng.apply(del, add); err != nil {
		k.failed("kernel data path not updated; these legs stay in user space", err)
		return
	}
	for _, c := range changes {
		if c.hadOK {
			delete(k.byKey, c.had.key)
			delete(k.inst, c.s)
		}
		if c.ok {
			k.inst[c.s] = c.e
			k.byKey[c.e.key] = c.s
		}
		c.s.w.mu.Lock()
		c.s.kernel = c.ok
		c.s.w.mu.Unlock()
	}
}

// elemsPerMessage bounds the elements of one netlink message: their list
// is one attribute, whose length is 16 bits (an element takes about 60
// bytes); a longer list would be cut and the message misread.
const elemsPerMessage = 256

// apply deletes and adds elements in one transaction (one Flush; as many
// messages as elemsPerMessage needs).
func (n *nftEngine) apply(dk []kkey, ae []kelem) error {
	del := make([]nftables.SetElement, 0, len(dk))
	for _, k := range dk {
		del = append(del, nftables.SetElement{Key: k[:]})
	}
	add := make([]nftables.SetElement, 0, len(ae))
	for _, e := range ae {
		add = append(add, nftables.SetElement{Key: e.key[:], Val: e.val[:]})
	}
	for c := range slices.Chunk(del, elemsPerMessage) {
		if err := n.conn.SetDeleteElements(n.legs, c); err != nil {
			return err
		}
	}
	for c := range slices.Chunk(add, elemsPerMessage) {
		if err := n.conn.SetAddElements(n.legs, c); err != nil {
			return err
		}
	}
	if err := n.conn.Flush(); err != nil {
		// Acknowledgements of the failed batch may be left in the socket,
		// where the next batch would read them as its own: start afresh.
		_ = n.conn.CloseLasting()
		if c, nerr := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(n.netns)); nerr == nil {
			n.conn = c
		}
		return err
	}
	return nil
}

func (k *kernel) failed(msg string, err error) {
	if !k.warned {
		k.warned = true
		k.log.Warn(msg+" (further failures logged at debug level)", zap.Error(err))
		return
	}
	k.log.Debug(msg, zap.Error(err))
}

// remove takes the elements of a session's socks out of the kernel before
// they are closed, so the ports can be reused. r.mu is held.
func (k *kernel) remove(s *session) {
	if k == nil {
		return
	}
	socks := sessionSocks(s)
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.closed {
		k.creditBeforeDelete(socks)
	}
	var del []kkey
	for _, so := range socks {
		so.kgone = true
		if e, ok := k.inst[so]; ok {
			del = append(del, e.key)
			delete(k.inst, so)
			delete(k.byKey, e.key)
		}
	}
	if len(del) == 0 || k.closed {
		return
	}
	for c := range slices.Chunk(del, changesPerBatch) {
		if err := k.eng.apply(c, nil); err != nil {
			k.failed("kernel data path: elements of a released session not removed", err)
		}
	}
}

// poll reads the per-element counters and credits what the kernel
// forwarded since the last poll to the socks: packet and byte counters,
// and the last-packet times that idle detection and relatch_after use.
func (k *kernel) poll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || len(k.inst) == 0 {
		return
	}
	elems, err := k.eng.counters()
	if err != nil {
		k.failed("kernel data path: counters not read", err)
		return
	}
	now := k.now().UnixNano()
	for _, el := range elems {
		if s := k.byKey[el.key]; s != nil {
			k.creditLocked(s, el, now)
		}
	}
}

// creditLocked adds what the kernel forwarded for s since the last read
// (el: the element's counters now) to s's counters and last-packet times.
// k.mu must be held.
func (k *kernel) creditLocked(s *sock, el kelem, now int64) {
	e, ok := k.inst[s]
	if !ok || e.key != el.key || el.pkts <= e.pkts {
		return
	}
	dp, db := el.pkts-e.pkts, el.octets-e.octets
	e.pkts, e.octets = el.pkts, el.octets
	k.inst[s] = e
	payload := db - min(db, dp*udpIPHeaders)
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if s.fd < 0 {
		return
	}
	if s.rtcp {
		s.stats.rtcpPackets += dp
	} else {
		s.stats.packets += dp
		s.stats.bytes += payload
	}
	w.pkts[s.leg] += dp
	w.bytes += payload
	last := now - int64(el.idle)
	s.lastRx, s.lastLatc = max(s.lastRx, last), max(s.lastLatc, last)
}

// creditBeforeDelete reads the counters of the elements about to be
// deleted or replaced (a replaced element starts again from 0) and
// credits them, so what the kernel forwarded since the last poll is not
// lost. k.mu must be held.
func (k *kernel) creditBeforeDelete(socks []*sock) {
	var keys []kkey
	for _, s := range socks {
		if e, ok := k.inst[s]; ok {
			keys = append(keys, e.key)
		}
	}
	if len(keys) == 0 {
		return
	}
	elems, err := k.eng.get(keys)
	if err != nil {
		k.failed("kernel data path: counters of replaced elements not read", err)
		return
	}
	now := k.now().UnixNano()
	for _, el := range elems {
		if s := k.byKey[el.key]; s != nil {
			k.creditLocked(s, el, now)
		}
	}
}

// openKernel sets up the kernel data path as cfg.Datapath asks: "user"
// does nothing, "kernel" fails when it cannot be set up, "auto" logs once
// and relays in user space.
func (r *Relay) openKernel() error {
	mode := r.cfg.Datapath
	if mode == "" {
		mode = DatapathAuto
	}
	if mode == DatapathUser {
		return nil
	}
	k, err := openKernel(r.addr, r.cfg.KernelEngine, r.log.Named("kernel"), r.now, r.openEBPF)
	if err != nil {
		if mode == DatapathKernel {
			return fmt.Errorf("datapath kernel: %w", err)
		}
		r.log.Warn("kernel data path unavailable, relaying media in user space", zap.Error(err))
		return nil
	}
	r.kern = k
	for _, w := range r.workers {
		w.kern = k
	}
	r.log.Info("kernel data path on: latched legs are forwarded in the kernel", zap.String("engine", k.eng.name()))
	return nil
}

// KernelDatapath tells whether latched legs are forwarded in the kernel.
func (r *Relay) KernelDatapath() bool { return r.kern != nil }

// KernelEngine names what forwards latched legs in the kernel (ebpf or
// nftables); "" in user-space mode.
func (r *Relay) KernelEngine() string {
	if r.kern == nil {
		return ""
	}
	return r.kern.eng.name()
}

// counters reads the engine's elements with their counters. k.mu must be held.
func (k *kernel) counters() ([]kelem, error) { return k.eng.counters() }

// counters dumps the map's elements with their counters. The nftables
// package decodes elements without their expressions, so this is a plain
// NFT_MSG_GETSETELEM dump on a netlink socket of its own.
func (n *nftEngine) counters() ([]kelem, error) { return n.get(nil) }

// dial opens the counter socket in the relay's network namespace.
func (n *nftEngine) dial() error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: n.netns})
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	n.nl = c
	return nil
}

// get reads the elements of keys, one request each (the kernel answers a
// request for several elements with several messages), or all of them
// when keys is nil. After a failed read the socket is reopened: replies
// left in it would answer the next request.
func (n *nftEngine) get(keys []kkey) ([]kelem, error) {
	if n.nl == nil {
		if err := n.dial(); err != nil {
			return nil, err
		}
	}
	var out []kelem
	if keys == nil {
		out, err := n.request(nil)
		if err != nil {
			_ = n.nl.Close()
			n.nl = nil
		}
		return out, err
	}
	for _, key := range keys {
		el, err := n.request(&key)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			_ = n.nl.Close()
			n.nl = nil
			return out, err
		}
		out = append(out, el...)
	}
	return out, nil
}

// request reads one element with its counter, or all of them (a dump)
// when key is nil.
func (n *nftEngine) request(key *kkey) ([]kelem, error) {
	list := []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(kernelTable + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(n.legs.Name + "\x00")},
	}
	flags := netlink.Request | netlink.Dump
	if key != nil {
		flags = netlink.Request
		kv, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: key[:]}})
		if err != nil {
			return nil, err
		}
		el, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED, Data: kv}})
		if err != nil {
			return nil, err
		}
		b, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: 1 | unix.NLA_F_NESTED, Data: el}})
		if err != nil {
			return nil, err
		}
		list = append(list, netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: b})
	}
	attrs, err := netlink.MarshalAttributes(list)
	if err != nil {
		return nil, err
	}
	msgs, err := n.nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: flags,
		},
		Data: append([]byte{unix.AF_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, fmt.Errorf("dump map %s: %w", n.legs.Name, err)
	}
	var out []kelem
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		// Attributes are walked by hand: a dump of thousands of elements
		// every second is the kernel path's main fixed cost.
		walkAttrs(m.Data[4:], func(typ uint16, v []byte) {
			if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				return
			}
			walkAttrs(v, func(_ uint16, ev []byte) {
				if e, ok := decodeElem(ev); ok {
					out = append(out, e)
				}
			})
		})
	}
	return out, nil
}

// walkAttrs calls fn for each netlink attribute in b (type without the
// nested/byte-order flags).
func walkAttrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofNlAttr {
		n := int(binary.NativeEndian.Uint16(b))
		if n < unix.SizeofNlAttr || n > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofNlAttr:n])
		b = b[min((n+3)&^3, len(b)):]
	}
}

// decodeElem reads one NFTA_LIST_ELEM: its key and its counter (the set's
// one expression, NFTA_SET_ELEM_EXPR, or in a NFTA_SET_ELEM_EXPRESSIONS list).
func decodeElem(b []byte) (kelem, bool) {
	var e kelem
	var hasKey bool
	counter := func(x []byte) {
		var name string
		walkAttrs(x, func(typ uint16, v []byte) {
			switch typ {
			case unix.NFTA_EXPR_NAME:
				name = strings.TrimRight(string(v), "\x00")
			case unix.NFTA_EXPR_DATA:
				if name != "counter" {
					return
				}
				walkAttrs(v, func(typ uint16, c []byte) {
					if len(c) != 8 {
						return
					}
					switch typ {
					case unix.NFTA_COUNTER_BYTES:
						e.octets = binary.BigEndian.Uint64(c)
					case unix.NFTA_COUNTER_PACKETS:
						e.pkts = binary.BigEndian.Uint64(c)
					}
				})
			}
		})
	}
	walkAttrs(b, func(typ uint16, v []byte) {
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			walkAttrs(v, func(typ uint16, kv []byte) {
				if typ == unix.NFTA_DATA_VALUE && len(kv) == len(e.key) {
					copy(e.key[:], kv)
					hasKey = true
				}
			})
		case unix.NFTA_SET_ELEM_EXPR:
			counter(v)
		case nftaSetElemExpressions:
			walkAttrs(v, func(_ uint16, x []byte) { counter(x) })
		}
	})
	return e, hasKey
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS (linux 5.12), which
// x/sys does not name.
const nftaSetElemExpressions = 0x0b
