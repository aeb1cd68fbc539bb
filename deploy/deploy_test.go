// Package deploy holds no Go code: these tests check the deployment files
// beside them (systemd units, the Grafana dashboard, SIPp scenarios, example
// configurations) against the code they describe.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/proxy/limits"
)

// repoRoot is the module root, one level up from this package.
const repoRoot = ".."

// ---------------------------------------------------------------------------
// systemd units

// unit is a parsed systemd unit file: section -> key -> values, in order.
// An empty assignment resets the list, as systemd does.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value inside a section: %q", path, n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if v == "" {
				u[section][k] = []string{}
			} else {
				u[section][k] = append(u[section][k], v)
			}
		}
	}
	return u
}

// one returns the single value of key, failing when it is absent or repeated.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v, ok := u[section][key]
	if !ok || len(v) != 1 {
		t.Errorf("[%s] %s: want exactly one value, got %q", section, key, v)
		return ""
	}
	return v[0]
}

// words returns the space-separated words of every value of key.
func (u unit) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	sort.Strings(out)
	return out
}

type unitWant struct {
	file     string
	user     string
	exec     string   // ExecStart
	caps     []string // CapabilityBoundingSet (sorted)
	ambient  []string // AmbientCapabilities (sorted)
	families []string // RestrictAddressFamilies (sorted)
	// sandbox: the mount-namespace hardening (proxy, witness); the agent
	// must have none of it, or its mounts stay invisible to Asterisk.
	sandbox bool
}

var units = []unitWant{
	{
		file: "hapbx.service", user: "hapbx",
		exec:     "/usr/local/bin/hapbx run -c /etc/hapbx/hapbx.yaml",
		caps:     []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
		ambient:  []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
		families: []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX"},
		sandbox:  true,
	},
	{
		file: "hapbx-witness.service", user: "hapbx",
		exec:     "/usr/local/bin/hapbx witness -c /etc/hapbx/witness.yaml",
		caps:     nil,
		ambient:  nil,
		families: []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"},
		sandbox:  true,
	},
	{
		file: "hapbx-agent.service", user: "root",
		exec:     "/usr/local/bin/hapbx agent -c /etc/hapbx/agent.yaml",
		caps:     []string{"CAP_DAC_OVERRIDE", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"},
		ambient:  nil,
		families: []string{"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"},
		sandbox:  false,
	},
}

// mountNamespaceKeys are the settings that give a service a private mount
// namespace (systemd.exec(5)), plus those that install a device policy.
var mountNamespaceKeys = []string{
	"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
	"ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
	"BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "MountImages", "RootDirectory", "RootImage",
	"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
	"ProtectProc", "ProcSubset", "ProtectClock", "DeviceAllow", "DevicePolicy", "DynamicUser",
	"MountFlags", "PrivateUsers", "NetworkNamespacePath",
}

func TestSystemdUnits(t *testing.T) {
	drain := exampleDrainTimeouts(t)
	for _, w := range units {
		t.Run(w.file, func(t *testing.T) {
			u := parseUnit(t, filepath.Join("systemd", w.file))
			s := "Service"
			for key, want := range map[string]string{
				"Type":                    "exec", // hapbx has no sd_notify
				"Restart":                 "on-failure",
				"User":                    w.user,
				"ExecStart":               w.exec,
				"NoNewPrivileges":         "yes",
				"LockPersonality":         "yes",
				"MemoryDenyWriteExecute":  "yes",
				"SystemCallArchitectures": "native",
				"RestrictRealtime":        "yes",
				"RestrictSUIDSGID":        "yes",
				"RestrictNamespaces":      "yes",
			} {
				if got := u.one(t, s, key); got != want {
					t.Errorf("[Service] %s = %q, want %q", key, got, want)
				}
			}
			if got := u.words(s, "CapabilityBoundingSet"); !slices.Equal(got, w.caps) {
				t.Errorf("CapabilityBoundingSet = %q, want exactly %q", got, w.caps)
			}
			if _, ok := u[s]["CapabilityBoundingSet"]; !ok {
				t.Errorf("CapabilityBoundingSet missing: an absent key means every capability")
			}
			if got := u.words(s, "AmbientCapabilities"); !slices.Equal(got, w.ambient) {
				t.Errorf("AmbientCapabilities = %q, want exactly %q", got, w.ambient)
			}
			if got := u.words(s, "RestrictAddressFamilies"); !slices.Equal(got, w.families) {
				t.Errorf("RestrictAddressFamilies = %q, want %q", got, w.families)
			}
			stop, err := time.ParseDuration(u.one(t, s, "TimeoutStopSec"))
			if err != nil {
				t.Errorf("TimeoutStopSec: %v (write it as Go and systemd both read it, e.g. 30s)", err)
			}
			if w.sandbox {
				for key, want := range map[string]string{
					"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
					"PrivateDevices": "yes", "ReadWritePaths": "/var/lib/hapbx", "StateDirectory": "hapbx",
				} {
					if got := u.one(t, s, key); got != want {
						t.Errorf("[Service] %s = %q, want %q", key, got, want)
					}
				}
			} else {
				for _, key := range mountNamespaceKeys {
					if v, ok := u[s][key]; ok {
						t.Errorf("[Service] %s=%q: creates a private mount namespace or device policy; "+
							"the agent's mount of the DRBD device would not reach the host (see the unit's comments)", key, v)
					}
				}
			}
			if w.file == "hapbx.service" {
				if !slices.Contains(u[s]["ExecReload"], "/bin/kill -HUP $MAINPID") {
					t.Errorf("ExecReload = %q, want /bin/kill -HUP $MAINPID (SIGHUP reloads the backends)", u[s]["ExecReload"])
				}
				for file, d := range drain {
					if stop <= d {
						t.Errorf("TimeoutStopSec %s <= sip.drain_timeout %s of %s: systemd would SIGKILL the drain", stop, d, file)
					}
				}
			}
			if got := u.words("Install", "WantedBy"); !slices.Equal(got, []string{"multi-user.target"}) {
				t.Errorf("[Install] WantedBy = %q", got)
			}
		})
	}
}

// exampleDrainTimeouts loads the proxy configurations shipped in deploy/ and
// returns their sip.drain_timeout.
func exampleDrainTimeouts(t *testing.T) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	for _, f := range append([]string{"hapbx.example.yaml"}, classicPairProxies...) {
		cfg, err := config.Load(withSecretStubs(t, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[f] = cfg.SIP.DrainTimeout
	}
	return out
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on each unit and
// fails on any complaint (it exits 0 on unknown keys and bad values, so its
// output is what counts). ExecStart is pointed at a stub: the binary is not
// installed where the tests run.
func TestSystemdAnalyzeVerify(t *testing.T) {
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd); the unit files are still checked by TestSystemdUnits")
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "hapbx")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, w := range units {
		data, err := os.ReadFile(filepath.Join("systemd", w.file))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte("/usr/local/bin/hapbx")) {
			t.Fatalf("%s does not run /usr/local/bin/hapbx", w.file)
		}
		path := filepath.Join(dir, w.file)
		if err := os.WriteFile(path, bytes.ReplaceAll(data, []byte("/usr/local/bin/hapbx"), []byte(stub)), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, bin, "verify", path).CombinedOutput()
		cancel()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", w.file, err, out)
		}
	}
}

