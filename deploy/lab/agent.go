package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The PBX nodes' storage agents (`hapbx agent`), one per PBX namespace: they
// join the proxies' cluster with the same key (memberlist only) and run their
// resource group — DRBD through the drbdadm and drbdsetup stand-ins of
// internal/testkit/drbd (a two-node DRBD kept in files under Dir/drbd, node A =
// pbx1, B = pbx2), a tmpfs mount point in the agent's own private mount
// namespace (`unshare --mount`), and the PBX as its service
// (start_command/stop_command run SIPp and the AMI server, or asterisk with
// Options.Asterisk). In hot standby
// nothing asks an agent to start: the lab runs both PBXs itself. In cold
// standby (Options.Cold) the leader proxy does.
const (
	// AgentPort is each agent's control API (and /metrics) on its host's address.
	AgentPort = 7790
	// agentToken is the agents' bearer token (Dir/agent.token).
	agentToken = "lab-agent-token"
)

var agentNode = map[string]string{"pbx1": "A", "pbx2": "B"}

// withAgents reports whether the lab runs agents: they need the stand-ins
// (repository root), unshare, and an AMI for their readiness check.
func (l *Lab) withAgents() bool {
	if !l.withAMI() {
		return false
	}
	if _, err := os.Stat(filepath.Join(l.stubBin(), "drbdadm")); err != nil {
		return false
	}
	_, err := runOut("sh", "-c", "command -v unshare && command -v flock")
	return err == nil
}

// cold reports whether the PBXs are in cold standby (Options.Cold, and the
// agents can run here).
func (l *Lab) cold() bool { return l.opt.Cold && l.withAgents() }

func (l *Lab) stubBin() string { return filepath.Join(l.opt.Root, "internal", "testkit", "drbd") }
func (l *Lab) stubDir() string { return filepath.Join(l.opt.Dir, "drbd") }

// AgentConfig is the `hapbx agent` file of PBX host be.
func (l *Lab) AgentConfig(be string) (string, error) {
	secret := filepath.Join(l.opt.Dir, "ami.secret")
	pids := filepath.Join(l.stubDir(), "svc-"+be+".pids")
	start, err := l.pbxStartCommand(be, pids)
	if err != nil {
		return "", err
	}
	stop := fmt.Sprintf("if [ -f %[1]s ]; then for p in $(cat %[1]s); do kill $p 2>/dev/null; "+
		"while [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do sleep 0.01; done; done; rm -f %[1]s; fi", pids)
	ready := 10 * time.Second
	if l.opt.Asterisk != "" {
		ready = 30 * time.Second // a real Asterisk loads its modules first
	}
	var b strings.Builder
	fmt.Fprintf(&b, "node: {name: %s}\n", be)
	fmt.Fprintf(&b, "agent:\n  listen: \"%s:%d\"\n  token_file: %q\n", Hosts[be], AgentPort, filepath.Join(l.opt.Dir, "agent.token"))
	fmt.Fprintf(&b, "  drbd: {resource: r0, drbdadm: %q, drbdsetup: %q, timeout: 5s}\n",
		filepath.Join(l.stubBin(), "drbdadm"), filepath.Join(l.stubBin(), "drbdsetup"))
	fmt.Fprintf(&b, "  filesystem: {device: hlab-%s, mount_point: %q, type: tmpfs, options: \"size=1m,mode=0755\", timeout: 5s}\n",
		be, filepath.Join(l.opt.Dir, "replica"))
	fmt.Fprintf(&b, "  service:\n    start_command: %q\n    stop_command: %q\n    timeout: 10s\n", start, stop)
	// The same safety delay as the proxies' (ProxyConfig): after their wait
	// the agent has none left.
	fmt.Fprintf(&b, "  ready_timeout: %s\n  fence: {safety_delay: 300ms}\n", ready)
	fmt.Fprintf(&b, "  ready:\n    sip: \"%s:%d\"\n    transport: udp\n    ami: {address: %q, username: %s, secret_file: %q}\n",
		Hosts[be], SIPPort, amiAddr(be), AMIUser, secret)
	b.WriteString("log: {level: info, format: json}\n")
	fmt.Fprintf(&b, "cluster:\n  bind: \"%s:7946\"\n", Hosts[be])
	b.WriteString(l.peersYAML())
	fmt.Fprintf(&b, "  secret_file: %q\n", l.Key)
	return b.String(), nil
}

