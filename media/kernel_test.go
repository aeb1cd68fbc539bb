package media

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// The kernel data path is tested as root in two network namespaces of its
// own (prefix "hkd-"): the relay's (relay address 10.77.0.1 on a veth) and
// the phones' (A 10.77.0.2, B 10.77.0.3, a stranger 10.77.0.4 on the
// other end), so the rewritten packets are really forwarded, out of the
// interface they came in by. The test binary re-executes itself inside
// the relay's namespace (every thread of the relay must be in it); phone
// sockets are opened from a thread moved into the phones' namespace.

const (
	kRelay    = "10.77.0.1"
	kPhoneA   = "10.77.0.2"
	kPhoneB   = "10.77.0.3"
	kStranger = "10.77.0.4"
	kChildEnv = "HAPBX_KERNEL_TEST_PHONES" // set in the child: the phones' namespace
)

// inKernelNamespaces runs the calling test in the relay's namespace and
// returns the phones' namespace; in the parent it sets both up, runs the
// child and returns "" (the caller returns).
func inKernelNamespaces(t *testing.T) string { return inKernelNamespacesWith(t, nil) }

// inKernelNamespacesWith is inKernelNamespaces with more set-up of the two
// namespaces (rns the relay's, pns the phones') before the test runs.
func inKernelNamespacesWith(t *testing.T, setup func(run func(args ...string), rns, pns string)) string {
	if ns := os.Getenv(kChildEnv); ns != "" {
		return ns
	}
	if os.Geteuid() != 0 {
		t.Skip("kernel data path test needs root (network namespaces, nftables)")
	}
	for _, bin := range []string{"ip", "sysctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("kernel data path test needs %s", bin)
		}
	}
	if _, err := os.Stat("/proc/sys/net/netfilter"); err != nil {
		if out, err := exec.Command("modprobe", "nf_tables").CombinedOutput(); err != nil {
			t.Skipf("no nf_tables in this kernel: %v %s", err, out)
		}
	}
	rns := fmt.Sprintf("hkd-r%d", os.Getpid())
	pns := fmt.Sprintf("hkd-p%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{rns, pns} {
		_ = exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "-n", rns, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", pns)
	run("ip", "-n", rns, "addr", "add", kRelay+"/24", "dev", "v0")
	run("ip", "-n", rns, "link", "set", "v0", "up")
	for _, a := range []string{kPhoneA, kPhoneB, kStranger} {
		run("ip", "-n", pns, "addr", "add", a+"/24", "dev", "v1")
	}
	run("ip", "-n", pns, "link", "set", "v1", "up")
	// Forwarding on in the relay's namespace; no ICMP redirects for the
	// packets it sends back out of the interface they came in by.
	run("ip", "netns", "exec", rns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.v0.send_redirects=0")
	if setup != nil {
		setup(run, rns, pns)
	}
	args := []string{"netns", "exec", rns, os.Args[0], "-test.run", "^" + t.Name() + "$", "-test.count=1", "-test.v"}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), kChildEnv+"="+pns)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", rns, out)
	if err != nil {
		t.Fatalf("kernel data path test failed in its namespace: %v", err)
	}
	if bytes.Contains(out, []byte("--- SKIP")) {
		t.Skip("skipped in its namespace")
	}
	return ""
}

// phoneIn opens a phone socket on ip inside the namespace ns.
func phoneIn(t *testing.T, ns, ip string) *phone {
	t.Helper()
	var p *phone
	if err := testkit.InNS(ns, func() error { p = newPhone(t, ip); return nil }); err != nil {
		t.Fatal(err)
	}
	return p
}

// testEngine is the kernel engine a test exercises: the eBPF program for
// the tests named TestEBPF..., which run the nftables tests' bodies
// (test* functions) on the other engine, nftables for the others.
func testEngine(t *testing.T) string {
	if strings.HasPrefix(t.Name(), "TestEBPF") {
		return EngineEBPF
	}
	return EngineNftables
}

