package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health/amitest"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/storage"
)

// The cold standby tests run two PBX "nodes" A and B on loopback: each is
// a `hapbx agent` process under `unshare --mount` (its tmpfs "DRBD file
// system" lives and dies with it) driving the drbdadm/drbdsetup stand-ins
// of testkit.DRBD (a shared two-node DRBD state in files, every call
// logged), and an "Asterisk" started by the agent: SIPp answering
// OPTIONS and calls, plus this test binary re-executed as an AMI server.
// `fence-node X` stands in for an IPMI power-off of node X.

const amiChildEnv = "HAPBX_TEST_AMI"

// amiChild serves AMI (booted) on addr until killed.
func amiChild(addr string) int {
	srv, err := amitest.Start(addr, "hapbx", "amipw")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer srv.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

func needCold(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agents mount a tmpfs in a private mount namespace (unshare --mount)")
	}
	for _, tool := range []string{"unshare", "flock"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH: %v", tool, err)
		}
	}
	testkit.RequireSIPp(t)
}

var coldIPs = map[string]string{"A": be1IP, "B": be2IP}

// coldLab is the two nodes, their shared DRBD stand-in state and the proxy.
type coldLab struct {
	t     testing.TB
	dir   string
	drbd  *testkit.DRBD
	mnt   string
	nodes map[string]*pbxNode
	proxy *daemon
	// noFence: no fence commands anywhere; fencing waits for the DRBD
	// disconnection (plus 300 ms on the proxy's side).
	noFence bool
	// cluster, when set (newLabCluster), makes the proxy a cluster voter
	// and the agents join: the proxy's file then has no agent urls.
	cluster *labCluster
}

type pbxNode struct {
	name    string // A or B
	backend string // asterisk1 or asterisk2
	sip     string
	ami     string
	api     string
	cfgPath string
	logPath string
	proc    *testkit.Process // the agent
	client  storage.Client
	env     []string
}

