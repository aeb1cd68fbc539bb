package cluster

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hapbx/hapbx/internal/testkit"
)

// The lab: a switch namespace with a bridge, one namespace per node and one for a
// client, all on 10.213.0.0/24, which exists only inside these namespaces. Every name
// starts with "hcl".
const (
	labSwitch = "hcl-sw"
	labBridge = "hclbr0"
	labIf     = "hcleth0"
	labVIP    = "10.213.0.13"
	labClient = "hcl-cl"
)

var labNodes = map[string]string{"n1": "10.213.0.1", "n2": "10.213.0.2", "w": "10.213.0.3"}

type lab struct {
	t       *testing.T
	dir     string
	key     string
	mu      sync.Mutex
	procs   map[string]*nodeProc
	handles map[string]*netlink.Handle
	mod     func(*Config) // applied to every node config, if set
	// broadcast: n1 and n2 broadcast a record every 50 ms (ids 1e6.. and 2e6..) and
	// each counts what it has of the other's.
	broadcast bool
}

type nodeProc struct {
	name  string
	cmd   *exec.Cmd
	spec  helperSpec
	lines chan string
	done  chan struct{}
	ready atomic.Bool // printed READY: Start returned, a stale VIP is gone
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a bridge and veth links")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// labPreClean removes leftovers of an earlier run that died: processes in our
// namespaces, then the namespaces (links go with them).
func labPreClean() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "hcl") {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", f[0]).Output()
		for _, p := range strings.Fields(string(pids)) {
			var pid int
			if _, err := fmt.Sscan(p, &pid); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = exec.Command("ip", "netns", "del", f[0]).Run()
	}
}

func nsName(node string) string { return "hcl-" + node }