// StartAgent runs `hapbx agent` for PBX host be in its namespace, under
// `unshare --mount --propagation private` with the DRBD stand-ins first on
// PATH, and waits until its API answers.
func (l *Lab) StartAgent(be string) error {
	for _, d := range []string{l.stubDir(), filepath.Join(l.opt.Dir, "replica")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if _, err := l.amiSecretFile(); err != nil {
		return err
	}
	conf, err := l.AgentConfig(be)
	if err != nil {
		return err
	}
	files := map[string]string{
		filepath.Join(l.stubDir(), "up.A"):            "1",
		filepath.Join(l.stubDir(), "up.B"):            "1",
		filepath.Join(l.opt.Dir, "agent.token"):       agentToken,
		filepath.Join(l.opt.Dir, "agent-"+be+".yaml"): conf,
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(strings.TrimSuffix(c, "\n")+"\n"), 0o600); err != nil {
			return err
		}
	}
	name := "agent-" + be
	p, err := l.Start(NS(be), name, "env", "PATH="+l.stubBin()+":"+os.Getenv("PATH"),
		"DRBD_STUB_DIR="+l.stubDir(), "DRBD_STUB_NODE="+agentNode[be], "DRBD_STUB_RES=r0",
		"unshare", "--mount", "--propagation", "private", l.opt.Bin, "agent", "-c", filepath.Join(l.opt.Dir, name+".yaml"))
	if err != nil {
		return err
	}
	err = WaitFor(10*time.Second, name+"'s API", func() bool {
		if p.Exited() {
			return true
		}
		_, err := l.AgentStatus(be)
		return err == nil
	})
	if p.Exited() {
		return fmt.Errorf("%s exited:\n%s", name, p.Log(3000))
	}
	return err
}

// KillService SIGKILLs the PBX processes (asterisk, or SIPp and the AMI server) that backend
// be's agent started as its service: the PBX crashes, its agent lives.
func (l *Lab) KillService(be string) error {
	b, err := os.ReadFile(filepath.Join(l.stubDir(), "svc-"+be+".pids"))
	if err != nil {
		return fmt.Errorf("%s's service pids: %w", be, err)
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}

// AgentState is the part of an agent's /agent/v1/status the lab reads.
type AgentState struct {
	State      string `json:"state"`
	DRBDRole   string `json:"drbd_role"`
	Disk       string `json:"disk"`
	PeerRole   string `json:"peer_role"`
	Connection string `json:"connection"`
	Mounted    string `json:"mounted"`
	Service    string `json:"service"`
}

// AgentStatus reads the status of PBX host be's agent.
func (l *Lab) AgentStatus(be string) (AgentState, error) {
	var s AgentState
	res, err := l.client(be).Get(fmt.Sprintf("http://%s:%d/agent/v1/status", Hosts[be], AgentPort))
	if err != nil {
		return s, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return s, fmt.Errorf("agent %s status: %s", be, res.Status)
	}
	err = json.NewDecoder(res.Body).Decode(&s)
	return s, err
}

// AgentsLine is one line with every agent's view: group state, DRBD role
// and connection, mount, service.
func (l *Lab) AgentsLine() string {
	var parts []string
	for _, be := range Backends {
		s, err := l.AgentStatus(be)
		if err != nil {
			parts = append(parts, be+" unreachable")
			continue
		}
		m := s.Mounted
		if m == "" {
			m = "nothing"
		}
		parts = append(parts, fmt.Sprintf("%s group %s, DRBD %s/%s peer %s %s, mounted %s, service %s",
			be, s.State, s.DRBDRole, s.Disk, s.PeerRole, s.Connection, m, s.Service))
	}
	mode := "agents (hot standby, not asked to start): "
	if l.cold() {
		mode = "agents (cold standby): "
	}
	return mode + strings.Join(parts, "; ")
}