// ---------------------------------------------------------------------------
// Grafana dashboard

// notYetOnMain lists metrics the dashboard shows that a branch not merged
// yet adds, with the branch's name. Empty while every metric the dashboard
// queries is registered on main; an entry whose metric is registered fails
// TestDashboardMetricsExist (ALLOW-LIST STALE), so the list cannot hide a
// typo for long.
var notYetOnMain = map[string]string{}

// dashboardMustShow is what the dashboard is for: each of these metrics has a
// panel.
var dashboardMustShow = []string{
	"hapbx_backend_up", "hapbx_dialogs_terminated_total", "hapbx_failover_active",
	"hapbx_failover_switches_total", "hapbx_health_probe_duration_seconds",
	"hapbx_health_transitions_total", "hapbx_proxy_backend_selected_total", "hapbx_proxy_dialogs",
	"hapbx_proxy_forks_total", "hapbx_proxy_forward_latency_seconds", "hapbx_proxy_malformed_total",
	"hapbx_proxy_register_store_answers_total", "hapbx_proxy_requests_total",
	"hapbx_proxy_responses_total", "hapbx_proxy_retries_total", "hapbx_proxy_transactions_in_flight",
	"hapbx_registrar_aors", "hapbx_registrar_bindings", "hapbx_registrar_changes_total",
	"hapbx_registrar_purged_total", "hapbx_registrar_store_errors_total",
	"hapbx_storage_failures_total", "hapbx_storage_group_state", "hapbx_storage_split_brain",
	"hapbx_storage_step_duration_seconds",
	"hapbx_cluster_vip_held", "hapbx_cluster_members", "hapbx_cluster_leader_changes_total",
	"hapbx_cluster_quorum",
	"hapbx_media_sessions", "hapbx_media_packets_total", "hapbx_media_dropped_total",
	"hapbx_media_sdp_errors_total",
}

