package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

const (
	proxyIP = "127.0.3.1"
	phoneIP = "127.0.3.50"
	be1IP   = "127.0.3.11"
	be2IP   = "127.0.3.12"
)

var hapbxBin string

// TestMain builds the binary once; `make test` passes HAPBX_BIN instead.
func TestMain(m *testing.M) {
	if addr := os.Getenv(amiChildEnv); addr != "" {
		os.Exit(amiChild(addr)) // a cold test's "Asterisk" manager
	}
	if b := os.Getenv("HAPBX_BIN"); b != "" {
		hapbxBin = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "hapbx-bin")
	if err != nil {
		panic(err)
	}
	hapbxBin = filepath.Join(dir, "hapbx")
	out, err := exec.Command("go", "build", "-o", hapbxBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build hapbx: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(hapbxBin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "hapbx ") {
		t.Fatalf("version: %q %v", out, err)
	}
}

func TestCheckConfigListsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("node: {name: p}\nsip: {listen: [\"udp://127.0.0.1:0\"], advertise: 127.0.0.1, hop_timeuot: 1s}\nbackends: [{name: a, address: \"x\", transport: sctp}]\nrouting: random\n"), 0o644)
	cmd := exec.Command(hapbxBin, "check-config", "-c", bad)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1", err)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, want := range []string{"sip.hop_timeuot: unknown key", "sip.listen[0]:", "backends[0].address:", "backends[0].transport:", "routing:"} {
		found := false
		for _, l := range lines {
			if strings.HasPrefix(l, bad+": ") && strings.Contains(l, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no line %q in:\n%s", want, stderr.String())
		}
	}
	good := filepath.Join("..", "..", "deploy", "hapbx.example.yaml")
	if out, err := exec.Command(hapbxBin, "check-config", "-c", good).CombinedOutput(); err != nil {
		t.Fatalf("example config: %v\n%s", err, out)
	}
}

type daemon struct {
	proc   *testkit.Process
	log    testkit.Buffer
	sip    string
	admin  string
	config string
	// wrap, when set, runs hapbx through it (wrap..., hapbx, run, -c, config).
	wrap []string
}

func writeConfig(t testing.TB, path string, sipPort, adminPort int, extra string, backends ...string) {
	var b strings.Builder
	fmt.Fprintf(&b, "node: {name: test}\nsip:\n  listen: [\"udp://%s:%d\"]\n  advertise: %s\n  drain_timeout: 4s\nbackends:\n", proxyIP, sipPort, proxyIP)
	for i, addr := range backends {
		fmt.Fprintf(&b, "  - {name: asterisk%d, address: %q, transport: udp}\n", i+1, addr)
	}
	fmt.Fprintf(&b, "admin: {listen: \"127.0.0.1:%d\"}\nlog: {level: info, format: json}\n", adminPort)
	fmt.Fprintf(&b, "registrar: {data_dir: %q}\n", filepath.Join(filepath.Dir(path), "data"))
	b.WriteString(extra)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func startDaemon(t testing.TB, backends ...string) *daemon {
	t.Helper()
	return startDaemonWith(t, "", backends...)
}

// startDaemonWith appends extra YAML sections to the test configuration.
func startDaemonWith(t testing.TB, extra string, backends ...string) *daemon {
	t.Helper()
	d, sipPort, adminPort := newDaemon(t)
	writeConfig(t, d.config, sipPort, adminPort, extra, backends...)
	d.start(t)
	return d
}

// newDaemon reserves a daemon's SIP and admin ports and names its config
// file, for the caller to write before start.
func newDaemon(t testing.TB) (d *daemon, sipPort, adminPort int) {
	d = &daemon{config: filepath.Join(t.TempDir(), "hapbx.yaml")}
	sipPort = testkit.FreePort(t, proxyIP)
	adminPort = testkit.FreePort(t, "127.0.0.1")
	d.sip = net.JoinHostPort(proxyIP, strconv.Itoa(sipPort))
	d.admin = "http://127.0.0.1:" + strconv.Itoa(adminPort)
	return d, sipPort, adminPort
}

// start runs hapbx on d's config and waits until it is healthy (up to 30 s:
// a proxy loading a large registrar store takes a while); it fails at once
// if hapbx exits.
func (d *daemon) start(t testing.TB) {
	t.Helper()
	d.log.Reset()
	args := append(append([]string(nil), d.wrap...), hapbxBin, "run", "-c", d.config)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = &d.log
	p, err := testkit.Watch(cmd)
	if err != nil {
		t.Fatal(err)
	}
	d.proc = p
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("hapbx %s log (tail):\n%s", d.config, tail([]byte(d.log.String()), 8000))
		}
	})
	if !testkit.Poll(30*time.Second, func() bool {
		if res, err := http.Get(d.admin + "/healthz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return true
			}
		}
		if p.Exited() {
			t.Fatalf("hapbx %s exited (%d)\n%s", d.config, p.ExitCode(), d.log.String())
		}
		return false
	}) {
		t.Fatalf("hapbx not healthy within 30s\n%s", tail([]byte(d.log.String()), 8000))
	}
}

