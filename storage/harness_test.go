package storage

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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

	"github.com/hapbx/hapbx/internal/testkit"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
)

// The integration tests run each node's agent in a child process (this test
// binary re-executed) under `unshare --mount --propagation private`, so its
// tmpfs mount lives in the child's own mount namespace and dies with it.

const (
	childEnv    = "HAPBX_STORAGE_CHILD"
	childCfg    = "HAPBX_STORAGE_CFG"
	childSIP    = "HAPBX_STORAGE_SIP"
	childListen = "HAPBX_STORAGE_LISTEN"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "agent" {
		os.Exit(childAgent())
	}
	os.Exit(m.Run())
}

// childAgent is the node process: agent + control API + /metrics.
func childAgent() int {
	raw, err := os.ReadFile(os.Getenv(childCfg))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := DefaultConfig()
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log, _ := zap.NewDevelopment()
	reg := prometheus.NewRegistry()
	opts := []Option{WithPollInterval(20*time.Millisecond, 300*time.Millisecond)}
	if os.Getenv(childSIP) != "" {
		opts = append(opts, WithReadyChecker(sipOptionsReady(os.Getenv(childSIP))))
	}
	a, err := New(cfg, log.Named("agent"), reg, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ln, err := net.Listen("tcp", os.Getenv(childListen))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", a.Handler())
	go http.Serve(ln, mux)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Error("run", zap.Error(err))
		return 1
	}
	return 0
}

// sipOptionsReady is the tests' readiness check: the SIP stack on addr
// answers an OPTIONS with 200 (the production check lives in health).
func sipOptionsReady(addr string) ReadyFunc {
	return func(ctx context.Context) error {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		deadline := time.Now().Add(300 * time.Millisecond)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		conn.SetDeadline(deadline)
		id := randHex()
		local := conn.LocalAddr().String()
		req := "OPTIONS sip:" + addr + " SIP/2.0\r\n" +
			"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK" + id + "\r\n" +
			"Max-Forwards: 70\r\n" +
			"From: <sip:probe@" + local + ">;tag=" + id + "\r\n" +
			"To: <sip:" + addr + ">\r\n" +
			"Call-ID: " + id + "\r\n" +
			"CSeq: 1 OPTIONS\r\n" +
			"Content-Length: 0\r\n\r\n"
		if _, err := conn.Write([]byte(req)); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return fmt.Errorf("OPTIONS to %s: %w", addr, err)
			}
			msg, err := sip.ParseMessage(buf[:n])
			if err != nil {
				continue
			}
			res, ok := msg.(*sip.Response)
			if !ok || res.CallID() == nil || res.CallID().Value() != id {
				continue
			}
			if res.StatusCode != 200 {
				return fmt.Errorf("OPTIONS to %s answered %d", addr, res.StatusCode)
			}
			return nil
		}
	}
}

func randHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// cluster is the shared DRBD stand-in state of node A and node B.
type cluster struct {
	t     *testing.T
	dir   string // test dir: token, mount point, logs
	stub  string // DRBD_STUB_DIR
	bin   string // absolute testdata/bin
	token string
	mnt   string
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts tmpfs in a private mount namespace (unshare --mount)")
	}
	for _, tool := range []string{"sipp", "unshare", "flock"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH: %v", tool, err)
		}
	}
}

func newCluster(t *testing.T, up ...string) *cluster {
	t.Helper()
	bin, err := filepath.Abs("testdata/bin")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, stub: filepath.Join(dir, "drbd"), bin: bin, token: randHex(), mnt: filepath.Join(dir, "replica")}
	for _, d := range []string{c.stub, c.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range up {
		c.write("up."+n, "1")
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(c.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.stub, "calls.log"))
			t.Logf("calls.log:\n%s", b)
		}
	})
	return c
}

func (c *cluster) write(name, content string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.stub, name), []byte(content+"\n"), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(c.stub, name))
	return strings.TrimSpace(string(b))
}

// fenceCommand powers node n off in the stand-in state.
func (c *cluster) fenceCommand(n string, fail bool) string {
	f := "0"
	if fail {
		f = "1"
	}
	return fmt.Sprintf("FENCE_FAIL=%s DRBD_STUB_DIR=%s %s %s", f, c.stub, filepath.Join(c.bin, "fence-node"), n)
}

// node is one agent process.
type node struct {
	name    string
	cfg     Config
	cmd     *exec.Cmd
	client  Client
	sipAddr string
	base    string
	logPath string
}

func peerOf(n string) string {
	if n == "A" {
		return "B"
	}
	return "A"
}

// config is node n's agent config: the stand-ins, a tmpfs on the shared
// mount point path (private per node), a SIPp "Asterisk" on its own port.
func (c *cluster) config(n string, sipPort int) Config {
	cfg := DefaultConfig()
	cfg.Listen = ""
	cfg.TokenFile = filepath.Join(c.dir, "token")
	cfg.DRBD = DRBDConfig{Resource: "r0", Drbdadm: filepath.Join(c.bin, "drbdadm"), Drbdsetup: filepath.Join(c.bin, "drbdsetup"), Timeout: 5 * time.Second}
	cfg.Filesystem = FilesystemConfig{Device: "hapbx-" + n, MountPoint: c.mnt, Type: "tmpfs", Options: "size=1m,mode=0755,noatime", Timeout: 5 * time.Second}
	pid := filepath.Join(c.stub, "sipp."+n+".pid")
	cfg.Service = ServiceConfig{
		StartCommand: fmt.Sprintf("sipp -sf %s -i 127.0.0.1 -p %d -nostdin -m 1000000 >%s 2>&1 </dev/null & echo $! >%s; echo $! >>%s",
			filepath.Join(filepath.Dir(c.bin), "uas_options.xml"), sipPort, filepath.Join(c.dir, "sipp-"+n+".log"), pid, filepath.Join(c.stub, "pids."+n)),
		// SIPp was reparented to an init that may reap late: a zombie
		// counts as gone.
		StopCommand: fmt.Sprintf("if [ -f %[1]s ]; then p=$(cat %[1]s); kill $p 2>/dev/null; while [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do sleep 0.01; done; rm -f %[1]s; fi", pid),
		Timeout:     5 * time.Second,
	}
	cfg.ReadyTimeout = 5 * time.Second
	cfg.Fence = FenceConfig{Command: c.fenceCommand(peerOf(n), false), Timeout: 5 * time.Second, SafetyDelay: 0}
	return cfg
}

