package lab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Names and addresses of the lab. Every namespace, link and bridge name starts
// with Prefix; 10.214.0.0/24 exists only inside the lab's namespaces.
const (
	Prefix   = "hlab"
	SwitchNS = "hlab-sw"
	Bridge   = "hlabbr0"
	// If is the lab interface inside every host namespace.
	If = "hlab0"
	// VIP is the proxies' shared address.
	VIP = "10.214.0.100"
	// SIPPort is where the proxies (on the VIP) and the backends listen.
	SIPPort = 5060
	// AdminAddr is every hapbx's admin listener, on its own namespace's loopback.
	AdminAddr = "127.0.0.1:9060"
)

// Hosts of the lab: name -> address. Each lives in namespace NS(name).
var Hosts = map[string]string{
	"proxy1":  "10.214.0.1",
	"proxy2":  "10.214.0.2",
	"witness": "10.214.0.3",
	"pbx1":    "10.214.0.11",
	"pbx2":    "10.214.0.12",
	"phones":  "10.214.0.50",
	// provider plays a SIP trunk's provider (Options.Trunk): its address is
	// the trunk's ACL.
	"provider": "10.214.0.60",
}

// Proxies are the two VIP candidates, in priority order.
var Proxies = []string{"proxy1", "proxy2"}

// NS is the namespace of host h.
func NS(h string) string { return Prefix + "-" + h }

// Options configure a Lab.
type Options struct {
	// Bin is the hapbx binary. Default: $HAPBX_BIN, else bin/hapbx under Root.
	Bin string
	// Root is the repository root (for the SIPp scenarios in proxy/testdata and
	// deploy/lab/testdata).
	Root string
	// Dir receives configs, data and logs. Default: a new temp dir, removed by Close.
	Dir string
	// Media enables media anchoring on both proxies.
	Media bool
	// MediaIdleTimeout is the proxies' media.idle_timeout when Media is set
	// (0: hapbx's default, 60 s).
	MediaIdleTimeout time.Duration
	// MediaDatapath is the proxies' media.datapath when Media is set ("":
	// user, so the lab does not depend on whether the host's
	// net.ipv4.ip_forward, which new namespaces inherit, is on). "kernel"
	// also turns forwarding on in the proxies' namespaces.
	MediaDatapath string
	// Failback makes proxy1 (priority 200) take the VIP back when it returns.
	Failback bool
	// Trunk gives the proxies the trunk "provider" (trunk.go): its host the
	// provider namespace's registrar, its ACL that address; the VIP holder
	// registers there.
	Trunk bool
	// Asterisk names an asterisk binary to run as the backends instead of SIPp
	// (with the configs of deploy/asterisk). Default: $HAPBX_ASTERISK, else
	// `asterisk` on PATH, else SIPp.
	Asterisk string
	// SIPpBackends runs SIPp backends even where an asterisk is available,
	// for tests that rely on SIPp's behaviour (any extension answered at
	// once, RTP echo).
	SIPpBackends bool
	// ChanSIP runs the real Asterisk with chan_sip and deploy/asterisk's
	// sip.conf instead of chan_pjsip and pjsip.conf.
	ChanSIP bool
	// Cold puts the PBXs in cold standby: the proxies enable cold: and
	// every backend's hapbx agent runs its group (DRBD stand-in promotion,
	// tmpfs mount, SIPp and AMI as the service); only one PBX runs at a time.
	// Needs the agents (withAgents).
	Cold bool
	// Self is the binary that runs AMIServerMain as its AMIServerCommand
	// subcommand (the AMI server beside each SIPp backend). Default: this
	// program (os.Executable), which must then dispatch that subcommand.
	Self string
	// Logf receives progress lines; nil: silent.
	Logf func(format string, args ...any)
	// Signals: Close the lab and exit(130) on SIGINT/SIGTERM/SIGHUP.
	Signals bool
}

// Lab is the running topology.
type Lab struct {
	opt     Options
	rmDir   bool
	Key     string // cluster secret file
	mu      sync.Mutex
	procs   map[string]*Proc
	handles map[string]*netlink.Handle
	clients map[string]*http.Client
	stopSig func()
	closed  bool
}

// Check says why this machine cannot run the lab (nil when it can).
func Check() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("needs root: creates network namespaces, a bridge and veth links"))
	}
	for _, b := range []string{"ip", "sipp", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			errs = append(errs, fmt.Errorf("needs %s on PATH (Debian: iproute2, sip-tester, nftables)", b))
		}
	}
	return errors.Join(errs...)
}

