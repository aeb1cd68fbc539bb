package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Backends are the PBX hosts, in the proxies' preference order.
var Backends = []string{"pbx1", "pbx2"}

func (l *Lab) peersYAML() string {
	var b strings.Builder
	b.WriteString("  peers:\n")
	for _, n := range []string{"proxy1", "proxy2", "witness"} {
		fmt.Fprintf(&b, "    - {name: %s, gossip: \"%s:7946\", raft: \"%s:7947\"}\n", n, Hosts[n], Hosts[n])
	}
	return b.String()
}

// ProxyConfig is the hapbx configuration of proxy p (proxy1 or proxy2).
func (l *Lab) ProxyConfig(p string) string {
	prio := 100
	if p == "proxy1" && l.opt.Failback {
		prio = 200
	}
	data := filepath.Join(l.opt.Dir, "data-"+p)
	var b strings.Builder
	fmt.Fprintf(&b, "node: {name: %s}\n", p)
	// Both proxies share the dialog token key (the gossip key file serves:
	// any 16 bytes or more), so the twin accepts the calls of a dead proxy.
	fmt.Fprintf(&b, "sip:\n  listen: [\"udp://%s:%d\"]\n  advertise: %s\n  drain_timeout: 2s\n  dialog_secret_file: %q\n", VIP, SIPPort, VIP, l.Key)
	if l.cold() {
		// A cold failover to a real Asterisk (promote, mount, start, FullyBooted,
		// health up) took 3.4 s on the 2-core lab machine under load: more than
		// the 3 s default hold, and calls placed at its start got 503.
		b.WriteString("  no_backend_wait: 10s\n")
	}
	b.WriteString("backends:\n")
	for _, be := range Backends {
		if l.cold() {
			fmt.Fprintf(&b, "  - {name: %s, address: \"%s:%d\", transport: udp, ami: {address: \"%s\", username: %s, secret_file: %q},\n"+
				"     agent: {token_file: %q, fence: {safety_delay: 300ms}}}\n",
				be, Hosts[be], SIPPort, amiAddr(be), AMIUser, filepath.Join(l.opt.Dir, "ami.secret"), filepath.Join(l.opt.Dir, "agent.token"))
		} else if l.withAMI() {
			fmt.Fprintf(&b, "  - {name: %s, address: \"%s:%d\", transport: udp, ami: {address: \"%s\", username: %s, secret_file: %q}}\n",
				be, Hosts[be], SIPPort, amiAddr(be), AMIUser, filepath.Join(l.opt.Dir, "ami.secret"))
		} else {
			fmt.Fprintf(&b, "  - {name: %s, address: \"%s:%d\", transport: udp}\n", be, Hosts[be], SIPPort)
		}
	}
	if l.cold() {
		b.WriteString("routing: active-standby\nfailback: false\n")
		b.WriteString("cold: {enabled: true, poll_interval: 200ms, start_timeout: 20s, up_timeout: 10s}\n")
	} else {
		b.WriteString("routing: active-standby\nfailback: true\n")
	}
	if l.withAMI() {
		b.WriteString("health: {require: [sip, ami]}\n")
	} else {
		b.WriteString("health: {require: [sip]}\n")
	}
	fmt.Fprintf(&b, "registrar: {data_dir: %q}\n", filepath.Join(data, "registrar"))
	if l.opt.Media {
		dp := l.opt.MediaDatapath
		if dp == "" {
			dp = "user"
		}
		if l.opt.MediaIdleTimeout > 0 {
			fmt.Fprintf(&b, "media: {enabled: true, ports: \"20000-20999\", datapath: %s, idle_timeout: %s}\n", dp, l.opt.MediaIdleTimeout)
		} else {
			fmt.Fprintf(&b, "media: {enabled: true, ports: \"20000-20999\", datapath: %s}\n", dp)
		}
	}
	if l.opt.Trunk {
		b.WriteString(l.trunkYAML())
	}
	fmt.Fprintf(&b, "admin: {listen: %q}\nlog: {level: info, format: json}\n", AdminAddr)
	fmt.Fprintf(&b, "cluster:\n  name: %s\n  bind: \"%s:7946\"\n", p, Hosts[p])
	b.WriteString(l.peersYAML())
	fmt.Fprintf(&b, "  secret_file: %q\n  priority: %d\n  failback: %v\n  failback_delay: 1s\n  data_dir: %q\n",
		l.Key, prio, l.opt.Failback, filepath.Join(data, "cluster"))
	fmt.Fprintf(&b, "  vip: {address: \"%s/24\", interface: %s, garp_count: 3, garp_interval: 100ms}\n", VIP, If)
	return b.String()
}

