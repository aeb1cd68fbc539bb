// Package deploy holds no Go code: these tests check the deployment files
// beside them (systemd units, the Grafana dashboard, SIPp scenarios, example
// configurations) against the code they describe.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/proxy/sipptest"
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
		caps:     []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
		ambient:  []string{"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},
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

// notYetOnMain lists metrics the dashboard shows that other branches are
// adding (cluster, media). Remove each name once its package is merged:
// TestDashboardMetricsExist logs "ALLOW-LIST STALE" for names it now finds in
// the Go sources.
var notYetOnMain = map[string]string{
	// TODO(cluster): remove when the cluster package lands on main.
	"hapbx_cluster_vip_held":             "cluster",
	"hapbx_cluster_members":              "cluster",
	"hapbx_cluster_leader_changes_total": "cluster",
	"hapbx_cluster_quorum":               "cluster",
	"hapbx_cluster_raft_leader":          "cluster",
	"hapbx_cluster_garp_sent_total":      "cluster",
	// TODO(media): remove when the media package lands on main.
	"hapbx_media_sessions":             "media",
	"hapbx_media_packets_total":        "media",
	"hapbx_media_dropped_total":        "media",
	"hapbx_media_sdp_errors_total":     "media",
	"hapbx_media_port_exhausted_total": "media",
}

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
			t.Logf("ALLOW-LIST STALE: %s is now registered in the Go sources; remove it from notYetOnMain", m)
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
	uasPort, uacPort := sipptest.FreePort(t, ip), sipptest.FreePort(t, ip)
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	n := strconv.Itoa(calls)
	server := sipptest.Start(t, ip, uasPort, append([]string{"-sf", abs(uas), "-m", n,
		"-mp", strconv.Itoa(sipptest.FreePort(t, ip))}, sippServerArgs(uacArgs)...)...)
	args := append([]string{server.Addr, "-sf", abs(uac), "-m", n, "-timeout", "8s", "-timeout_error",
		"-mp", strconv.Itoa(sipptest.FreePort(t, ip))}, uacArgs...)
	client := sipptest.Start(t, ip, uacPort, args...)
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
	sipptest.Require(t)
	users := genUsers(t, "-n", "3", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	// -l 1: the test peer walks the same file in step with the phones.
	code, out := sippRun(t, "sipp/testdata/uas_registrar.xml", "sipp/register.xml", 3,
		"-inf", users, "-l", "1", "-r", "20", "-d", "10")
	if code != 0 {
		t.Fatalf("register.xml exited %d\n%s", code, out)
	}
}

// TestSIPpRegisterWrongPassword proves the credentials are really checked:
// the phones' file has other passwords than the registrar's.
func TestSIPpRegisterWrongPassword(t *testing.T) {
	sipptest.Require(t)
	good := genUsers(t, "-n", "1", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	bad := genUsers(t, "-n", "1", "-f", "9000", "-d", "127.0.0.1", "-p", "wrong")
	const ip = "127.0.0.1"
	abs, _ := filepath.Abs("sipp/testdata/uas_registrar.xml")
	uac, _ := filepath.Abs("sipp/register.xml")
	server := sipptest.Start(t, ip, sipptest.FreePort(t, ip), "-sf", abs, "-m", "1", "-inf", good,
		"-mp", strconv.Itoa(sipptest.FreePort(t, ip)))
	client := sipptest.Start(t, ip, sipptest.FreePort(t, ip), server.Addr, "-sf", uac, "-inf", bad,
		"-m", "1", "-timeout", "5s", "-timeout_error", "-mp", strconv.Itoa(sipptest.FreePort(t, ip)))
	if code := client.Wait(8 * time.Second); code == 0 {
		t.Fatalf("register.xml with wrong passwords exited 0: the digest is not checked\n%s", client.Output())
	}
}

func TestSIPpCall(t *testing.T) {
	sipptest.Require(t)
	users := genUsers(t, "-n", "3", "-f", "9000", "-d", "127.0.0.1", "-p", "pw")
	code, out := sippRun(t, "sipp/testdata/uas_call.xml", "sipp/call.xml", 3,
		"-inf", users, "-s", "600", "-l", "1", "-r", "20", "-d", "10")
	if code != 0 {
		t.Fatalf("call.xml exited %d\n%s", code, out)
	}
}

func TestSIPpOptions(t *testing.T) {
	sipptest.Require(t)
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

var classicPairProxies = []string{
	"examples/classic-pair/proxy1.yaml",
	"examples/classic-pair/proxy2.yaml",
}

// withSecretStubs copies the config at path to a temp dir, with every
// *_file path pointing at an existing file there: the examples name
// /etc/hapbx/... files that exist on a deployed node, not on a build host.
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
		if err := os.WriteFile(stub, []byte("secret\n"), 0o600); err != nil {
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

func TestClassicPairConfigLoads(t *testing.T) {
	var names []string
	for _, f := range classicPairProxies {
		cfg, err := config.Load(withSecretStubs(t, f))
		if err != nil {
			t.Fatalf("%s:\n%v", f, err)
		}
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
		}
		if cfg.Failover.Routing != "active-standby" || cfg.Failover.Failback {
			t.Errorf("%s: routing %q failback %v, want active-standby without failback (auto_failback off)",
				f, cfg.Failover.Routing, cfg.Failover.Failback)
		}
		if cfg.Registrar.DataDir != "/var/lib/hapbx" {
			t.Errorf("%s: registrar.data_dir %q: keep it on the local disk (/var/lib/hapbx), never on /replica", f, cfg.Registrar.DataDir)
		}
	}
	if len(names) == 2 && names[0] == names[1] {
		t.Errorf("both proxies are named %q", names[0])
	}
}

// TestClassicPairCheckConfigBinary runs the real `hapbx check-config` (the
// Makefile's unit target sets HAPBX_BIN) on the examples.
func TestClassicPairCheckConfigBinary(t *testing.T) {
	bin := os.Getenv("HAPBX_BIN")
	if bin == "" {
		t.Skip("HAPBX_BIN not set (make unit sets it); TestClassicPairConfigLoads covers config.Load")
	}
	for _, f := range append([]string{"hapbx.example.yaml"}, classicPairProxies...) {
		out, err := exec.Command(bin, "check-config", "-c", withSecretStubs(t, f)).CombinedOutput()
		if err != nil {
			t.Errorf("hapbx check-config %s: %v\n%s", f, err, out)
		}
	}
}

// futureMarker opens a commented-out block for code not on main yet.
const futureMarker = "# ---- NOT YET ACTIVE"

// futureKeyLine is a commented-out YAML line of a "NOT YET ACTIVE" block.
var futureKeyLine = regexp.MustCompile(`^(\s*)# ( *(?:[a-z_]+:(?: |$)|- ).*)$`)

// uncommentFuture returns data with the commented YAML of every NOT YET
// ACTIVE block (or of the whole file, when all is set) uncommented.
func uncommentFuture(data []byte, all bool) []byte {
	var out bytes.Buffer
	in := all
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, futureMarker) {
			in = true
		} else if in && !all && regexp.MustCompile(`^\s*# -{10,}$`).MatchString(line) {
			in = false
		}
		if m := futureKeyLine.FindStringSubmatch(line); in && m != nil {
			line = m[1] + m[2]
		}
		out.WriteString(line + "\n")
	}
	return out.Bytes()
}

// TestClassicPairFutureBlocks checks the commented-out sections for code not
// on main yet: each block names its TODO, and uncommented it is valid YAML
// with the keys the cluster and cold branches read.
func TestClassicPairFutureBlocks(t *testing.T) {
	files := append(append([]string{}, classicPairProxies...), "examples/classic-pair/agent.yaml", "examples/classic-pair/witness.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		blocks := strings.Count(string(data), futureMarker)
		todos := regexp.MustCompile(`TODO\((cluster|cold)\)`).FindAllString(string(data), -1)
		if blocks == 0 || len(todos) < blocks {
			t.Errorf("%s: %d NOT YET ACTIVE blocks, %d TODO(cluster|cold) markers: each block needs its TODO", f, blocks, len(todos))
		}
		whole := strings.HasSuffix(f, "agent.yaml") || strings.HasSuffix(f, "witness.yaml")
		var tree map[string]any
		if err := yaml.Unmarshal(uncommentFuture(data, whole), &tree); err != nil {
			t.Errorf("%s uncommented is not YAML: %v\n%s", f, err, uncommentFuture(data, whole))
			continue
		}
		var want []string
		switch {
		case strings.HasSuffix(f, "agent.yaml"):
			want = []string{"node", "agent", "log"}
		case strings.HasSuffix(f, "witness.yaml"):
			want = []string{"node", "cluster", "log"}
		default:
			want = []string{"cluster", "cold", "sip", "backends"}
			for i, b := range tree["backends"].([]any) {
				if _, ok := b.(map[string]any)["agent"]; !ok {
					t.Errorf("%s: backends[%d] has no agent block", f, i)
				}
			}
			vip, _ := tree["cluster"].(map[string]any)["vip"].(map[string]any)
			if vip["address"] != "192.168.1.13/24" || vip["interface"] != "eth0" {
				t.Errorf("%s: cluster.vip %v, want 192.168.1.13/24 on eth0", f, vip)
			}
		}
		for _, k := range want {
			if _, ok := tree[k]; !ok {
				t.Errorf("%s uncommented has no %s: section", f, k)
			}
		}
	}
}