// New pre-cleans leftovers of an earlier run and builds the namespaces, the
// bridge, the veths, the addresses and the cluster key. Nothing is started.
func New(opt Options) (l *Lab, err error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if opt.Root == "" {
		opt.Root = "."
	}
	if opt.Root, err = filepath.Abs(opt.Root); err != nil {
		return nil, err
	}
	if opt.Bin == "" {
		opt.Bin = os.Getenv("HAPBX_BIN")
	}
	if opt.Bin == "" {
		opt.Bin = filepath.Join(opt.Root, "bin", "hapbx")
	}
	if opt.Bin, err = filepath.Abs(opt.Bin); err != nil {
		return nil, err
	}
	if _, err := os.Stat(opt.Bin); err != nil {
		return nil, fmt.Errorf("hapbx binary %s: %w (run make build)", opt.Bin, err)
	}
	if opt.SIPpBackends {
		opt.Asterisk = ""
	} else if opt.Asterisk == "" {
		opt.Asterisk = os.Getenv("HAPBX_ASTERISK")
	}
	if opt.Asterisk == "" && !opt.SIPpBackends {
		if p, err := exec.LookPath("asterisk"); err == nil {
			opt.Asterisk = p
		}
	}
	if opt.Self == "" {
		if opt.Self, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("lab: the AMI server binary: %w", err)
		}
	}
	l = &Lab{opt: opt, procs: map[string]*Proc{}, handles: map[string]*netlink.Handle{}, clients: map[string]*http.Client{}}
	if l.opt.Dir == "" {
		d, err := os.MkdirTemp("", "hlab-")
		if err != nil {
			return nil, err
		}
		l.opt.Dir, l.rmDir = d, true
	}
	if opt.Signals {
		l.catchSignals()
	}
	built := l // a failed step returns a nil *Lab: close what was built
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	PreClean()
	if err := run("ip", "netns", "add", SwitchNS); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", SwitchNS, "link", "add", Bridge, "type", "bridge"},
		{"ip", "-n", SwitchNS, "link", "set", Bridge, "up"},
		{"ip", "-n", SwitchNS, "link", "set", "lo", "up"},
	}
	for _, h := range sortedHosts() {
		ns, sw := NS(h), "hlabs-"+h
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "link", "add", sw, "netns", SwitchNS, "type", "veth", "peer", "name", If, "netns", ns},
			[]string{"ip", "-n", SwitchNS, "link", "set", sw, "master", Bridge, "up"},
			[]string{"ip", "-n", ns, "addr", "add", Hosts[h] + "/24", "dev", If},
			[]string{"ip", "-n", ns, "link", "set", If, "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return nil, err
		}
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	l.Key = filepath.Join(l.opt.Dir, "cluster.key")
	if err := os.WriteFile(l.Key, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	l.logf("lab: namespaces %s-{%s} on bridge %s, VIP %s", Prefix, strings.Join(sortedHosts(), ","), Bridge, VIP)
	return l, nil
}

func sortedHosts() []string {
	return []string{"proxy1", "proxy2", "witness", "pbx1", "pbx2", "phones", "provider"}
}

// Dir is where configs, data and logs live.
func (l *Lab) Dir() string { return l.opt.Dir }

// Root is the repository root.
func (l *Lab) Root() string { return l.opt.Root }

func (l *Lab) logf(format string, args ...any) {
	if l.opt.Logf != nil {
		l.opt.Logf(format, args...)
	}
}

func (l *Lab) catchSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	l.stopSig = func() { signal.Stop(ch); close(done) }
	go func() {
		select {
		case s := <-ch:
			fmt.Fprintf(os.Stderr, "\nlab: %v: removing namespaces and processes\n", s)
			l.Close()
			os.Exit(130)
		case <-done:
		}
	}()
}

// Close kills every process the lab started, removes every hlab namespace (and
// with them links, addresses and nft rules) and the temp dir. Safe to call twice.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	procs := l.procs
	l.procs = map[string]*Proc{}
	handles := l.handles
	l.handles = map[string]*netlink.Handle{}
	stop := l.stopSig
	l.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	for _, h := range handles {
		h.Close()
	}
	PreClean()
	if l.rmDir && os.Getenv("HLAB_KEEP") == "" {
		_ = os.RemoveAll(l.opt.Dir)
	}
	if stop != nil {
		stop()
	}
}