// WitnessConfig is the witness's configuration.
func (l *Lab) WitnessConfig() string {
	var b strings.Builder
	b.WriteString("node: {name: witness}\n")
	fmt.Fprintf(&b, "cluster:\n  name: witness\n  bind: \"%s:7946\"\n", Hosts["witness"])
	b.WriteString(l.peersYAML())
	fmt.Fprintf(&b, "  secret_file: %q\n  data_dir: %q\n", l.Key, filepath.Join(l.opt.Dir, "data-witness", "cluster"))
	fmt.Fprintf(&b, "admin: {listen: %q}\nlog: {level: info, format: json}\n", AdminAddr)
	return b.String()
}

// WriteConfigs writes proxy1.yaml, proxy2.yaml and witness.yaml into Dir.
func (l *Lab) WriteConfigs() error {
	if l.opt.Trunk {
		if err := os.WriteFile(l.trunkSecretFile(), []byte(TrunkPassword+"\n"), 0o600); err != nil {
			return err
		}
	}
	if l.withAMI() {
		if _, err := l.amiSecretFile(); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(l.opt.Dir, "agent.token"), []byte(agentToken+"\n"), 0o600); err != nil {
			return err
		}
	}
	files := map[string]string{"witness": l.WitnessConfig()}
	for _, p := range Proxies {
		files[p] = l.ProxyConfig(p)
	}
	for n, c := range files {
		if err := os.WriteFile(l.configPath(n), []byte(c), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) configPath(n string) string { return filepath.Join(l.opt.Dir, n+".yaml") }

// StartProxy runs `hapbx run` in proxy p's namespace and waits until its
// admin interface answers.
func (l *Lab) StartProxy(p string) error {
	if _, err := l.Start(NS(p), p, l.opt.Bin, "run", "-c", l.configPath(p)); err != nil {
		return err
	}
	return l.waitAdmin(p)
}

// StartWitness runs `hapbx witness` in the witness namespace.
func (l *Lab) StartWitness() error {
	if _, err := l.Start(NS("witness"), "witness", l.opt.Bin, "witness", "-c", l.configPath("witness")); err != nil {
		return err
	}
	return WaitFor(10*time.Second, "the witness's metrics", func() bool { return l.Metric("witness", "hapbx_cluster_members") >= 0 })
}

func (l *Lab) waitAdmin(h string) error {
	p := l.Proc(h)
	err := WaitFor(10*time.Second, h+"'s admin interface", func() bool {
		if p != nil && p.Exited() {
			return true
		}
		_, err := l.Status(h)
		return err == nil
	})
	if p != nil && p.Exited() {
		return fmt.Errorf("%s exited:\n%s", h, p.Log(3000))
	}
	return err
}

// KillProxy SIGKILLs proxy p and then runs what the systemd unit's
// ExecStopPost runs on a real host, `hapbx release-vip`: it removes a VIP
// the dead process left on the interface (a dead host would not answer for
// it either).
func (l *Lab) KillProxy(p string) {
	l.Kill(p)
	if err := run("ip", "netns", "exec", NS(p), l.opt.Bin, "release-vip", "-c", l.configPath(p)); err != nil {
		_ = run("ip", "-n", NS(p), "addr", "del", VIP+"/24", "dev", If)
	}
}

// StopProxy ends proxy p with SIGTERM (it releases the VIP itself).
func (l *Lab) StopProxy(p string) {
	if pr := l.Proc(p); pr != nil {
		pr.Signal(syscall.SIGTERM)
		if pr.Wait(10*time.Second) < 0 {
			l.KillProxy(p)
		}
		l.forget(p, pr)
	}
}

// Up starts the witness and both proxies and waits until one proxy holds the
// VIP, every node sees three members, and the holder has an active backend.
func (l *Lab) Up() (holder string, err error) {
	if err := l.WriteConfigs(); err != nil {
		return "", err
	}
	if l.opt.Media && l.opt.MediaDatapath == "kernel" {
		// The kernel path forwards (media doc); relayed packets leave by
		// the interface they came in by: no ICMP redirects for them.
		for _, p := range Proxies {
			if err := run("ip", "netns", "exec", NS(p), "sysctl", "-qw", "net.ipv4.ip_forward=1",
				"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf."+If+".send_redirects=0"); err != nil {
				return "", err
			}
		}
	}
	if err := l.StartWitness(); err != nil {
		return "", err
	}
	for _, p := range Proxies {
		if err := l.StartProxy(p); err != nil {
			return "", err
		}
	}
	if holder, err = l.WaitHolder("", 20*time.Second); err != nil {
		return "", err
	}
	return holder, l.WaitStable(15 * time.Second)
}

// WaitStable waits until both proxies see three alive members, know the
// leader and have quorum.
func (l *Lab) WaitStable(within time.Duration) error {
	return WaitFor(within, "a stable cluster (3 members, a leader, quorum on both proxies)", func() bool {
		for _, p := range Proxies {
			s, err := l.Status(p)
			if err != nil || s.Cluster == nil || s.Cluster.Leader == "" || !s.Cluster.Quorum || s.AliveMembers() < 3 {
				return false
			}
		}
		return true
	})
}

// Scenario returns the path of a SIPp scenario: deploy/lab/testdata first, then proxy/testdata.
func (l *Lab) Scenario(name string) string {
	p := filepath.Join(l.opt.Root, "deploy", "lab", "testdata", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return filepath.Join(l.opt.Root, "proxy", "testdata", name)
}

// Sipp runs sipp in host h's namespace on h's address and port, with the
// screen, its messages, the unexpected ones and those of each aborted call
// traced into its directory (FailedCalls reads them), each file bounded.
func (l *Lab) Sipp(h, name string, port int, args ...string) (*Proc, error) {
	full := []string{"sipp", "-i", Hosts[h], "-p", strconv.Itoa(port), "-nostdin", "-trace_err", "-trace_screen",
		"-trace_calldebug", "-max_log_size", strconv.Itoa(sippTraceMax)}
	if !slices.Contains(args, "-trace_msg") {
		full = append(full, "-trace_msg")
	}
	full = append(full, args...)
	return l.Start(NS(h), name, full...)
}

// StartBackend runs the PBX on host be: asterisk with deploy/asterisk's
// configs (AsteriskConfigs) when Options.Asterisk names one, else a SIPp UAS
// playing Asterisk (scenario: uas_lab.xml accepts every phone's digest
// REGISTER; extra args are passed to sipp) with the lab's AMI server
// (AMIServerMain) on port AMIPort beside it. It returns once the PBX listens
// for SIP and AMI.
func (l *Lab) StartBackend(be string, extra ...string) (*Proc, error) {
	if l.opt.Asterisk != "" {
		conf, err := l.writeAsterisk(be)
		if err != nil {
			return nil, err
		}
		p, err := l.Start(NS(be), be, l.opt.Asterisk, "-f", "-C", conf)
		if err != nil {
			return nil, err
		}
		if err := l.waitUDP(be, SIPPort, p); err != nil {
			return nil, err
		}
		return p, l.waitTCP(be, AMIPort, p)
	}
	if l.withAMI() {
		if _, err := l.startAMI(be); err != nil {
			return nil, err
		}
	}
	args := append([]string{"-sf", l.Scenario("uas_lab.xml")}, extra...)
	p, err := l.Sipp(be, be, SIPPort, args...)
	if err != nil {
		return nil, err
	}
	return p, l.waitUDP(be, SIPPort, p)
}

// waitUDP waits until something in host h's namespace has bound UDP port.
func (l *Lab) waitUDP(h string, port int, p *Proc) error { return l.waitListen(h, "-Hlun", port, p) }

// waitTCP waits until something in host h's namespace listens on TCP port.
func (l *Lab) waitTCP(h string, port int, p *Proc) error { return l.waitListen(h, "-Hltn", port, p) }

func (l *Lab) waitListen(h, ssFlags string, port int, p *Proc) error {
	err := WaitFor(15*time.Second, fmt.Sprintf("%s listening on port %d (ss %s)", h, port, ssFlags), func() bool {
		if p.Exited() {
			return true
		}
		out, _ := runOut("ip", "netns", "exec", NS(h), "ss", ssFlags, "sport", "= :"+strconv.Itoa(port))
		return strings.TrimSpace(out) != ""
	})
	if p.Exited() {
		return fmt.Errorf("%s exited:\n%s", p.Name, p.Log(3000))
	}
	return err
}

func runOut(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).Output()
	return string(out), err
}