// stop ends hapbx with SIGTERM and waits for it.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	_ = d.proc.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.proc.Done:
	case <-time.After(10 * time.Second):
		t.Fatalf("hapbx did not stop\n%s", d.log.String())
	}
}

// TestFailingComponentStopsDaemon: a component that fails once hapbx runs
// (here the admin interface, its address taken) stops the daemon with the
// error logged and exit code 1, after the SIP listeners were up.
func TestFailingComponentStopsDaemon(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	path := filepath.Join(t.TempDir(), "hapbx.yaml")
	be := net.JoinHostPort(be1IP, strconv.Itoa(testkit.FreePort(t, be1IP)))
	writeConfig(t, path, testkit.FreePort(t, proxyIP), taken.Addr().(*net.TCPAddr).Port, "", be)
	cmd := exec.Command(hapbxBin, "run", "-c", path)
	var log testkit.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("hapbx still running with its admin address taken\n%s", log.String())
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("exit: %v, want code 1", err)
	}
	for _, want := range []string{"SIP listeners up", `"msg":"hapbx stopped with an error"`, "admin interface listen 127.0.0.1:"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, log.String())
		}
	}
}

func (d *daemon) status(t testing.TB) map[string]any {
	t.Helper()
	res, err := http.Get(d.admin + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var s map[string]any
	if err := json.NewDecoder(res.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitActive waits until health has made a backend active.
func (d *daemon) waitActive(t testing.TB, want string) {
	t.Helper()
	if !testkit.Poll(5*time.Second, func() bool { a, _ := d.status(t)["active_backend"].(string); return a == want }) {
		t.Fatalf("active backend is not %q after 5s: %v\n%s", want, d.status(t), d.log.String())
	}
}

func backendAddrs(s map[string]any) []string {
	var out []string
	for _, b := range s["proxy"].(map[string]any)["backends"].([]any) {
		out = append(out, b.(map[string]any)["address"].(string))
	}
	return out
}

func TestSIGHUPReloadsBackends(t *testing.T) {
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(testkit.FreePort(t, be1IP)))
	a2 := net.JoinHostPort(be2IP, strconv.Itoa(testkit.FreePort(t, be2IP)))
	d := startDaemon(t, a1)
	if got := backendAddrs(d.status(t)); len(got) != 1 || got[0] != a1 {
		t.Fatalf("backends before reload: %v", got)
	}
	// A broken file is refused and the running list kept.
	orig, _ := os.ReadFile(d.config)
	os.WriteFile(d.config, []byte("backends: nope\n"), 0o644)
	d.proc.Cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if got := backendAddrs(d.status(t)); len(got) != 1 || got[0] != a1 {
		t.Fatalf("a bad reload changed the backends: %v", got)
	}
	os.WriteFile(d.config, []byte(strings.Replace(string(orig), "backends:\n", fmt.Sprintf("backends:\n  - {name: asterisk0, address: %q, transport: udp}\n", a2), 1)), 0o644)
	d.proc.Cmd.Process.Signal(syscall.SIGHUP)
	var got []string
	if !testkit.Poll(3*time.Second, func() bool {
		got = backendAddrs(d.status(t))
		return len(got) == 2 && got[0] == a2 && got[1] == a1
	}) {
		t.Fatalf("backends after reload: %v\n%s", got, d.log.String())
	}
	if !strings.Contains(d.log.String(), "reload refused") {
		t.Errorf("the refused reload was not logged:\n%s", d.log.String())
	}
}

// TestSIGTERMDrains: a call ringing when SIGTERM arrives is still answered
// and completes; a new call during the drain gets 503; hapbx exits 0 within
// the drain bound.
func TestSIGTERMDrains(t *testing.T) {
	testkit.RequireSIPp(t)
	bePort := testkit.FreePort(t, be1IP)
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenarioPath("uas_slow.xml"))
	beAddr := net.JoinHostPort(be1IP, strconv.Itoa(bePort))
	testkit.WaitListening(t, "udp", beAddr, 3*time.Second)
	d := startDaemon(t, beAddr)
	d.waitActive(t, "asterisk1")

	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("uac_answered.xml"),
		"-s", "202", "-m", "1", "-timeout", "20s", "-timeout_error", d.sip)
	testkit.Eventually(t, 5*time.Second, "the call ringing", func() bool {
		return d.metric(t, `hapbx_proxy_responses_total{code="180",method="INVITE"}`) == "1"
	})
	start := time.Now()
	d.proc.Cmd.Process.Signal(syscall.SIGTERM)
	testkit.Eventually(t, 5*time.Second, "hapbx draining (healthz not ok)", func() bool {
		res, err := http.Get(d.admin + "/healthz")
		if err != nil {
			return true
		}
		res.Body.Close()
		return res.StatusCode != http.StatusOK
	})

	late := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sn", "uac", "-s", "203", "-m", "1",
		"-timeout", "5s", d.sip)
	late.Wait(10 * time.Second)
	if !strings.Contains(late.Output(), "503") {
		t.Errorf("a new call during the drain did not get 503:\n%s", late.Output())
	}
	if code := phone.Wait(15 * time.Second); code != 0 {
		t.Fatalf("the call in flight at SIGTERM failed (exit %d)\n%s\n%s", code, phone.Output(), d.log.String())
	}
	select {
	case <-d.proc.Done:
		if code := d.proc.ExitCode(); code != 0 {
			t.Fatalf("hapbx exit %d\n%s", code, d.log.String())
		}
		if el := time.Since(start); el > 6*time.Second {
			t.Errorf("exit took %v, drain bound is 4s", el)
		}
	case <-time.After(8 * time.Second):
		t.Fatalf("hapbx still running 8s after SIGTERM\n%s", d.log.String())
	}
	_ = backend
}