func newColdLab(t testing.TB) *coldLab {
	t.Helper()
	needCold(t)
	dir := t.TempDir()
	l := &coldLab{t: t, dir: dir, drbd: testkit.NewDRBD(t, "A", "B"), mnt: filepath.Join(dir, "replica"), nodes: map[string]*pbxNode{}}
	if err := os.Mkdir(l.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"agent.token": "agent-secret", "admin.token": "admin-secret", "ami.secret": "amipw"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func (l *coldLab) fenceCommand(n string, fail bool) string {
	if l.noFence {
		return ""
	}
	return l.drbd.FenceCommand(n, fail)
}

func peerNode(n string) string {
	if n == "A" {
		return "B"
	}
	return "A"
}

// addNode writes node n's agent file and starts its agent.
func (l *coldLab) addNode(n string, fenceFails bool) *pbxNode {
	t := l.t
	t.Helper()
	ip := coldIPs[n]
	nd := &pbxNode{name: n, backend: map[string]string{"A": "asterisk1", "B": "asterisk2"}[n],
		sip:     net.JoinHostPort(ip, strconv.Itoa(testkit.FreePort(t, ip))),
		ami:     "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1")),
		api:     "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t, "127.0.0.1")),
		cfgPath: filepath.Join(l.dir, "agent-"+n+".yaml"),
		logPath: filepath.Join(l.dir, "agent-"+n+".log"),
	}
	nd.client = storage.Client{BaseURL: "http://" + nd.api, Token: "agent-secret", HTTP: &http.Client{Timeout: 30 * time.Second}}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(nd.sip)
	pids := l.drbd.Path("pids." + n)
	svc := l.drbd.Path("svc." + n + ".pids")
	start := fmt.Sprintf("sipp -sf %s -i %s -p %s -nostdin -m 1000000 >%s 2>&1 </dev/null & echo $! >>%s; echo $! >%s; "+
		"%s=%s %s -test.run='^$' >%s 2>&1 </dev/null & echo $! >>%s; echo $! >>%s",
		scenarioPath("uas_call.xml"), host, port, filepath.Join(l.dir, "sipp-"+n+".log"), pids, svc,
		amiChildEnv, nd.ami, exe, filepath.Join(l.dir, "ami-"+n+".log"), pids, svc)
	// Zombies (reparented, reaped late) count as gone.
	stop := fmt.Sprintf("if [ -f %[1]s ]; then for p in $(cat %[1]s); do kill $p 2>/dev/null; "+
		"while [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do sleep 0.01; done; done; rm -f %[1]s; fi", svc)
	cfg := fmt.Sprintf(`node: {name: %s}
agent:
  listen: %q
  token_file: %q
  drbd: {resource: r0, drbdadm: %q, drbdsetup: %q, timeout: 5s}
  filesystem: {device: hapbx-%s, mount_point: %q, type: tmpfs, options: "size=1m,mode=0755", timeout: 5s}
  service:
    start_command: %q
    stop_command: %q
    timeout: 5s
  ready_timeout: 10s
  fence: {command: %q, timeout: 5s, safety_delay: 0s}
  ready:
    sip: %q
    transport: udp
    ami: {address: %q, username: hapbx, secret_file: %q}
log: {level: debug, format: console}
%s`, l.agentNodeName(nd), nd.api, filepath.Join(l.dir, "agent.token"), l.drbd.Tool("drbdadm"), l.drbd.Tool("drbdsetup"),
		n, l.mnt, start, stop, l.fenceCommand(peerNode(n), fenceFails), nd.sip, nd.ami, filepath.Join(l.dir, "ami.secret"), l.agentCluster(nd))
	if err := os.WriteFile(nd.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(hapbxBin, "check-config", "-c", nd.cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("agent file: %v\n%s", err, out)
	}
	nd.env = append(os.Environ(), l.drbd.Env(n, l.mnt)...)
	l.nodes[n] = nd
	l.startAgent(nd)
	t.Cleanup(func() {
		l.stopAgent(nd)
		l.killService(nd)
		if t.Failed() {
			b, _ := os.ReadFile(nd.logPath)
			t.Logf("agent %s log (tail):\n%s", n, tail(b, 6000))
		}
	})
	return nd
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// startAgent (re)starts nd's agent in its own mount namespace and waits
// until its API answers with the DRBD state followed.
func (l *coldLab) startAgent(nd *pbxNode) {
	t := l.t
	t.Helper()
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", hapbxBin, "agent", "-c", nd.cfgPath)
	cmd.Env = nd.env
	cmd.Stdout, cmd.Stderr = logf, logf
	nd.proc, err = testkit.Watch(cmd)
	if err != nil {
		t.Fatal(err)
	}
	l.drbd.AddPID(nd.name, cmd.Process.Pid)
	if !testkit.Poll(10*time.Second, func() bool {
		var st storage.Status
		st, err = nd.client.Status(context.Background())
		return err == nil && st.EventsFollowing && st.DRBDRole != storage.RoleUnknown
	}) {
		b, _ := os.ReadFile(nd.logPath)
		t.Fatalf("agent %s not up: %v\n%s", nd.name, err, tail(b, 4000))
	}
}

func (l *coldLab) stopAgent(nd *pbxNode) {
	if nd.proc != nil {
		nd.proc.Stop(3 * time.Second)
	}
}

// killService SIGKILLs the node's SIPp and AMI server, as a crash would.
func (l *coldLab) killService(nd *pbxNode) {
	testkit.KillPIDFile(l.drbd.Path("svc." + nd.name + ".pids"))
}

// crash SIGKILLs node n's service and agent; its "kernel" keeps DRBD
// Primary, as a hung or half-dead host would.
func (l *coldLab) crash(nd *pbxNode) {
	l.killService(nd)
	nd.proc.Kill()
}

// powerOn brings a fenced node back (up, Secondary) and restarts its agent.
func (l *coldLab) powerOn(nd *pbxNode) {
	l.drbd.Write("up."+nd.name, "1")
	l.drbd.Write("role."+nd.name, storage.RoleSecondary)
	_ = os.Remove(l.drbd.Path("pids." + nd.name))
	l.startAgent(nd)
}

// startProxy runs `hapbx run` in cold mode in front of the nodes.
func (l *coldLab) startProxy(fenceFails bool) *daemon {
	t := l.t
	t.Helper()
	d := &daemon{config: filepath.Join(l.dir, "hapbx.yaml")}
	sipPort := testkit.FreePort(t, proxyIP)
	adminPort := testkit.FreePort(t, "127.0.0.1")
	d.sip = net.JoinHostPort(proxyIP, strconv.Itoa(sipPort))
	d.admin = "http://127.0.0.1:" + strconv.Itoa(adminPort)
	var b strings.Builder
	fmt.Fprintf(&b, "node: {name: test}\nsip:\n  listen: [\"udp://%s\"]\n  advertise: %s\n", d.sip, proxyIP)
	if l.cluster != nil {
		// Required with a cluster; the gossip key file serves (>= 16 bytes).
		fmt.Fprintf(&b, "  dialog_secret_file: %q\n", l.cluster.key)
	}
	b.WriteString("backends:\n")
	for _, n := range []string{"A", "B"} {
		nd := l.nodes[n]
		url := fmt.Sprintf("url: %q\n      ", "http://"+nd.api)
		if l.cluster != nil {
			url = "" // announced by the agent in the cluster
		}
		fmt.Fprintf(&b, "  - name: %s\n    address: %q\n    transport: udp\n    agent:\n      %stoken_file: %q\n      fence: {command: %q, timeout: 5s, safety_delay: 300ms}\n",
			nd.backend, nd.sip, url, filepath.Join(l.dir, "agent.token"), l.fenceCommand(n, fenceFails))
	}
	if l.cluster != nil {
		b.WriteString(l.cluster.proxySection(l.dir))
	}
	fmt.Fprintf(&b, "cold: {enabled: true, poll_interval: 200ms, start_timeout: 20s, up_timeout: 10s}\n")
	fmt.Fprintf(&b, "registrar: {data_dir: %q}\n", filepath.Join(l.dir, "data"))
	fmt.Fprintf(&b, "admin: {listen: \"127.0.0.1:%d\", token_file: %q}\nlog: {level: debug, format: console}\n", adminPort, filepath.Join(l.dir, "admin.token"))
	if err := os.WriteFile(d.config, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	l.proxy = d
	return d
}

// coldStatus is the part of /api/v1/status the tests read.
type coldStatus struct {
	Active string `json:"active_backend"`
	Cold   struct {
		Holder  string `json:"holder"`
		Phase   string `json:"phase"`
		Blocked string `json:"blocked"`
		Nodes   []struct {
			Name      string         `json:"name"`
			Health    string         `json:"health"`
			Reachable bool           `json:"reachable"`
			Error     string         `json:"error"`
			Agent     storage.Status `json:"agent"`
		} `json:"nodes"`
		Last *struct {
			From, To     string
			Fenced       bool
			DownAt       time.Time     `json:"down_at"`
			StoppedAt    time.Time     `json:"stopped_at"`
			StartedAt    time.Time     `json:"started_at"`
			UpAt         time.Time     `json:"up_at"`
			ServiceReady time.Duration `json:"service_ready_ns"`
			Overhead     time.Duration `json:"overhead_ns"`
			Error        string
		} `json:"last_move"`
	} `json:"cold"`
}

func (l *coldLab) status() (coldStatus, error) {
	var s coldStatus
	res, err := http.Get(l.proxy.admin + "/api/v1/status")
	if err != nil {
		return s, err
	}
	defer res.Body.Close()
	err = json.NewDecoder(res.Body).Decode(&s)
	return s, err
}

func (l *coldLab) waitStatus(what string, within time.Duration, ok func(coldStatus) bool) coldStatus {
	l.t.Helper()
	var s coldStatus
	var err error
	if !testkit.Poll(within, func() bool {
		s, err = l.status()
		return err == nil && ok(s)
	}) {
		l.t.Fatalf("%s not reached within %v: last %+v %v", what, within, s, err)
	}
	return s
}

// hapbx runs the CLI against the proxy's file.
func (l *coldLab) hapbx(args ...string) (string, error) {
	cmd := exec.Command(hapbxBin, append(args, "-c", l.proxy.config)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// calls places n calls through the proxy and fails the test unless all
// succeed.
func (l *coldLab) calls(n int) {
	l.t.Helper()
	phone := testkit.StartSIPp(l.t, phoneIP, testkit.FreePort(l.t, phoneIP), "-sf", scenarioPath("uac_call.xml"),
		"-s", "202", "-m", strconv.Itoa(n), "-r", "20", "-timeout", "15s", "-timeout_error", l.proxy.sip)
	if code := phone.Wait(20 * time.Second); code != 0 {
		l.t.Fatalf("calls through the proxy failed (exit %d)\n%s", code, phone.Output())
	}
	if c := phone.Counts(); c.Successful != n || c.Failed != 0 {
		l.t.Fatalf("calls: %+v, want %d successful\n%s", c, n, phone.Output())
	}
}
