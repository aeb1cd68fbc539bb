package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
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

// cluster is node A and node B over the shared DRBD stand-in state.
type cluster struct {
	t     *testing.T
	dir   string // test dir: token, mount point, logs
	drbd  *testkit.DRBD
	token string
	mnt   string
}

// uasOptions is the SIPp scenario of the nodes' "Asterisk".
func uasOptions(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "uas_options.xml"))
	if err != nil {
		t.Fatal(err)
	}
	return p
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
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, drbd: testkit.NewDRBD(t, up...), token: randHex(), mnt: filepath.Join(dir, "replica")}
	if err := os.Mkdir(c.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(c.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// node is one agent process.
type node struct {
	name    string
	cfg     Config
	proc    *testkit.Process
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
	cfg.DRBD = DRBDConfig{Resource: "r0", Drbdadm: c.drbd.Tool("drbdadm"), Drbdsetup: c.drbd.Tool("drbdsetup"), Timeout: 5 * time.Second}
	cfg.Filesystem = FilesystemConfig{Device: "hapbx-" + n, MountPoint: c.mnt, Type: "tmpfs", Options: "size=1m,mode=0755,noatime", Timeout: 5 * time.Second}
	pid := c.drbd.Path("sipp." + n + ".pid")
	cfg.Service = ServiceConfig{
		StartCommand: fmt.Sprintf("sipp -sf %s -i 127.0.0.1 -p %d -nostdin -m 1000000 >%s 2>&1 </dev/null & echo $! >%s; echo $! >>%s",
			uasOptions(c.t), sipPort, filepath.Join(c.dir, "sipp-"+n+".log"), pid, c.drbd.Path("pids."+n)),
		// SIPp was reparented to an init that may reap late: a zombie
		// counts as gone.
		StopCommand: fmt.Sprintf("if [ -f %[1]s ]; then p=$(cat %[1]s); kill $p 2>/dev/null; while [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do sleep 0.01; done; rm -f %[1]s; fi", pid),
		Timeout:     5 * time.Second,
	}
	cfg.ReadyTimeout = 5 * time.Second
	cfg.Fence = FenceConfig{Command: c.drbd.FenceCommand(peerOf(n), false), Timeout: 5 * time.Second, SafetyDelay: 0}
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
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=agent", childCfg+"="+cfgPath, childSIP+"="+nd.sipAddr, childListen+"="+listen)
	cmd.Env = append(cmd.Env, c.drbd.Env(n, c.mnt)...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	nd.proc, err = testkit.Watch(cmd)
	if err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.drbd.AddPID(n, cmd.Process.Pid)
	t.Cleanup(func() {
		nd.proc.Stop(3 * time.Second)
		nd.killService(c)
		if t.Failed() {
			b, _ := os.ReadFile(nd.logPath)
			t.Logf("agent %s log:\n%s", n, b)
		}
	})
	// Up when the API answers and events2 delivered the initial state.
	if !testkit.Poll(10*time.Second, func() bool {
		var st Status
		st, err = nd.client.Status(context.Background())
		return err == nil && st.EventsFollowing && st.DRBDRole != RoleUnknown
	}) {
		t.Fatalf("agent %s not up: %v", n, err)
	}
	return nd
}

// killService SIGKILLs the node's SIPp, as a crash would.
func (nd *node) killService(c *cluster) { testkit.KillPIDFile(c.drbd.Path("sipp." + nd.name + ".pid")) }

func waitStatus(t *testing.T, nd *node, what string, ok func(Status) bool) Status {
	t.Helper()
	var st Status
	var err error
	if !testkit.Poll(5*time.Second, func() bool {
		st, err = nd.client.Status(context.Background())
		return err == nil && ok(st)
	}) {
		t.Fatalf("node %s: %s not reached: last %+v, %v", nd.name, what, st, err)
	}
	return st
}

// WithPollInterval sets how often readiness and state are polled (default
// 50ms for readiness, 2s for monitoring).
func WithPollInterval(ready, monitor time.Duration) Option {
	return func(a *Agent) { a.svc.poll, a.monitorInterval = ready, monitor }
}