// kernelConfig is a relay configuration on kRelay in kernel mode with the
// test's engine.
func kernelConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Address, cfg.Ports, cfg.Workers = kRelay, "40000-40099", 1
	cfg.Datapath, cfg.KernelEngine = DatapathKernel, testEngine(t)
	return cfg
}

// startKernelRelay starts a relay of cfg, checks it forwards with the
// engine cfg asks for (the eBPF engine falls back to nftables silently
// for the relay, not for the test) and closes it at the end of the test.
func startKernelRelay(t *testing.T, cfg Config, log *zap.Logger, now func() time.Time) *Relay {
	t.Helper()
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	if now == nil {
		now = time.Now
	}
	r, err := newWithClock(cfg, log, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	r.start()
	t.Cleanup(r.Close)
	if cfg.Datapath == DatapathKernel && r.KernelEngine() != cfg.KernelEngine {
		t.Fatalf("relay forwards with %q, want %q", r.KernelEngine(), cfg.KernelEngine)
	}
	return r
}

func newKernelRelay(t *testing.T, mode string, log *zap.Logger) *Relay {
	t.Helper()
	cfg := kernelConfig(t)
	cfg.Datapath = mode
	return startKernelRelay(t, cfg, log, nil)
}

func kAP(ip string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), port)
}

// kernelPackets is what the kernel counted for packets received on the
// relay port from src (0 when no element matches).
func kernelPackets(t *testing.T, r *Relay, port uint16, src netip.AddrPort) uint64 {
	t.Helper()
	r.kern.mu.Lock()
	elems, err := r.kern.counters()
	r.kern.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var key kkey
	binary.BigEndian.PutUint16(key[0:], port)
	a := src.Addr().As4()
	copy(key[4:8], a[:])
	binary.BigEndian.PutUint16(key[8:], src.Port())
	for _, e := range elems {
		if e.key == key {
			return e.pkts
		}
	}
	return 0
}

// elementCount is how many elements the kernel's map holds.
func elementCount(t *testing.T, r *Relay) int {
	t.Helper()
	r.kern.mu.Lock()
	defer r.kern.mu.Unlock()
	elems, err := r.kern.counters()
	if err != nil {
		t.Fatal(err)
	}
	return len(elems)
}

func hasElement(t *testing.T, r *Relay, port uint16, src netip.AddrPort) bool {
	t.Helper()
	r.kern.mu.Lock()
	defer r.kern.mu.Unlock()
	for _, e := range r.kern.inst {
		if binary.BigEndian.Uint16(e.key[0:]) == port && netip.AddrFrom4([4]byte(e.key[4:8])) == src.Addr() &&
			binary.BigEndian.Uint16(e.key[8:]) == src.Port() {
			return true
		}
	}
	return false
}