// start runs node n's agent in its own mount namespace.
func (c *cluster) start(n string, cfg Config, sipPort int, env ...string) *node {
	t := c.t
	t.Helper()
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(c.dir, "agent-"+n+".yaml")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1"))
	nd := &node{name: n, cfg: cfg, sipAddr: fmt.Sprintf("127.0.0.1:%d", sipPort), base: "http://" + listen, logPath: filepath.Join(c.dir, "agent-"+n+".log")}
	nd.client = Client{BaseURL: nd.base, Token: c.token, HTTP: &http.Client{Timeout: 30 * time.Second}}
	logf, err := os.Create(nd.logPath)
	if err != nil {
		t.Fatal(err)
	}
	nd.cmd = exec.Command("unshare", "--mount", "--propagation", "private", exe, "-test.run=^$")
	nd.cmd.Env = append(os.Environ(), childEnv+"=agent", childCfg+"="+cfgPath, childSIP+"="+nd.sipAddr, childListen+"="+listen,
		"DRBD_STUB_DIR="+c.stub, "DRBD_STUB_NODE="+n, "DRBD_STUB_MOUNT="+c.mnt)
	nd.cmd.Env = append(nd.cmd.Env, env...)
	nd.cmd.Stdout, nd.cmd.Stderr = logf, logf
	if err := nd.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	f, err := os.OpenFile(filepath.Join(c.stub, "pids."+n), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, nd.cmd.Process.Pid)
		f.Close()
	}
	exited := make(chan struct{})
	go func() { nd.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		nd.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			nd.cmd.Process.Kill()
			<-exited
		}
		nd.killService(c)
		if t.Failed() {
			b, _ := os.ReadFile(nd.logPath)
			t.Logf("agent %s log:\n%s", n, b)
		}
	})
	// Up when the API answers and events2 delivered the initial state.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := nd.client.Status(context.Background())
		if err == nil && st.EventsFollowing && st.DRBDRole != RoleUnknown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s not up: %v", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nd
}

// killService SIGKILLs the node's SIPp, as a crash would.
func (nd *node) killService(c *cluster) {
	if p, err := strconv.Atoi(c.read("sipp." + nd.name + ".pid")); err == nil && p > 0 {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// call is one parsed line of calls.log.
type call struct {
	at    float64
	node  string
	what  string // "drbdadm primary --force r0", "fence A", ...
	exit  int
	roles map[string]string // after the call; "(down)" suffix when off
}

func (c *cluster) calls() []call {
	c.t.Helper()
	f, err := os.Open(filepath.Join(c.stub, "calls.log"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		c.t.Fatal(err)
	}
	defer f.Close()
	var out []call
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			c.t.Fatalf("bad log line %q", sc.Text())
		}
		cl := call{roles: map[string]string{}}
		cl.at, _ = strconv.ParseFloat(fs[0], 64)
		cl.node = strings.TrimPrefix(fs[1], "node=")
		var what []string
		inWhat := true
		for _, w := range fs[2:] {
			switch {
			case strings.HasPrefix(w, "exit="):
				cl.exit, _ = strconv.Atoi(strings.TrimPrefix(w, "exit="))
				inWhat = false
			case inWhat:
				what = append(what, w)
			case strings.HasPrefix(w, "A=") || strings.HasPrefix(w, "B="):
				cl.roles[w[:1]] = w[2:]
			}
		}
		cl.what = strings.Join(what, " ")
		out = append(out, cl)
	}
	return out
}

// assertNeverTwoPrimaries replays the log: the set of powered-on Primary
// nodes after every successful primary/secondary/fence never exceeds one,
// and the roles recorded with each call agree.
func assertNeverTwoPrimaries(t *testing.T, calls []call) {
	t.Helper()
	primary := map[string]bool{}
	for _, cl := range calls {
		if cl.exit == 0 {
			switch {
			case strings.HasPrefix(cl.what, "drbdadm primary"):
				primary[cl.node] = true
			case strings.HasPrefix(cl.what, "drbdadm secondary"):
				delete(primary, cl.node)
			case strings.HasPrefix(cl.what, "fence "):
				delete(primary, strings.TrimPrefix(cl.what, "fence "))
			}
		}
		if len(primary) > 1 {
			t.Fatalf("two primaries after %+v", cl)
		}
		if cl.roles["A"] == RolePrimary && cl.roles["B"] == RolePrimary {
			t.Fatalf("log records both nodes Primary and up at %+v", cl)
		}
	}
}

func findCall(calls []call, node, prefix string, exit int) int {
	for i, cl := range calls {
		if cl.node == node && strings.HasPrefix(cl.what, prefix) && cl.exit == exit {
			return i
		}
	}
	return -1
}

func waitStatus(t *testing.T, nd *node, what string, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := nd.client.Status(context.Background())
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: %s not reached: last %+v, %v", nd.name, what, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