func scenarioPath(name string) string {
	p, _ := filepath.Abs(filepath.Join("..", "..", "proxy", "testdata", name))
	return p
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

// TestStatusCommand: `hapbx status` shows at a glance the backends with
// their health, the active one, the cluster, registrations and dialogs;
// --json gives the API's document.
func TestStatusCommand(t *testing.T) {
	testkit.RequireSIPp(t)
	p1 := testkit.FreePort(t, be1IP)
	testkit.StartSIPp(t, be1IP, p1, "-sf", scenarioPath("uas_call.xml"))
	a1 := net.JoinHostPort(be1IP, strconv.Itoa(p1))
	a2 := net.JoinHostPort(be2IP, strconv.Itoa(testkit.FreePort(t, be2IP))) // nothing there: down
	d := startDaemon(t, a1, a2)
	d.waitActive(t, "asterisk1")
	d.waitState(t, "asterisk2", "down", 5*time.Second)
	out, err := exec.Command(hapbxBin, "status", "-c", d.config).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"active backend asterisk1", "cluster: none", "registrations: 0 bindings", "dialogs: 0", "asterisk1", "up", "asterisk2", "down"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	js, err := exec.Command(hapbxBin, "status", "-c", d.config, "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil || doc["active_backend"] != "asterisk1" {
		t.Fatalf("status --json: %v %v\n%s", err, doc["active_backend"], js)
	}
}