// kernelCall anchors a call between a and b and returns the relay ports
// facing A and B.
func kernelCall(t *testing.T, r *Relay, id string, a, b *phone) (pa, pb uint16) {
	t.Helper()
	toB, err := r.AnchorFrom(id, true, a.addr().Addr(), offer(a.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	toA, err := r.AnchorFrom(id, false, b.addr().Addr(), offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	return sdpPort(t, toA), sdpPort(t, toB)
}

// relayOnce sends one RTP packet and checks it arrives rewritten: from
// the relay's port facing dst, payload unchanged.
// latchedCall sets up call id between a and b and relays one packet each
// way through user space, which latches both legs, until the kernel
// holds an element for each; it returns the relay's ports facing a and
// b and the addresses a and b send to.
func latchedCall(t *testing.T, r *Relay, id string, a, b *phone) (pa, pb uint16, toA, toB netip.AddrPort) {
	t.Helper()
	pa, pb = kernelCall(t, r, id, a, b)
	toA, toB = kAP(kRelay, pa), kAP(kRelay, pb)
	relayOnce(t, a, toA, b, toB)
	relayOnce(t, b, toB, a, toA)
	testkit.Eventually(t, 5*time.Second, "elements for both legs", func() bool {
		return hasElement(t, r, pa, a.addr()) && hasElement(t, r, pb, b.addr())
	})
	return pa, pb, toA, toB
}

func relayOnce(t *testing.T, src *phone, to netip.AddrPort, dst *phone, wantFrom netip.AddrPort) {
	t.Helper()
	src.sendRTP(to)
	from, b, ok := dst.recv(2 * time.Second)
	if !ok {
		t.Fatalf("packet from %s to %s not relayed to %s", src.addr(), to, dst.addr())
	}
	if from != wantFrom {
		t.Fatalf("packet arrived from %s, want %s", from, wantFrom)
	}
	if binary.BigEndian.Uint16(b[2:]) != src.seq || len(b) != 172 {
		t.Fatalf("payload changed: seq %d len %d, sent seq %d len 172", binary.BigEndian.Uint16(b[2:]), len(b), src.seq)
	}
}

// TestKernelDatapath: once both legs latched, RTP and RTCP are forwarded
// by the kernel, rewritten (destination the other leg, source the relay
// port facing it, checksums valid since the phones' sockets accept them),
// counted by the kernel and credited to the session; a stranger still
// reaches user space and is dropped; a re-INVITE moving B's port
// re-points A's packets; release removes the elements and the kernel
// stops relaying.
func TestKernelDatapath(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	r := newKernelRelay(t, DatapathKernel, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	// User space relays until both latches are in the kernel.
	pa, pb, toA, toB := latchedCall(t, r, "k1", a, b)
	before := kernelPackets(t, r, pa, a.addr())
	for range 10 {
		relayOnce(t, a, toA, b, toB)
		relayOnce(t, b, toB, a, toA)
	}
	if got := kernelPackets(t, r, pa, a.addr()) - before; got != 10 {
		t.Fatalf("kernel counted %d packets from A, want the 10 sent", got)
	}

	// RTCP: A's RTCP latches in user space, then goes through the kernel.
	rtcpA, rtcpB := kAP(kRelay, pa+1), kAP(kRelay, pb+1)
	sendRTCP(t, a, rtcpA)
	// B has not sent RTCP: A's RTCP goes to B's SDP RTCP port (RTP+1),
	// which no socket holds; what matters is the latch and element.
	testkit.Eventually(t, 5*time.Second, "element for A's RTCP", func() bool { return hasElement(t, r, pa+1, a.addr()) })
	bRTCP := phoneIn(t, pns, kPhoneB)
	if _, err := r.AnchorFrom("k1", false, b.addr().Addr(), offer(b.addr(), fmt.Sprintf("a=rtcp:%d\r\n", bRTCP.addr().Port()))); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "A's RTCP element pointing at B's new RTCP port", func() bool {
		sendRTCP(t, a, rtcpA)
		from, _, ok := bRTCP.recv(200 * time.Millisecond)
		return ok && from == rtcpB
	})

	// Stranger: not in the map, dropped in user space.
	s := phoneIn(t, pns, kStranger)
	for range 3 {
		s.sendRTP(toA)
	}
	mustNotReceive(t, b, 300*time.Millisecond)
	testkit.Eventually(t, 5*time.Second, "stranger counted", func() bool {
		st := r.Snapshot()[0].Streams[0].FromA
		return st.Stranger >= 3
	})

	// Re-INVITE from B with a new port: B's latch is cleared, A's packets
	// go to the new port (first through the element's new value, since
	// the latch of B is gone and its SDP endpoint is the destination).
	b2 := phoneIn(t, pns, kPhoneB)
	if _, err := r.AnchorFrom("k1", false, b2.addr().Addr(), offer(b2.addr(), "")); err != nil {
		t.Fatal(err)
	}
	relayOnce(t, a, toA, b2, toB)
	if !hasElement(t, r, pa, a.addr()) {
		t.Fatal("A's element gone after B's re-INVITE")
	}
	relayOnce(t, b2, toB, a, toA)
	testkit.Eventually(t, 5*time.Second, "element for B's new source", func() bool { return hasElement(t, r, pb, b2.addr()) })
	if hasElement(t, r, pb, b.addr()) {
		t.Fatal("element for B's old source still installed")
	}

	// Counters and idle detection come from the kernel: the session's
	// packet counter catches up with what the kernel forwarded.
	testkit.Eventually(t, 5*time.Second, "kernel counters credited to the session", func() bool {
		st := r.Snapshot()[0].Streams[0]
		return st.FromA.Packets >= 12 && st.FromA.Kernel && st.FromB.Kernel
	})

	// Release: no element left, nothing relayed.
	if err := r.Release("k1", "bye"); err != nil {
		t.Fatal(err)
	}
	if n := elementCount(t, r); n != 0 {
		t.Fatalf("after release: %d elements, want none", n)
	}
	a.sendRTP(toA)
	mustNotReceive(t, b2, 300*time.Millisecond)
}

// TestKernelDatapathStartCleansUp: a relay that died left its table and
// elements behind (its Close never ran); the next relay starts from an
// empty map, and its own forwarding works.
func TestKernelDatapathStartCleansUp(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	// The run that died: its table, chains and an element stay behind.
	dead, err := openKernel(netip.MustParseAddr(kRelay), EngineNftables, zaptest.NewLogger(t), time.Now, openEBPFKengine)
	if err != nil {
		t.Fatal(err)
	}
	var e kelem
	binary.BigEndian.PutUint16(e.key[0:], 40010)
	if err := dead.eng.apply(nil, []kelem{e}); err != nil {
		t.Fatal(err)
	}
	n := dead.eng.(*nftEngine)
	_ = n.conn.CloseLasting()
	_ = n.nl.Close()
	_ = unix.Close(n.netns)

	r := newKernelRelay(t, DatapathKernel, nil)
	if n := elementCount(t, r); n != 0 {
		t.Fatalf("new relay's map holds %d elements: the leftover was not removed", n)
	}
	checkFreshRelay(t, r, pns)
}

// checkFreshRelay checks that a new relay's kernel path forwards a call.
func checkFreshRelay(t *testing.T, r *Relay, pns string) {
	t.Helper()
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	pa, pb := kernelCall(t, r, "fresh", a, b)
	relayOnce(t, a, kAP(kRelay, pa), b, kAP(kRelay, pb))
	relayOnce(t, b, kAP(kRelay, pb), a, kAP(kRelay, pa))
	testkit.Eventually(t, 5*time.Second, "elements of the new relay", func() bool {
		return hasElement(t, r, pa, a.addr()) && hasElement(t, r, pb, b.addr())
	})
	relayOnce(t, a, kAP(kRelay, pa), b, kAP(kRelay, pb))
	if got := kernelPackets(t, r, pa, a.addr()); got != 1 {
		t.Fatalf("kernel forwarded %d packets from A, want 1", got)
	}
}

// TestKernelDatapathImport: the twin installs the kernel state of a
// replicated session at Import, so once the VIP is its own the latched
// legs are forwarded without a user-space step.
func TestKernelDatapathImport(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	r := newKernelRelay(t, DatapathKernel, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	rec := SessionRecord{CallID: "twin", State: StateAnswered, Streams: []StreamRecord{{
		Ports:   [2]int{40050, 40052},
		SDP:     [2]netip.AddrPort{a.addr(), b.addr()},
		Latched: [2]netip.AddrPort{a.addr(), b.addr()},
		Signal:  [2]netip.Addr{a.addr().Addr(), b.addr().Addr()},
	}}}
	if err := r.Import(rec); err != nil {
		t.Fatal(err)
	}
	if !hasElement(t, r, 40050, a.addr()) || !hasElement(t, r, 40052, b.addr()) {
		t.Fatal("imported latches not in the kernel after Import")
	}
	before := kernelPackets(t, r, 40050, a.addr())
	relayOnce(t, a, kAP(kRelay, 40050), b, kAP(kRelay, 40052))
	if got := kernelPackets(t, r, 40050, a.addr()) - before; got != 1 {
		t.Fatalf("kernel forwarded %d packets, want 1", got)
	}
}

// TestKernelDatapathFallback: with forwarding off the kernel path cannot
// work; "auto" logs once and relays in user space, "kernel" refuses to start.
func TestKernelDatapathFallback(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Address, cfg.Ports, cfg.Workers, cfg.Datapath = kRelay, "40000-40099", 1, DatapathKernel
	if _, err := New(cfg, zaptest.NewLogger(t), nil); err == nil {
		t.Fatal("datapath kernel started with ip_forward 0")
	}
	core, logs := observer.New(zap.WarnLevel)
	r := newKernelRelay(t, DatapathAuto, zap.New(core))
	if r.KernelDatapath() || logs.FilterMessage("kernel data path unavailable, relaying media in user space").Len() != 1 {
		t.Fatalf("auto without forwarding: kernel %v, warnings %v", r.KernelDatapath(), logs.All())
	}
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	pa, pb := kernelCall(t, r, "user", a, b)
	relayOnce(t, a, kAP(kRelay, pa), b, kAP(kRelay, pb))
	relayOnce(t, b, kAP(kRelay, pb), a, kAP(kRelay, pa))
}

// TestKernelDatapathRelatchAfterSilence: relatch_after is judged from the
// kernel's counters. While the latched source's packets go through the
// kernel, another port of the phone's address is a stranger; once the
// latched source has been silent for relatch_after (a NAT rebinding), the
// new source takes the leg and its element replaces the old one, whose
// packets then reach user space and are dropped.
func TestKernelDatapathRelatchAfterSilence(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	clk := &fakeClock{t: time.Now()}
	cfg := kernelConfig(t)
	r := startKernelRelay(t, cfg, nil, clk.now)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	pa, _, toA, toB := latchedCall(t, r, "relatch", a, b)
	relayOnce(t, a, toA, b, toB)
	testkit.Eventually(t, 5*time.Second, "kernel packet credited", func() bool {
		return r.Snapshot()[0].Streams[0].FromA.Packets >= 2
	})

	a2 := phoneIn(t, pns, kPhoneA) // the phone's NAT picked a new port
	a2.sendRTP(toA)
	mustNotReceive(t, b, 300*time.Millisecond)
	clk.advance(cfg.RelatchAfter + time.Second)
	relayOnce(t, a2, toA, b, toB)
	testkit.Eventually(t, 5*time.Second, "element moved to the new source", func() bool {
		return hasElement(t, r, pa, a2.addr()) && !hasElement(t, r, pa, a.addr())
	})
	before := kernelPackets(t, r, pa, a2.addr())
	relayOnce(t, a2, toA, b, toB)
	if got := kernelPackets(t, r, pa, a2.addr()) - before; got != 1 {
		t.Fatalf("kernel forwarded %d packets of the new source, want 1", got)
	}
	a.sendRTP(toA)
	mustNotReceive(t, b, 300*time.Millisecond)
}

// TestKernelDatapathManyLegs: hundreds of legs latching at once (shared
// phone sockets, as relaybench offers them) all end up in the kernel.
func TestKernelDatapathManyLegs(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	const calls = 1500
	cfg := kernelConfig(t)
	cfg.Ports, cfg.Workers = "41000-49999", 0
	r := startKernelRelay(t, cfg, nil, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	var to []netip.AddrPort
	for i := range calls {
		pa, pb := kernelCall(t, r, fmt.Sprintf("many%d", i), a, b)
		to = append(to, kAP(kRelay, pa), kAP(kRelay, pb))
	}
	// Keep sending while the legs move to the kernel and the counters
	// are polled.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			for i := 0; i < len(to); i += 2 {
				_, _ = a.conn.WriteToUDPAddrPort(rtpPacket(1, 1, 1, 160), to[i])
				_, _ = b.conn.WriteToUDPAddrPort(rtpPacket(1, 1, 2, 160), to[i+1])
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(3 * time.Second)
	testkit.Eventually(t, 10*time.Second, "all legs in the kernel", func() bool {
		n := elementCount(t, r)
		t.Logf("%d elements", n)
		return n == 2*calls
	})
}

// TestKernelDatapathHoldResumeCodec: a re-INVITE that holds (a=sendonly,
// then c=0.0.0.0), resumes or changes the codec without moving an
// endpoint leaves the legs in the kernel, as user space would keep
// relaying them; a resume on a new port moves A's element to it.
func TestKernelDatapathHoldResumeCodec(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	r := newKernelRelay(t, DatapathKernel, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	pa, pb, toA, toB := latchedCall(t, r, "hold", a, b)
	inKernel := func(what string) {
		t.Helper()
		if !hasElement(t, r, pa, a.addr()) || !hasElement(t, r, pb, b.addr()) {
			t.Fatalf("%s: legs left the kernel", what)
		}
		before := kernelPackets(t, r, pa, a.addr())
		relayOnce(t, a, toA, b, toB)
		if got := kernelPackets(t, r, pa, a.addr()) - before; got != 1 {
			t.Fatalf("%s: kernel forwarded %d packets, want 1", what, got)
		}
	}
	for _, step := range []struct{ what, sdp string }{
		{"hold sendonly", string(offer(b.addr(), "a=sendonly\r\n"))},
		{"hold c=0.0.0.0", string(offer(netip.AddrPortFrom(netip.IPv4Unspecified(), b.addr().Port()), "a=inactive\r\n"))},
		{"resume", string(offer(b.addr(), ""))},
		{"codec change", strings.Replace(string(offer(b.addr(), "")), "RTP/AVP 8 101", "RTP/AVP 0 101", 1)},
	} {
		if _, err := r.AnchorFrom("hold", false, b.addr().Addr(), []byte(step.sdp)); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		inKernel(step.what)
	}
	b2 := phoneIn(t, pns, kPhoneB)
	if _, err := r.AnchorFrom("hold", false, b2.addr().Addr(), offer(b2.addr(), "")); err != nil {
		t.Fatal(err)
	}
	before := kernelPackets(t, r, pa, a.addr())
	relayOnce(t, a, toA, b2, toB)
	if got := kernelPackets(t, r, pa, a.addr()) - before; got != 1 {
		t.Fatalf("after resume on a new port: kernel forwarded %d packets, want 1", got)
	}
}

// TestKernelDatapathFailoverVIP plays the twin at failover: Import
// installs the replicated latches in the kernel while the VIP is not yet
// on this host; once the VIP is added, A's packets are forwarded by the
// kernel without a user-space step, and the replica is adopted from the
// kernel's counters.
func TestKernelDatapathFailoverVIP(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	const vip = "10.77.0.100"
	cfg := kernelConfig(t)
	cfg.Address = vip
	r := startKernelRelay(t, cfg, nil, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	rec := SessionRecord{CallID: "vip", State: StateAnswered, Streams: []StreamRecord{{
		Ports:   [2]int{40060, 40062},
		SDP:     [2]netip.AddrPort{a.addr(), b.addr()},
		Latched: [2]netip.AddrPort{a.addr(), b.addr()},
		Signal:  [2]netip.Addr{a.addr().Addr(), b.addr().Addr()},
	}}}
	if err := r.Import(rec); err != nil {
		t.Fatal(err)
	}
	if !hasElement(t, r, 40060, a.addr()) {
		t.Fatal("replicated latch not in the kernel before the VIP arrived")
	}
	toA, toB := kAP(vip, 40060), kAP(vip, 40062)
	a.sendRTP(toA)
	mustNotReceive(t, b, 300*time.Millisecond) // the VIP is elsewhere
	if out, err := exec.Command("ip", "addr", "add", vip+"/24", "dev", "v0").CombinedOutput(); err != nil {
		t.Fatalf("add VIP: %v %s", err, out)
	}
	mustRelay(t, a, toA, b, toB) // retried until the phones' ARP finds the VIP
	if n := kernelPackets(t, r, 40060, a.addr()); n == 0 {
		t.Fatal("A's packets after the VIP arrived did not go through the kernel")
	}
	testkit.Eventually(t, 5*time.Second, "replica adopted from the kernel counters", func() bool {
		r.sweepOnce()
		r.mu.Lock()
		defer r.mu.Unlock()
		s := r.sessions["vip"]
		return s != nil && !s.replica
	})
}

// TestKernelJoin: two calls whose PBX died are joined (join.go); the kernel
// then forwards each phone to the other phone, from the relay port facing
// it, and holds no element for the closed PBX legs. A joined leg whose
// payload types need renumbering (the phones number telephone-event
// differently) leaves the kernel and is relayed in user space.
func TestKernelJoin(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	for _, tc := range []struct {
		name     string
		cEvent   string // telephone-event's payload type at phone C
		inKernel bool
	}{{"same payload types", "101", true}, {"renumbered", "96", false}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newKernelRelay(t, DatapathKernel, nil)
			a, pbx1 := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
			c, pbx2 := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
			pa, pb1 := kernelCall(t, r, "j1", a, pbx1)
			cOffer := strings.ReplaceAll(string(offer(c.addr(), "")), "101", tc.cEvent)
			toPBX2, err := r.AnchorFrom("j2", true, c.addr().Addr(), []byte(cOffer))
			if err != nil {
				t.Fatal(err)
			}
			toC, err := r.AnchorFrom("j2", false, pbx2.addr().Addr(), offer(pbx2.addr(), ""))
			if err != nil {
				t.Fatal(err)
			}
			pc, pb2 := sdpPort(t, toC), sdpPort(t, toPBX2)
			relayOnce(t, a, kAP(kRelay, pa), pbx1, kAP(kRelay, pb1))
			relayOnce(t, pbx1, kAP(kRelay, pb1), a, kAP(kRelay, pa))
			relayOnce(t, c, kAP(kRelay, pc), pbx2, kAP(kRelay, pb2))
			relayOnce(t, pbx2, kAP(kRelay, pb2), c, kAP(kRelay, pc))
			testkit.Eventually(t, 5*time.Second, "elements for the phones' legs", func() bool {
				return hasElement(t, r, pa, a.addr()) && hasElement(t, r, pc, c.addr())
			})

			if err := r.Join("j1", true, "j2", true); err != nil {
				t.Fatal(err)
			}
			if hasElement(t, r, pb1, pbx1.addr()) || hasElement(t, r, pb2, pbx2.addr()) {
				t.Fatal("the dead PBX's legs kept their kernel elements after the join")
			}
			if got := hasElement(t, r, pa, a.addr()) && hasElement(t, r, pc, c.addr()); got != tc.inKernel {
				t.Fatalf("joined legs in the kernel: %v, want %v", got, tc.inKernel)
			}
			before := kernelPackets(t, r, pa, a.addr())
			for range 10 {
				relayOnce(t, a, kAP(kRelay, pa), c, kAP(kRelay, pc))
				relayOnce(t, c, kAP(kRelay, pc), a, kAP(kRelay, pa))
			}
			want := uint64(0)
			if tc.inKernel {
				want = 10
			}
			if got := kernelPackets(t, r, pa, a.addr()) - before; got != want {
				t.Fatalf("kernel counted %d of A's packets after the join, want %d", got, want)
			}
		})
	}
}

// TestKernelRefusesLoopback: the kernel does not forward 127/8, so a relay
// on loopback never takes the kernel path: "kernel" fails at start naming
// the address, "auto" relays in user space (also as root with forwarding
// on, where the rules would otherwise be installed and match nothing).
func TestKernelRefusesLoopback(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Address = "127.0.0.1"
	cfg.Ports = "40100-40109"
	cfg.Datapath = DatapathKernel
	if r, err := New(cfg, zaptest.NewLogger(t), nil); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		if r != nil {
			r.Close()
		}
		t.Fatalf("datapath kernel on loopback: err %v, want a start error naming 127.0.0.1", err)
	}
	cfg.Datapath = DatapathAuto
	r, err := New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.KernelDatapath() {
		t.Fatal("datapath auto on loopback took the kernel path")
	}
}

// csumFold is the 16-bit one's complement sum of b, folded.
func csumFold(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// udpDatagram builds an IPv4 datagram from src to dst carrying payload,
// its UDP checksum "valid", "bad" (valid with two bits flipped) or "zero"
// (none).
func udpDatagram(src, dst netip.AddrPort, payload []byte, csum string) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[8], b[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:], ^csumFold(0, b[:20]))
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	if csum == "zero" {
		return b
	}
	pseudo := append(append(append([]byte(nil), b[12:20]...), 0, unix.IPPROTO_UDP), u[4:6]...)
	c := ^csumFold(uint32(csumFold(0, pseudo)), u)
	if c == 0 {
		c = 0xffff
	}
	if csum == "bad" {
		c ^= 0x0101
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return b
}

// TestKernelDatapathChecksums: datagrams A sends with a complete UDP
// checksum (from a raw socket, so no checksum offload leaves it to be
// trusted: the phones' stack verifies what arrives) reach B through the
// kernel, rewritten with valid IP and UDP checksums; one without a UDP
// checksum (0) arrives too (nftables leaves it to user space); one with a
// wrong checksum is forwarded by the kernel and dropped by B's stack,
// which shows the check is real.
func TestKernelDatapathChecksums(t *testing.T) {
	pns := inKernelNamespaces(t)
	if pns == "" {
		return
	}
	r := newKernelRelay(t, DatapathKernel, nil)
	a, b := phoneIn(t, pns, kPhoneA), phoneIn(t, pns, kPhoneB)
	pa, _, toA, toB := latchedCall(t, r, "csum", a, b)
	var raw int
	if err := testkit.InNS(pns, func() (err error) {
		raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(raw) })
	send := func(seq uint16, csum string) {
		t.Helper()
		pkt := udpDatagram(a.addr(), toA, rtpPacket(seq, 1, 7, 160), csum)
		if err := unix.Sendto(raw, pkt, 0, &unix.SockaddrInet4{Addr: toA.Addr().As4()}); err != nil {
			t.Fatal(err)
		}
	}
	// nftables leaves a datagram without a UDP checksum to user space
	// (kernel_linux.go); the eBPF program forwards it.
	before, wantKernel := kernelPackets(t, r, pa, a.addr()), uint64(3)
	if testEngine(t) == EngineNftables {
		wantKernel = 2
	}
	for i, csum := range []string{"valid", "zero"} {
		seq := uint16(1000 + i)
		send(seq, csum)
		from, body, ok := b.recv(2 * time.Second)
		if !ok || from != toB || binary.BigEndian.Uint16(body[2:]) != seq {
			t.Fatalf("UDP checksum %s: received %v from %s (seq %v), want seq %d from %s", csum, ok, from, body, seq, toB)
		}
	}
	send(1002, "bad")
	mustNotReceive(t, b, 300*time.Millisecond)
	if got := kernelPackets(t, r, pa, a.addr()) - before; got != wantKernel {
		t.Fatalf("kernel forwarded %d of the 3 crafted datagrams, want %d", got, wantKernel)
	}
}