type dashboard struct {
	Title         string            `json:"title"`
	UID           string            `json:"uid"`
	SchemaVersion int               `json:"schemaVersion"`
	Panels        []json.RawMessage `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type dashPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []json.RawMessage `json:"panels"` // collapsed rows hold theirs
}

func loadDashboard(t *testing.T) (dashboard, []dashPanel, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("grafana", "hapbx-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("hapbx-dashboard.json: %v", err)
	}
	var panels []dashPanel
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p dashPanel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("panel %s: %v", r, err)
			}
			panels = append(panels, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, panels, data
}

func TestDashboardStructure(t *testing.T) {
	d, panels, _ := loadDashboard(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion == 0 {
		t.Errorf("title %q, uid %q, schemaVersion %d: all required", d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "datasource" && v.Query != "prometheus" {
			t.Errorf("variable %s: query %v, want prometheus", v.Name, v.Query)
		}
	}
	if vars["datasource"] != "datasource" {
		t.Fatalf("no datasource variable named datasource (got %v): panels must not pin a data source", vars)
	}
	if len(panels) < 10 {
		t.Fatalf("only %d panels", len(panels))
	}
	ids := map[int]string{}
	rows := 0
	for _, p := range panels {
		if strings.TrimSpace(p.Title) == "" {
			t.Errorf("panel id %d (%s) has no title", p.ID, p.Type)
		}
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or already used by %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			rows++
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %+v: empty expr, missing or repeated refId", p.Title, tg)
			}
			refs[tg.RefID] = true
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced brackets in %q", p.Title, tg.Expr)
			}
			for _, m := range regexp.MustCompile(`\$\{?([a-z_]+)`).FindAllStringSubmatch(tg.Expr, -1) {
				if _, ok := vars[m[1]]; !ok && !strings.HasPrefix(m[1], "__") {
					t.Errorf("panel %q: %q uses undefined variable $%s", p.Title, tg.Expr, m[1])
				}
			}
		}
	}
	for _, want := range []string{"Cluster", "Media relay", "Registrar", "SIP proxy", "Backends and health", "Storage agents (cold standby)"} {
		if !slices.ContainsFunc(panels, func(p dashPanel) bool { return p.Type == "row" && p.Title == want }) {
			t.Errorf("no row %q", want)
		}
	}
}

// metricRef finds metric names in PromQL; histogram series are mapped to
// their family below.
var metricRef = regexp.MustCompile(`\bhapbx_[a-z0-9_]+\b`)

// dashboardMetrics returns every hapbx metric family used in any expr or
// variable query of the dashboard.
func dashboardMetrics(t *testing.T, data []byte) map[string]bool {
	t.Helper()
	var tree any
	if err := json.Unmarshal(data, &tree); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(c, k)
			}
		case []any:
			for _, c := range v {
				walk(c, key)
			}
		case string:
			if key == "expr" || key == "query" || key == "definition" {
				for _, m := range metricRef.FindAllString(v, -1) {
					out[m] = true
				}
			}
		}
	}
	walk(tree, "")
	return out
}

// registeredMetrics returns every "hapbx_..." string literal of the
// non-test Go files of the repository.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	lit := regexp.MustCompile(`"(hapbx_[a-z0-9_]+)"`)
	out := map[string]bool{}
	err := filepath.WalkDir(repoRoot, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if n := e.Name(); n == "testdata" || n == "vendor" || (strings.HasPrefix(n, ".") && path != repoRoot) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllSubmatch(data, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 10 {
		t.Fatalf("found only %d metric names in %s: wrong directory?", len(out), repoRoot)
	}
	return out
}

func TestDashboardMetricsExist(t *testing.T) {
	_, _, data := loadDashboard(t)
	used := dashboardMetrics(t, data)
	have := registeredMetrics(t)
	family := func(m string) string {
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suf); ok && (have[base] || notYetOnMain[base] != "") {
				return base
			}
		}
		return m
	}
	families := map[string]bool{}
	for m := range used {
		families[family(m)] = true
	}
	var names []string
	for m := range families {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		switch {
		case have[m] && notYetOnMain[m] != "":
			t.Errorf("ALLOW-LIST STALE: %s is now registered in the Go sources; remove it from notYetOnMain", m)
		case have[m]:
		case notYetOnMain[m] != "":
			t.Logf("allow-listed, not on this branch yet (%s): %s", notYetOnMain[m], m)
		default:
			t.Errorf("dashboard uses %s, which no non-test Go file registers (typo, or a renamed metric?)", m)
		}
	}
	for m := range notYetOnMain {
		if !families[m] {
			t.Errorf("notYetOnMain lists %s, which the dashboard does not use: drop it", m)
		}
	}
	for _, m := range dashboardMustShow {
		if !families[m] {
			t.Errorf("dashboard has no panel for %s", m)
		}
	}
	var unshown []string
	for m := range have {
		if !families[m] {
			unshown = append(unshown, m)
		}
	}
	sort.Strings(unshown)
	if len(unshown) > 0 {
		t.Logf("registered but not on the dashboard (fine, but consider a panel): %s", strings.Join(unshown, " "))
	}
}

// ---------------------------------------------------------------------------
// SIPp scenarios, each run once against a loopback SIPp peer that checks
// what a deployed hapbx + Asterisk would (digest credentials, Route headers).

// sippRun runs one UAS from testdata and the operator's scenario against it,
// both bounded in calls and time, and returns the UAC's exit code.
func sippRun(t *testing.T, uas, uac string, calls int, uacArgs ...string) (int, string) {
	t.Helper()
	const ip = "127.0.0.1"
	uasPort, uacPort := testkit.FreePort(t, ip), testkit.FreePort(t, ip)
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	n := strconv.Itoa(calls)
	server := testkit.StartSIPp(t, ip, uasPort, append([]string{"-sf", abs(uas), "-m", n,
		"-mp", strconv.Itoa(testkit.FreePort(t, ip))}, sippServerArgs(uacArgs)...)...)
	args := append([]string{server.Addr, "-sf", abs(uac), "-m", n, "-timeout", "8s", "-timeout_error",
		"-mp", strconv.Itoa(testkit.FreePort(t, ip))}, uacArgs...)
	client := testkit.StartSIPp(t, ip, uacPort, args...)
	code := client.Wait(10 * time.Second)
	if code == 0 {
		if sc := server.Wait(5 * time.Second); sc != 0 {
			t.Errorf("test peer %s exited %d (a check in it failed)\n%s", uas, sc, server.Output())
		}
	}
	return code, client.Output() + "\n--- test peer ---\n" + server.Output()
}

// sippServerArgs passes the injection file to the test peer too, so it
// checks the same credentials.
func sippServerArgs(uacArgs []string) []string {
	for i, a := range uacArgs {
		if a == "-inf" && i+1 < len(uacArgs) {
			return []string{"-inf", uacArgs[i+1]}
		}
	}
	return nil
}

// genUsers runs gen-users.sh and returns the path of the CSV it wrote.
func genUsers(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("sh", append([]string{filepath.Join("sipp", "gen-users.sh")}, args...)...).Output()
	if err != nil {
		t.Fatalf("gen-users.sh %v: %v", args, err)
	}
	path := filepath.Join(t.TempDir(), "users.csv")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSIPpGenUsers(t *testing.T) {
	data, err := os.ReadFile(genUsers(t, "-n", "3", "-f", "9000", "-d", "pbx.test", "-p", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	want := "SEQUENTIAL\n" +
		"9000;pw9000;pbx.test;[authentication username=9000 password=pw9000]\n" +
		"9001;pw9001;pbx.test;[authentication username=9001 password=pw9001]\n" +
		"9002;pw9002;pbx.test;[authentication username=9002 password=pw9002]\n"
	if string(data) != want {
		t.Errorf("gen-users.sh output:\n%s\nwant:\n%s", data, want)
	}
	for _, bad := range [][]string{{}, {"-n", "0"}, {"-n", "100001"}, {"-n", "x"}, {"-n", "2", "-a", "iax"}, {"-n", "1", "-p", "a]b"}, {"-n", "1", "-d", "a;b"}} {
		if err := exec.Command("sh", append([]string{filepath.Join("sipp", "gen-users.sh")}, bad...)...).Run(); err == nil {
			t.Errorf("gen-users.sh %q: exit 0, want a usage error", bad)
		}
	}
	for kind, must := range map[string]string{"sip": "secret=pw9000", "pjsip": "password=pw9000"} {
		out, err := exec.Command("sh", filepath.Join("sipp", "gen-users.sh"), "-n", "1", "-f", "9000", "-p", "pw", "-a", kind).Output()
		if err != nil || !bytes.Contains(out, []byte(must)) || !bytes.Contains(out, []byte("[9000]")) {
			t.Errorf("gen-users.sh -a %s: %v\n%s", kind, err, out)
		}
	}
}

func TestSIPpRegister(t *testing.T) {
	testkit.RequireSIPp(t)
	users := genUsers(t, "-n", "3", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	// -l 1: the test peer walks the same file in step with the phones.
	code, out := sippRun(t, "sipp/testdata/uas_registrar.xml", "sipp/register.xml", 3,
		"-inf", users, "-l", "1", "-r", "20", "-d", "300")
	if code != 0 {
		t.Fatalf("register.xml exited %d\n%s", code, out)
	}
}

// TestSIPpRegisterWrongPassword proves the credentials are really checked:
// the phones' file has other passwords than the registrar's.
func TestSIPpRegisterWrongPassword(t *testing.T) {
	testkit.RequireSIPp(t)
	good := genUsers(t, "-n", "1", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	bad := genUsers(t, "-n", "1", "-f", "9000", "-d", "127.0.0.1", "-p", "wrong")
	const ip = "127.0.0.1"
	abs, _ := filepath.Abs("sipp/testdata/uas_registrar.xml")
	uac, _ := filepath.Abs("sipp/register.xml")
	server := testkit.StartSIPp(t, ip, testkit.FreePort(t, ip), "-sf", abs, "-m", "1", "-inf", good,
		"-mp", strconv.Itoa(testkit.FreePort(t, ip)))
	client := testkit.StartSIPp(t, ip, testkit.FreePort(t, ip), server.Addr, "-sf", uac, "-inf", bad,
		"-m", "1", "-timeout", "5s", "-timeout_error", "-mp", strconv.Itoa(testkit.FreePort(t, ip)))
	if code := client.Wait(8 * time.Second); code == 0 {
		t.Fatalf("register.xml with wrong passwords exited 0: the digest is not checked\n%s", client.Output())
	}
}

func TestSIPpCall(t *testing.T) {
	testkit.RequireSIPp(t)
	users := genUsers(t, "-n", "3", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	code, out := sippRun(t, "sipp/testdata/uas_call.xml", "sipp/call.xml", 3,
		"-inf", users, "-s", "600", "-l", "1", "-r", "20", "-d", "300")
	if code != 0 {
		t.Fatalf("call.xml exited %d\n%s", code, out)
	}
}

func TestSIPpOptions(t *testing.T) {
	testkit.RequireSIPp(t)
	code, out := sippRun(t, "sipp/testdata/uas_options.xml", "sipp/options.xml", 50, "-r", "200", "-l", "50")
	if code != 0 {
		t.Fatalf("options.xml exited %d\n%s", code, out)
	}
}

// TestSIPpREADMECommandsBounded keeps the README's command lines safe to
// paste: every sipp line limits calls, rate, concurrency and time.
func TestSIPpREADMECommandsBounded(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("sipp", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, cmd := range sippCommands(string(data)) {
		n++
		for _, flag := range []string{" -m ", " -r ", " -l ", " -timeout "} {
			if !strings.Contains(cmd+" ", flag) {
				t.Errorf("README command lacks %s: %s", strings.TrimSpace(flag), cmd)
			}
		}
		for _, f := range regexp.MustCompile(`-sf (\S+)`).FindAllStringSubmatch(cmd, -1) {
			if _, err := os.Stat(filepath.Join("sipp", filepath.Base(f[1]))); err != nil {
				t.Errorf("README command uses %s: %v", f[1], err)
			}
		}
	}
	if n < 3 {
		t.Errorf("README has %d sipp command lines, want one per scenario", n)
	}
}

// sippCommands joins backslash-continued lines and returns those that run sipp.
func sippCommands(md string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(md, "\n") {
		l := strings.TrimSpace(line)
		if c, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(l)
		s := cur.String()
		cur.Reset()
		if strings.HasPrefix(s, "sipp ") {
			out = append(out, s)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Example configurations

const classicDir = "examples/classic-pair"

var (
	classicPairProxies = []string{classicDir + "/proxy1.yaml", classicDir + "/proxy2.yaml"}
	classicPairAgents  = []string{classicDir + "/agent-asterisk1.yaml", classicDir + "/agent-asterisk2.yaml"}
	classicPairWitness = classicDir + "/witness.yaml"
)

// stubKey is what every stub secret file holds: a valid gossip key (32
// bytes, base64), so it also serves as cluster.secret_file.
var stubKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) + "\n"

// withSecretStubs copies the config at path to a temp dir, with every
// *_file path pointing at an existing file there: the examples name
// /etc/hapbx/... files that exist on a deployed node, not on a build host.
// A stub is named after the path it replaces (etc_hapbx_agent.token), so
// tests can still compare which file two configurations name.
func withSecretStubs(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	re := regexp.MustCompile(`(?m)^(\s*[a-z_]+_file:\s*)(/\S+)`)
	data = re.ReplaceAllFunc(data, func(m []byte) []byte {
		sub := re.FindSubmatch(m)
		stub := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(string(sub[2]), "/"), "/", "_"))
		if err := os.WriteFile(stub, []byte(stubKey), 0o600); err != nil {
			t.Fatal(err)
		}
		return append(append([]byte{}, sub[1]...), stub...)
	})
	out := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(out, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// hostOf returns the host of host:port (the string itself when it has no port).
func hostOf(t *testing.T, hostport string) string {
	t.Helper()
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Errorf("%q: %v", hostport, err)
		return hostport
	}
	return h
}

// TestExampleDocumentsDefaults: deploy/hapbx.example.yaml says every key
// shows its default; for the cluster, cold and media sections that is
// checked against the packages' DefaultConfig. It loads without any
// secret file (the cluster is off, so its key file is not needed).
func TestExampleDocumentsDefaults(t *testing.T) {
	f, err := config.Load("hapbx.example.yaml")
	if err != nil {
		t.Fatalf("hapbx.example.yaml must load on a host without /etc/hapbx:\n%v", err)
	}
	if f.ClusterEnabled() || f.Cold.Enabled || f.Media.Enabled {
		t.Errorf("cluster %v, cold %v, media %v: the reference file shows the defaults (all off)", f.ClusterEnabled(), f.Cold.Enabled, f.Media.Enabled)
	}
	want := cluster.DefaultConfig()
	want.Name = "" // node.name unless set
	got := f.Cluster
	for _, c := range []*cluster.Config{&want, &got} {
		if len(c.Peers) == 0 {
			c.Peers = nil
		}
		if len(c.PingTargets) == 0 {
			c.PingTargets = nil
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cluster: section differs from cluster.DefaultConfig():\n got  %+v\n want %+v", got, want)
	}
	if f.Cold != failover.DefaultColdConfig() {
		t.Errorf("cold: section %+v, failover.DefaultColdConfig() %+v", f.Cold, failover.DefaultColdConfig())
	}
	if f.Media != media.DefaultConfig() {
		t.Errorf("media: section %+v, media.DefaultConfig() %+v", f.Media, media.DefaultConfig())
	}
	if f.Limits != limits.DefaultConfig() {
		t.Errorf("limits: section %+v, limits.DefaultConfig() %+v", f.Limits, limits.DefaultConfig())
	}
}

// TestExampleClusterEnabled: the example's commented peers list and VIP,
// put in place of the defaults, make a valid clustered proxy file.
func TestExampleClusterEnabled(t *testing.T) {
	data, err := os.ReadFile("hapbx.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	peers := regexp.MustCompile(`(?m)^  peers: \[\]\n  # (peers:.*)\n((?:  #   - .*\n)+)`)
	m := peers.FindStringSubmatch(text)
	if m == nil {
		t.Fatal("cluster: no `peers: []` followed by a commented example list")
	}
	text = strings.Replace(text, m[0], "  "+m[1]+"\n"+strings.ReplaceAll(m[2], "  #   - ", "    - "), 1)
	// Keys shown empty with their example beside them: `key: ""  # example: VALUE`.
	for _, key := range []string{"secret_file", "address", "dialog_secret_file"} {
		re := regexp.MustCompile(`(?m)^(  +` + key + `: )"" +# example: ([^\s;]+).*$`)
		if len(re.FindAllString(text, -1)) != 1 {
			t.Fatalf("cluster: want exactly one `%s: \"\"  # example: VALUE` line", key)
		}
		text = re.ReplaceAllString(text, "${1}${2}")
	}
	// check-config reads the key: point it at a valid one.
	key := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(key, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text = regexp.MustCompile(`(?m)^(  secret_file: ).*$`).ReplaceAllString(text, "${1}"+key)
	// Any 16 bytes or more make a dialog token key.
	text = regexp.MustCompile(`(?m)^(  dialog_secret_file: ).*$`).ReplaceAllString(text, "${1}"+key)
	f, err := config.Parse("hapbx.example.yaml (cluster on)", []byte(text))
	if err != nil {
		t.Fatalf("the example with its cluster example filled in:\n%v", err)
	}
	if !f.ClusterEnabled() || len(f.Cluster.Peers) != 3 || f.Cluster.VIP.Address == "" {
		t.Fatalf("cluster %+v", f.Cluster)
	}
	if !slices.ContainsFunc(f.Cluster.Peers, func(p cluster.Peer) bool { return p.Name == f.Node.Name }) {
		t.Errorf("example peers %+v do not list node.name %q", f.Cluster.Peers, f.Node.Name)
	}
	if !strings.HasPrefix(f.Cluster.VIP.Address, f.SIP.Advertise+"/") {
		t.Errorf("example vip.address %s is not sip.advertise %s", f.Cluster.VIP.Address, f.SIP.Advertise)
	}
}

// classicPair is the classic pair loaded: proxies, agents and witness,
// with stub secret files.
type classicPair struct {
	proxies []config.File
	agents  []config.File
	witness config.File
}

func loadClassicPair(t *testing.T) classicPair {
	t.Helper()
	var cp classicPair
	for _, f := range classicPairProxies {
		cfg, err := config.Load(withSecretStubs(t, f))
		if err != nil {
			t.Fatalf("%s:\n%v", f, err)
		}
		cp.proxies = append(cp.proxies, cfg)
	}
	for _, f := range classicPairAgents {
		cfg, err := config.LoadAgent(withSecretStubs(t, f))
		if err != nil {
			t.Fatalf("%s:\n%v", f, err)
		}
		cp.agents = append(cp.agents, cfg)
	}
	w, err := config.LoadWitness(withSecretStubs(t, classicPairWitness))
	if err != nil {
		t.Fatalf("%s:\n%v", classicPairWitness, err)
	}
	cp.witness = w
	return cp
}

func TestClassicPairConfigLoads(t *testing.T) {
	cp := loadClassicPair(t)
	var names []string
	for i, cfg := range cp.proxies {
		f := classicPairProxies[i]
		names = append(names, cfg.Node.Name)
		if cfg.SIP.Advertise != "192.168.1.13" {
			t.Errorf("%s: sip.advertise %q, want the VIP 192.168.1.13", f, cfg.SIP.Advertise)
		}
		if len(cfg.Backends) != 2 || cfg.Backends[0].Name != "asterisk1" || cfg.Backends[1].Name != "asterisk2" {
			t.Errorf("%s: backends %+v, want asterisk1 then asterisk2", f, cfg.Backends)
		}
		for _, b := range cfg.Backends {
			if strings.HasSuffix(b.Address, ":5060") {
				t.Errorf("%s: backend %s on :5060 collides with hapbx's own listener on the same host", f, b.Name)
			}
			if b.AMI == nil {
				t.Errorf("%s: backend %s has no ami: a hung Asterisk would go unnoticed", f, b.Name)
			}
			switch {
			case b.Agent == nil:
				t.Errorf("%s: backend %s has no agent: block (cold standby needs it)", f, b.Name)
			case b.Agent.URL != "":
				t.Errorf("%s: backend %s agent.url %q: the agents join the cluster and announce it; a fixed url overrides discovery", f, b.Name, b.Agent.URL)
			case !strings.Contains(b.Agent.Fence.Command, b.Name+"-bmc"):
				t.Errorf("%s: backend %s fence.command %q does not power off %s", f, b.Name, b.Agent.Fence.Command, b.Name)
			}
		}
		if cfg.Failover.Routing != "active-standby" || cfg.Failover.Failback {
			t.Errorf("%s: routing %q failback %v, want active-standby without failback (auto_failback off)",
				f, cfg.Failover.Routing, cfg.Failover.Failback)
		}
		if cfg.Registrar.DataDir != "/var/lib/hapbx" {
			t.Errorf("%s: registrar.data_dir %q: keep it on the local disk (/var/lib/hapbx), never on /replica", f, cfg.Registrar.DataDir)
		}
		cl := cfg.ClusterConfig()
		if !cfg.ClusterEnabled() || cl.Name != cfg.Node.Name {
			t.Errorf("%s: cluster enabled %v, name %q: want on, named node.name %q", f, cfg.ClusterEnabled(), cl.Name, cfg.Node.Name)
		}
		if cl.VIP.Address != "192.168.1.13/24" || cl.VIP.Interface != "eth0" {
			t.Errorf("%s: cluster.vip %+v, want 192.168.1.13/24 on eth0 (IPaddr::192.168.1.13/24/eth0)", f, cl.VIP)
		}
		if cl.Failback || len(cl.PingTargets) == 0 {
			t.Errorf("%s: cluster.failback %v, ping_targets %q: want auto_failback off and ha.cf's ping node", f, cl.Failback, cl.PingTargets)
		}
		if !cfg.Cold.Enabled || !cfg.Media.Enabled || cfg.Admin.TokenFile == "" {
			t.Errorf("%s: cold %v, media %v, admin.token_file %q: the classic pair runs cold standby, anchors media, allows hapbx standby",
				f, cfg.Cold.Enabled, cfg.Media.Enabled, cfg.Admin.TokenFile)
		}
		if _, err := cluster.LoadKeyring(cl.SecretFile); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if len(names) == 2 && names[0] == names[1] {
		t.Errorf("both proxies are named %q", names[0])
	}
	p1, p2 := cp.proxies[0].Cluster, cp.proxies[1].Cluster
	if p1.Priority <= p2.Priority {
		t.Errorf("cluster.priority %d (asterisk1) <= %d (asterisk2): asterisk1 is the preferred node", p1.Priority, p2.Priority)
	}
	// Every voter lists the same voters (raft's bootstrap configuration)
	// and names the same key file.
	voters := map[string]cluster.Config{
		classicPairProxies[0]: p1, classicPairProxies[1]: p2, classicPairWitness: cp.witness.Cluster,
	}
	for f, c := range voters {
		if !slices.Equal(c.Peers, p1.Peers) {
			t.Errorf("%s: cluster.peers %+v differ from %s's %+v", f, c.Peers, classicPairProxies[0], p1.Peers)
		}
		if filepath.Base(c.SecretFile) != filepath.Base(p1.SecretFile) {
			t.Errorf("%s: cluster.secret_file %s, proxy1 %s: the same key on every voter", f, c.SecretFile, p1.SecretFile)
		}
	}
	// Both proxies key the dialog tokens alike, or the twin that takes the
	// VIP refuses the calls in progress.
	if d1, d2 := cp.proxies[0].SIP.DialogSecretFile, cp.proxies[1].SIP.DialogSecretFile; d1 == "" || filepath.Base(d1) != filepath.Base(d2) {
		t.Errorf("sip.dialog_secret_file %q and %q: both proxies need the same file", d1, d2)
	}
	var peerNames []string
	for _, p := range p1.Peers {
		peerNames = append(peerNames, p.Name)
	}
	if !slices.Equal(peerNames, []string{"asterisk1", "asterisk2", "witness"}) {
		t.Errorf("cluster.peers names %q, want asterisk1 asterisk2 witness", peerNames)
	}
	if cp.witness.Node.Name != "witness" || cp.witness.ClusterConfig().DataDir == "" {
		t.Errorf("witness: node %q, data_dir %q", cp.witness.Node.Name, cp.witness.ClusterConfig().DataDir)
	}
}

// TestClassicPairAgents: one agent file per PBX node, each found by the
// proxies (node.name = a backend name, URL on the backend's host), joining
// the voters without clashing with the proxy on the same host, running
// haresources' r0 / drbd0 / replica / ext3 / asterisk group and fencing the
// other node.
func TestClassicPairAgents(t *testing.T) {
	cp := loadClassicPair(t)
	proxy := cp.proxies[0]
	backends := map[string]config.Backend{}
	for _, b := range proxy.Backends {
		backends[b.Name] = b
	}
	voters := map[string]cluster.Peer{}
	for _, p := range proxy.Cluster.Peers {
		voters[p.Name] = p
	}
	seen := map[string]bool{}
	for i, a := range cp.agents {
		f := classicPairAgents[i]
		name := a.Node.Name
		b, ok := backends[name]
		if !ok || seen[name] {
			t.Errorf("%s: node.name %q is not a backend name of the proxies, or used twice", f, name)
			continue
		}
		seen[name] = true
		if want := "agent-" + name + ".yaml"; filepath.Base(f) != want {
			t.Errorf("%s holds node %s: name it %s", f, name, want)
		}
		host := hostOf(t, b.Address)
		url, err := a.AgentURL()
		if err != nil || hostOf(t, strings.TrimPrefix(url, "http://")) != host {
			t.Errorf("%s: announced URL %q (%v): want one on the backend's host %s", f, url, err, host)
		}
		if _, port, _ := net.SplitHostPort(b.Address); a.Agent.Ready.SIP != "127.0.0.1:"+port {
			t.Errorf("%s: agent.ready.sip %s, want the local Asterisk on the backend's port %s", f, a.Agent.Ready.SIP, port)
		}
		if a.Agent.Ready.AMI == nil {
			t.Errorf("%s: agent.ready.ami missing: readiness would not wait for FullyBooted", f)
		}
		s := a.Agent.Config
		if s.DRBD.Resource != "r0" || s.Filesystem.Device != "/dev/drbd0" || s.Filesystem.MountPoint != "/replica" ||
			s.Filesystem.Type != "ext3" || s.Service.Unit != "asterisk.service" {
			t.Errorf("%s: group %s %s %s %s %s, want drbddisk::r0 Filesystem::/dev/drbd0::/replica::ext3 asterisk",
				f, s.DRBD.Resource, s.Filesystem.Device, s.Filesystem.MountPoint, s.Filesystem.Type, s.Service.Unit)
		}
		var fenced []string
		for other := range backends {
			if strings.Contains(s.Fence.Command, other+"-bmc") {
				fenced = append(fenced, other)
			}
		}
		if len(fenced) != 1 || fenced[0] == name {
			t.Errorf("%s: fence.command %q powers off %q: it must power off the peer, never this node", f, s.Fence.Command, fenced)
		}
		if filepath.Base(s.TokenFile) != filepath.Base(b.Agent.TokenFile) {
			t.Errorf("%s: agent.token_file %s, proxies present %s", f, s.TokenFile, b.Agent.TokenFile)
		}
		c := a.ClusterConfig()
		if !a.ClusterEnabled() {
			t.Errorf("%s: no cluster: section: the proxies have no agent url and would never find it", f)
			continue
		}
		if _, voter := voters[c.Name]; voter {
			t.Errorf("%s: cluster.name %q is a voter's name", f, c.Name)
		}
		if filepath.Base(c.SecretFile) != filepath.Base(proxy.Cluster.SecretFile) {
			t.Errorf("%s: cluster.secret_file %s, proxies %s: a different key cannot join", f, c.SecretFile, proxy.Cluster.SecretFile)
		}
		gossip := c.Advertise
		if gossip == "" {
			gossip = c.Bind
		}
		if hostOf(t, gossip) != host {
			t.Errorf("%s: gossip address %s is not the node's address %s", f, gossip, host)
		}
		for _, p := range c.Peers {
			v, ok := voters[p.Name]
			if !ok || v.Gossip != p.Gossip {
				t.Errorf("%s: cluster.peers entry %+v is not one of the voters %+v", f, p, proxy.Cluster.Peers)
			}
			if hostOf(t, p.Gossip) == host && p.Gossip[strings.LastIndex(p.Gossip, ":"):] == gossip[strings.LastIndex(gossip, ":"):] {
				t.Errorf("%s: gossip %s: the proxy on this host already uses %s", f, gossip, p.Gossip)
			}
		}
		if len(c.Peers) != len(voters) {
			t.Errorf("%s: joins %d voters, want all %d", f, len(c.Peers), len(voters))
		}
	}
	if len(seen) != len(backends) {
		t.Errorf("agent files for %v, backends %v: one agent per PBX node", seen, backends)
	}
}

// TestClassicPairCheckConfigBinary runs the real `hapbx check-config` (the
// Makefile's unit target sets HAPBX_BIN) on every example file.
func TestClassicPairCheckConfigBinary(t *testing.T) {
	bin := os.Getenv("HAPBX_BIN")
	if bin == "" {
		t.Skip("HAPBX_BIN not set (make unit sets it); TestClassicPairConfigLoads and TestClassicPairAgents cover config.Load/LoadAgent/LoadWitness")
	}
	files := []string{"hapbx.example.yaml", "hapbx-agent.example.yaml", classicPairWitness}
	files = append(append(files, classicPairProxies...), classicPairAgents...)
	for _, f := range files {
		out, err := exec.Command(bin, "check-config", "-c", withSecretStubs(t, f)).CombinedOutput()
		if err != nil || !bytes.HasSuffix(bytes.TrimSpace(out), []byte(": ok")) {
			t.Errorf("hapbx check-config %s: %v\n%s", f, err, out)
		}
	}
	// Without the stubs, the only complaints are the missing secret files.
	for _, f := range append(classicPairProxies, classicPairAgents...) {
		out, err := exec.Command(bin, "check-config", "-c", f).CombinedOutput()
		if err == nil {
			t.Errorf("hapbx check-config %s passed without /etc/hapbx: the test would not notice an unchecked secret file", f)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if !strings.Contains(line, "/etc/hapbx/") || !strings.Contains(line, "no such file") {
				t.Errorf("hapbx check-config %s: %s", f, line)
			}
		}
	}
}

// TestClassicPairNothingPending: the classic pair is complete: no blocks
// left commented out for code "not yet" on main, and MIGRATION.md names
// only files that are here.
func TestClassicPairNothingPending(t *testing.T) {
	entries, err := os.ReadDir(classicDir)
	if err != nil {
		t.Fatal(err)
	}
	pending := regexp.MustCompile(`(?i)not yet|TODO\(|interim|being merged`)
	files := map[string][]byte{}
	keys := map[string]bool{} // every key the example files use
	var collect func(n *yaml.Node)
	collect = func(n *yaml.Node) {
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 {
				keys[c.Value] = true
			}
			collect(c)
		}
	}
	var yamls []string
	for _, e := range entries {
		path := filepath.Join(classicDir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[path] = data
		if strings.HasSuffix(e.Name(), ".yaml") {
			yamls = append(yamls, e.Name())
			var root yaml.Node
			if err := yaml.Unmarshal(data, &root); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			collect(&root)
		}
	}
	// A comment that starts with one of those keys is a commented-out
	// setting: "# cold:", "#   - {name: ...", "#   agent:".
	commentedKey := regexp.MustCompile(`^\s*#\s*(?:-\s*)?\{?([a-z_]+):(?:\s|$)`)
	for path, data := range files {
		for n, line := range strings.Split(string(data), "\n") {
			if pending.MatchString(line) {
				t.Errorf("%s:%d: %q: nothing is pending any more", path, n+1, line)
			}
			if m := commentedKey.FindStringSubmatch(line); m != nil && keys[m[1]] && strings.HasSuffix(path, ".yaml") {
				t.Errorf("%s:%d: %q: commented-out configuration", path, n+1, line)
			}
		}
	}
	want := []string{"agent-asterisk1.yaml", "agent-asterisk2.yaml", "proxy1.yaml", "proxy2.yaml", "witness.yaml"}
	if !slices.Equal(yamls, want) {
		t.Errorf("classic-pair holds %q, the tests check %q", yamls, want)
	}
	md, err := os.ReadFile(filepath.Join(classicDir, "MIGRATION.md"))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z0-9-]+\\.yaml)`").FindAllStringSubmatch(string(md), -1) {
		named[m[1]] = true
		if !slices.Contains(want, m[1]) {
			t.Errorf("MIGRATION.md names %s, which is not in %s", m[1], classicDir)
		}
	}
	for _, f := range want {
		if !named[f] {
			t.Errorf("MIGRATION.md does not say where %s goes", f)
		}
	}
}