func newLab(t *testing.T) *lab {
	needRoot(t)
	labPreClean()
	l := &lab{t: t, dir: t.TempDir(), procs: map[string]*nodeProc{}, handles: map[string]*netlink.Handle{}}
	t.Cleanup(l.cleanup)
	sh(t, "ip", "netns", "add", labSwitch)
	sh(t, "ip", "-n", labSwitch, "link", "add", labBridge, "type", "bridge")
	sh(t, "ip", "-n", labSwitch, "link", "set", labBridge, "up")
	hosts := map[string]string{labClient: "10.213.0.100"}
	for n, ip := range labNodes {
		hosts[nsName(n)] = ip
	}
	for ns, ip := range hosts {
		sw := "hcls" + strings.TrimPrefix(ns, "hcl-")
		sh(t, "ip", "netns", "add", ns)
		sh(t, "ip", "link", "add", sw, "netns", labSwitch, "type", "veth", "peer", "name", labIf, "netns", ns)
		sh(t, "ip", "-n", labSwitch, "link", "set", sw, "master", labBridge, "up")
		sh(t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", labIf)
		sh(t, "ip", "-n", ns, "link", "set", labIf, "up")
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	l.key = filepath.Join(l.dir, "cluster.key")
	if err := os.WriteFile(l.key, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *lab) cleanup() {
	l.mu.Lock()
	procs := l.procs
	l.procs = map[string]*nodeProc{}
	l.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	for _, h := range l.handles {
		h.Close()
	}
	if l.t.Failed() {
		for _, n := range []string{"n1", "n2", "w"} {
			if b, err := os.ReadFile(filepath.Join(l.dir, n+".log")); err == nil {
				lines := strings.Split(string(b), "\n")
				if len(lines) > 60 {
					lines = lines[len(lines)-60:]
				}
				l.t.Logf("---- %s log (tail) ----\n%s", n, strings.Join(lines, "\n"))
			}
		}
	}
	labPreClean()
}

func (p *nodeProc) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// nodeConfig is the config of lab node n; priority and failback per test.
func (l *lab) nodeConfig(n string, prio int, failback bool) Config {
	c := DefaultConfig()
	c.Name = n
	c.Bind = labNodes[n] + ":7946"
	for _, p := range []string{"n1", "n2", "w"} {
		c.Peers = append(c.Peers, Peer{Name: p, Gossip: labNodes[p] + ":7946", Raft: labNodes[p] + ":7947"})
	}
	c.SecretFile = l.key
	c.Priority = prio
	c.Failback = failback
	c.DataDir = filepath.Join(l.dir, "data-"+n)
	c.VIP = VIPConfig{Address: labVIP + "/24", Interface: labIf, GARPCount: 3, GARPInterval: 100 * time.Millisecond}
	if l.mod != nil {
		l.mod(&c)
	}
	return c
}

// start runs node n in its namespace; role witness for "w".
func (l *lab) start(cfg Config, records, expect int) *nodeProc {
	t := l.t
	t.Helper()
	n := cfg.Name
	role := RoleProxy
	if n == "w" {
		role = RoleWitness
	}
	spec := helperSpec{Cfg: cfg, Role: role, Records: records, Expect: expect,
		StatusFile: filepath.Join(l.dir, n+".status"), LogFile: filepath.Join(l.dir, n+".log")}
	if l.broadcast && role == RoleProxy {
		spec.BroadcastEvery = 50 * time.Millisecond
		spec.IDBase, spec.WatchBase = 1_000_000, 2_000_000
		if n == "n2" {
			spec.IDBase, spec.WatchBase = 2_000_000, 1_000_000
		}
		spec.CountFile = filepath.Join(l.dir, n+".count")
	}
	_ = os.Remove(spec.StatusFile)
	b, _ := json.Marshal(spec)
	specPath := filepath.Join(l.dir, n+".spec.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", nsName(n), exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "HCL_HELPER="+specPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", n, err)
	}
	p := &nodeProc{name: n, cmd: cmd, spec: spec, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "READY" {
				p.ready.Store(true)
			}
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs[n] = p
	l.mu.Unlock()
	return p
}

// killNode SIGKILLs node n and waits until it is gone.
func (l *lab) killNode(n string) {
	l.mu.Lock()
	p := l.procs[n]
	delete(l.procs, n)
	l.mu.Unlock()
	if p != nil {
		p.kill()
		// What ExecStopPost (`hapbx release-vip`) does on a real host: a
		// SIGKILLed process cannot remove the VIP it held, and a host that
		// keeps it would answer ARP for it beside the new holder.
		_ = exec.Command("ip", "-n", nsName(n), "addr", "del", labVIP+"/24", "dev", labIf).Run()
	}
}

func (l *lab) handle(n string) *netlink.Handle {
	if h := l.handles[n]; h != nil {
		return h
	}
	ns, err := netns.GetFromName(nsName(n))
	if err != nil {
		l.t.Fatalf("netns %s: %v", nsName(n), err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		l.t.Fatalf("netlink in %s: %v", nsName(n), err)
	}
	l.handles[n] = h
	return h
}

// hasVIP asks the kernel of node n's namespace whether the VIP is configured.
func (l *lab) hasVIP(n string) bool {
	h := l.handle(n)
	link, err := h.LinkByName(labIf)
	if err != nil {
		l.t.Fatalf("%s: %v", n, err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatalf("%s: %v", n, err)
	}
	for _, a := range addrs {
		if a.IP.String() == labVIP {
			return true
		}
	}
	return false
}

// holders lists the running (started) proxies that have the VIP. A SIGKILLed node
// leaves its address behind in its namespace (as a crashed process would on a real host,
// see leadership.go); it does not count, as nothing answers for it any more than for a dead host
// once the client's ARP entry moved.
func (l *lab) holders() []string {
	var hs []string
	for _, n := range []string{"n1", "n2"} {
		l.mu.Lock()
		p := l.procs[n]
		l.mu.Unlock()
		if p == nil || !p.ready.Load() {
			continue
		}
		if l.hasVIP(n) {
			hs = append(hs, n)
		}
	}
	return hs
}

// waitHolder waits until exactly one proxy holds the VIP (and, if want != "", that
// it is want), failing on two holders at any sample.
func (l *lab) waitHolder(want string, within time.Duration) string {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		hs := l.holders()
		if len(hs) > 1 {
			l.t.Fatalf("two VIP holders: %v", hs)
		}
		if len(hs) == 1 && (want == "" || hs[0] == want) {
			return hs[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.t.Fatalf("no single VIP holder (want %q) within %s; holders now %v", want, within, l.holders())
	return ""
}

// watchNoSplit samples both proxies every 50 ms for d and fails on two holders. It
// returns the holder sequence seen (deduplicated).
func (l *lab) watchNoSplit(d time.Duration) []string {
	l.t.Helper()
	var seq []string
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		hs := l.holders()
		if len(hs) > 1 {
			l.t.Fatalf("split brain: both %v hold the VIP", hs)
		}
		cur := "-"
		if len(hs) == 1 {
			cur = hs[0]
		}
		if len(seq) == 0 || seq[len(seq)-1] != cur {
			seq = append(seq, cur)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return seq
}

func (l *lab) status(n string) Status {
	var s Status
	b, err := os.ReadFile(filepath.Join(l.dir, n+".status"))
	if err == nil {
		_ = json.Unmarshal(b, &s)
	}
	return s
}

func (l *lab) counts(n string) helperCounts {
	var c helperCounts
	if b, err := os.ReadFile(filepath.Join(l.dir, n+".count")); err == nil {
		_ = json.Unmarshal(b, &c)
	}
	return c
}

// waitFullyReplicated waits until each of n1 and n2 has every record the other had
// broadcast at the time of the call.
func (l *lab) waitFullyReplicated(within time.Duration) {
	l.t.Helper()
	w1, w2 := l.counts("n2").Own, l.counts("n1").Own
	if w1 == 0 || w2 == 0 {
		l.t.Fatalf("nothing broadcast: n1 %+v n2 %+v", l.counts("n1"), l.counts("n2"))
	}
	testkit.Eventually(l.t, within, "all broadcast records on both proxies", func() bool {
		return l.counts("n1").Watched >= w1 && l.counts("n2").Watched >= w2
	})
	l.t.Logf("replicated: n1 has %d of n2's records, n2 %d of n1's", l.counts("n1").Watched, l.counts("n2").Watched)
}

// waitStable waits until every named node reports a raft leader and quorum.
func (l *lab) waitStable(within time.Duration, nodes ...string) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		ok := true
		for _, n := range nodes {
			s := l.status(n)
			alive := 0
			for _, m := range s.Members {
				if m.State == "alive" {
					alive++
				}
			}
			if s.Leader == "" || !s.Quorum || alive < len(nodes) {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, n := range nodes {
		l.t.Logf("%s status: %+v", n, l.status(n))
	}
	l.t.Fatalf("cluster %v not stable within %s", nodes, within)
}

// udpAsk sends a datagram to the VIP from the client namespace and returns the name in
// the answer. The socket is created inside the namespace by a thread switched into it.
func udpAsk(t *testing.T, timeout time.Duration) (string, error) {
	t.Helper()
	conn, err := socketIn(labClient)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(labVIP + ":9999"))
	if _, err := conn.WriteTo([]byte("who"), dst); err != nil {
		return "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func socketIn(ns string) (net.PacketConn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, err
	}
	conn, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if serr := netns.Set(orig); serr != nil {
		panic(fmt.Sprintf("cannot switch back to the original netns: %v", serr))
	}
	return conn, err
}

// askUntil asks the VIP until the answer is want or d passes; it returns the time taken.
func askUntil(t *testing.T, want string, d time.Duration) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < d {
		got, err := udpAsk(t, 100*time.Millisecond)
		if err == nil {
			last = got
			if got == want {
				return time.Since(start), got
			}
		}
	}
	return -1, last
}

// cut installs nft rules in node n's namespace dropping traffic to and from peers (IPs);
// with no peers it drops everything on the lab interface.
func (l *lab) cut(n string, peers ...string) {
	l.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		l.t.Skip("needs nft (apt-get install nftables)")
	}
	rules := "table inet hcl {\n chain in { type filter hook input priority 0; policy accept;\n"
	if len(peers) == 0 {
		rules += "  iifname \"" + labIf + "\" drop\n }\n chain out { type filter hook output priority 0; policy accept;\n  oifname \"" + labIf + "\" drop\n }\n}\n"
	} else {
		for _, p := range peers {
			rules += "  ip saddr " + ipOf(p) + " drop\n"
		}
		rules += " }\n chain out { type filter hook output priority 0; policy accept;\n"
		for _, p := range peers {
			rules += "  ip daddr " + ipOf(p) + " drop\n"
		}
		rules += " }\n}\n"
	}
	cmd := exec.Command("ip", "netns", "exec", nsName(n), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("nft in %s: %v\n%s\n%s", n, err, out, rules)
	}
}

func ipOf(n string) string {
	if n == "cl" {
		return "10.213.0.100"
	}
	return labNodes[n]
}

func (l *lab) heal(n string) {
	_ = exec.Command("ip", "netns", "exec", nsName(n), "nft", "delete", "table", "inet", "hcl").Run()
}