// PreClean removes what an earlier run left: every process inside an hlab*
// namespace, then the namespaces themselves (links and addresses go with them).
func PreClean() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], Prefix) {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", f[0]).Output()
		for _, p := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = exec.Command("ip", "netns", "del", f[0]).Run()
	}
	// A link left in the root namespace by an interrupted `ip link add`.
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(links), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, Prefix) {
				_ = exec.Command("ip", "link", "del", name).Run()
			}
		}
	}
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Proc is a process the lab started inside a namespace, in its own process group.
type Proc struct {
	Name    string
	NS      string
	Dir     string // its working directory
	LogPath string // stdout and stderr
	Started time.Time
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// Start runs args inside namespace ns (`ip netns exec`), in its own process
// group, with its output in Dir/name.log. A process of the same name is killed first.
func (l *Lab) Start(ns, name string, args ...string) (*Proc, error) {
	l.Kill(name)
	dir := filepath.Join(l.opt.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(l.opt.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Proc{Name: name, NS: ns, Dir: dir, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab closed")
	}
	p.Started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	l.procs[name] = p
	return p, nil
}

// Proc returns the running process called name, or nil.
func (l *Lab) Proc(name string) *Proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[name]
}

// Kill SIGKILLs the process group of name and waits for it.
func (l *Lab) Kill(name string) {
	l.mu.Lock()
	p := l.procs[name]
	delete(l.procs, name)
	l.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Forget drops name from the lab's process table without touching it.
func (l *Lab) forget(name string, p *Proc) {
	l.mu.Lock()
	if l.procs[name] == p {
		delete(l.procs, name)
	}
	l.mu.Unlock()
}

// Kill SIGKILLs p's process group and waits until it is reaped.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Signal sends sig to p's process group.
func (p *Proc) Signal(sig syscall.Signal) { _ = syscall.Kill(-p.cmd.Process.Pid, sig) }

// Wait waits up to d for p to exit and returns its exit code (-1 on timeout: p is killed).
func (p *Proc) Wait(d time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(d):
		p.Kill()
		return -1
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// Exited reports whether p has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Log returns the last n bytes of p's output and of sipp's error, message,
// failed calls' and screen traces.
func (p *Proc) Log(n int) string {
	var out strings.Builder
	errs, _ := filepath.Glob(filepath.Join(p.Dir, "*_errors.log"))
	msgs, _ := filepath.Glob(filepath.Join(p.Dir, "*_messages.log"))
	errs = append(errs, msgs...)
	debug, _ := filepath.Glob(filepath.Join(p.Dir, "*_calldebug.log"))
	errs = append(errs, debug...)
	screens, _ := filepath.Glob(filepath.Join(p.Dir, "*_screen.log"))
	files := append(errs, screens...)
	for _, f := range append([]string{p.LogPath}, files...) {
		b, _ := os.ReadFile(f)
		if len(b) > n {
			b = b[len(b)-n:]
		}
		fmt.Fprintf(&out, "--- %s ---\n%s\n", filepath.Base(f), b)
	}
	return out.String()
}

// InNS runs f on a thread switched into namespace ns: sockets f creates stay
// in ns for their whole life (testkit.InNS, which other packages' tests use).
func InNS(ns string, f func() error) error { return testkit.InNS(ns, f) }

func (l *Lab) handle(h string) (*netlink.Handle, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if hd := l.handles[h]; hd != nil {
		return hd, nil
	}
	ns, err := netns.GetFromName(NS(h))
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", NS(h), err)
	}
	defer ns.Close()
	hd, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", NS(h), err)
	}
	l.handles[h] = hd
	return hd, nil
}

// HasVIP asks the kernel of host h's namespace whether the VIP is on its lab interface.
func (l *Lab) HasVIP(h string) bool {
	hd, err := l.handle(h)
	if err != nil {
		return false
	}
	link, err := hd.LinkByName(If)
	if err != nil {
		return false
	}
	addrs, err := hd.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IP.String() == VIP {
			return true
		}
	}
	return false
}

// Holders lists the proxies whose namespace has the VIP.
func (l *Lab) Holders() []string {
	var hs []string
	for _, p := range Proxies {
		if l.HasVIP(p) {
			hs = append(hs, p)
		}
	}
	return hs
}

// WaitHolder waits until exactly one proxy holds the VIP (want, if not "").
func (l *Lab) WaitHolder(want string, within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	for {
		hs := l.Holders()
		if len(hs) > 1 {
			return "", fmt.Errorf("two VIP holders: %v", hs)
		}
		if len(hs) == 1 && (want == "" || hs[0] == want) {
			return hs[0], nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no single VIP holder (want %q) within %s; holders %v", want, within, hs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Twin is the other proxy.
func Twin(p string) string {
	if p == "proxy1" {
		return "proxy2"
	}
	return "proxy1"
}

// Cut drops all traffic between hosts a and b (nft in both namespaces).
func (l *Lab) Cut(a, b string) error {
	for _, x := range [][2]string{{a, b}, {b, a}} {
		rules := fmt.Sprintf("table inet hlab {\n chain in { type filter hook input priority 0; policy accept;\n  ip saddr %s drop\n }\n"+
			" chain out { type filter hook output priority 0; policy accept;\n  ip daddr %s drop\n }\n}\n", Hosts[x[1]], Hosts[x[1]])
		cmd := exec.Command("ip", "netns", "exec", NS(x[0]), "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %w: %s", NS(x[0]), err, out)
		}
	}
	return nil
}

// Heal removes the rules of Cut from both hosts.
func (l *Lab) Heal(a, b string) {
	for _, h := range []string{a, b} {
		_ = exec.Command("ip", "netns", "exec", NS(h), "nft", "delete", "table", "inet", "hlab").Run()
	}
}

// client is an HTTP client whose connections are made inside host h's namespace.
func (l *Lab) client(h string) *http.Client {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.clients[h]; c != nil {
		return c
	}
	ns := NS(h)
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := InNS(ns, func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	l.clients[h] = c
	return c
}

// Status is the part of hapbx's /api/v1/status the lab reads.
type Status struct {
	Node      string `json:"node"`
	Active    string `json:"active_backend"`
	Registrar struct {
		Bindings int `json:"bindings"`
		AORs     int `json:"aors"`
	} `json:"registrar"`
	Health []struct {
		Name  string `json:"name"`
		State string `json:"state"`
		SIP   string `json:"sip"`
		AMI   string `json:"ami"`
	} `json:"backends_health"`
	Media   []json.RawMessage `json:"media_sessions"`
	Cluster *struct {
		Leader  string `json:"leader"`
		VIPHeld bool   `json:"vip_held"`
		Quorum  bool   `json:"quorum"`
		Members []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"members"`
	} `json:"cluster"`
}

// BackendState is the health state of backend name ("" when unknown).
func (s Status) BackendState(name string) string {
	for _, h := range s.Health {
		if h.Name == name {
			return h.State
		}
	}
	return ""
}

// BackendChecks is the last SIP and AMI check results of backend name.
func (s Status) BackendChecks(name string) (sip, ami string) {
	for _, h := range s.Health {
		if h.Name == name {
			return h.SIP, h.AMI
		}
	}
	return "", ""
}

// AliveMembers counts cluster members seen alive.
func (s Status) AliveMembers() int {
	n := 0
	if s.Cluster != nil {
		for _, m := range s.Cluster.Members {
			if m.State == "alive" {
				n++
			}
		}
	}
	return n
}

// Status reads /api/v1/status of the hapbx in host h.
func (l *Lab) Status(h string) (Status, error) {
	var s Status
	res, err := l.client(h).Get("http://" + AdminAddr + "/api/v1/status")
	if err != nil {
		return s, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return s, fmt.Errorf("%s status: %s", h, res.Status)
	}
	err = json.NewDecoder(res.Body).Decode(&s)
	return s, err
}

// Metric returns the value of the first sample line starting with name in
// host h's /metrics (-1 when absent).
func (l *Lab) Metric(h, name string) float64 {
	res, err := l.client(h).Get("http://" + AdminAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// WaitFor polls cond every 20 ms until it holds or d passes.
func WaitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Watch samples both proxies' namespaces every 50 ms for d. It returns the
// holder sequence seen (deduplicated; "-" for none) and an error at the first
// sample with two holders.
func (l *Lab) Watch(d time.Duration) ([]string, error) {
	var seq []string
	end := time.Now().Add(d)
	for {
		hs := l.Holders()
		if len(hs) > 1 {
			return append(seq, strings.Join(hs, "+")), fmt.Errorf("split brain: %v hold the VIP at %s", hs, time.Now().Format("15:04:05.000"))
		}
		cur := "-"
		if len(hs) == 1 {
			cur = hs[0]
		}
		if len(seq) == 0 || seq[len(seq)-1] != cur {
			seq = append(seq, cur)
		}
		if time.Now().After(end) {
			return seq, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}
