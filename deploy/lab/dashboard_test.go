package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// dashboardNeedsWhat lists the dashboard queries the lab's scenario cannot
// give a series, with the reason. Everything else must return one.
var dashboardNeedsWhat = map[string]string{
	// A retry moves a request to the next backend: in cold standby only
	// one PBX runs at a time, so the proxy has no next backend to try.
	`sum by (backend, reason) (rate(hapbx_proxy_retries_total{instance=~".*"}[30s]))`: "needs a hot pair (cold standby has one backend up)",
}

// TestDashboardQueries is issue 18.4: a real Prometheus scrapes the lab's
// proxies, witness and agents while the demo's scenario runs (cold
// standby, media anchoring, PBX and VIP holder killed, the pair cut), then
// every query of deploy/grafana/hapbx-dashboard.json (panels, variables,
// annotations) is evaluated through Prometheus' HTTP API: each must
// succeed and return at least one series (dashboardNeedsWhat excepted).
//
// Prometheus runs in the root namespace; the admin and agent listeners
// live in the lab's namespaces, so the test serves each one's /metrics on
// a loopback port of its own (/metrics/HOST), fetched inside that host's
// namespace at every scrape.
//
// The alerting rules of deploy/prometheus are loaded into the same
// Prometheus: every rule must have been evaluated without error.
//
// Part of `make lab` (about 45 s: the scenario, cold standby and media);
// `make dashboard-check` runs it alone.
func TestDashboardQueries(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("needs prometheus on PATH (Debian package prometheus)")
	}
	l := newLab(t, Options{Cold: true, Media: true})

	// The bridge: /metrics/HOST is HOST's /metrics, read in its namespace.
	targets := map[string]string{"witness": "http://" + AdminAddr + "/metrics"}
	for _, p := range Proxies {
		targets[p] = "http://" + AdminAddr + "/metrics"
	}
	for _, be := range Backends {
		targets[be] = "http://" + net.JoinHostPort(Hosts[be], strconv.Itoa(AgentPort)) + "/metrics"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics/{host}", func(w http.ResponseWriter, r *http.Request) {
		h := r.PathValue("host")
		u, ok := targets[h]
		if !ok {
			http.NotFound(w, r)
			return
		}
		res, err := l.client(h).Get(u)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		w.Header().Set("Content-Type", res.Header.Get("Content-Type"))
		w.WriteHeader(res.StatusCode)
		_, _ = io.Copy(w, res.Body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	// Prometheus: one scrape config per host (its own metrics_path), each
	// labelled as deploy/grafana/README.md scrapes a pair: job hapbx or
	// hapbx-agent, as the alerting rules expect, and the host as instance,
	// as the dashboard's variables expect. The alerting rules are loaded
	// too, so every rule is evaluated against the same series.
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("..", "prometheus", "hapbx-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\nrule_files: [%q]\nscrape_configs:\n", rules)
	for h := range targets {
		job := "hapbx"
		if strings.HasPrefix(h, "pbx") {
			job = "hapbx-agent"
		}
		fmt.Fprintf(&conf, "  - job_name: %s-%s\n    metrics_path: /metrics/%s\n    static_configs:\n      - targets: [%q]\n        labels: {job: %s, instance: %s}\n",
			job, h, h, ln.Addr().String(), job, h)
	}
	api := startPrometheus(t, prom, dir, conf.String())
	started := time.Now()

	rep, err := l.RunScenario(ScenarioOptions{Logf: t.Logf})
	t.Logf("\n%s", rep.Table())
	if err != nil {
		t.Fatal(err)
	}
	// A datagram that is no SIP message, for the malformed panel.
	if err := InNS(NS("phones"), func() error {
		c, err := net.Dial("udp", net.JoinHostPort(VIP, strconv.Itoa(SIPPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("NOT SIP AT ALL\r\n\r\n"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Every target scraped a few times after the last event.
	if err := WaitFor(30*time.Second, "every target scraped as up", func() bool {
		n, err := promQuery(api, fmt.Sprintf("count(up == 1) == %d", len(targets)))
		return err == nil && n == 1
	}); err != nil {
		t.Fatal(err)
	}
	// The VIP can be between holders when the scenario ends (the restore
	// event heals the pair): the VIP holder panel needs one.
	if err := WaitFor(30*time.Second, "one node scraped holding the VIP", func() bool {
		n, err := promQuery(api, "sum(hapbx_cluster_vip_held) == 1")
		return err == nil && n == 1
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)

	vars := grafanaVars(time.Since(started) + time.Minute)
	for _, q := range loadDashboardQueries(t) {
		expr := vars.Replace(q.expr)
		n, err := promQuery(api, expr)
		why, excused := dashboardNeedsWhat[expr]
		switch {
		case err != nil:
			t.Errorf("%s: %s: %v", q.where, expr, err)
		case n == 0 && !excused:
			t.Errorf("%s: %s: no series", q.where, expr)
		case n == 0:
			t.Logf("%s: no series (%s)", q.where, why)
		case excused:
			t.Errorf("%s: %s returns %d series: drop it from dashboardNeedsWhat (%s)", q.where, expr, n, why)
		}
	}
	checkRules(t, api)
}

// checkRules fails for every alerting rule Prometheus has not evaluated
// or failed to evaluate, and logs the alerts pending or firing.
func checkRules(t *testing.T, api string) {
	t.Helper()
	res, err := http.Get(api + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Name           string    `json:"name"`
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					State          string    `json:"state"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		t.Fatalf("rules: decode: %v (HTTP %s)", err, res.Status)
	}
	n := 0
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			n++
			switch {
			case rule.Health != "ok" || rule.LastError != "":
				t.Errorf("rule %s/%s: health %q: %s", g.Name, rule.Name, rule.Health, rule.LastError)
			case rule.LastEvaluation.IsZero():
				t.Errorf("rule %s/%s: never evaluated", g.Name, rule.Name)
			case rule.State != "inactive":
				t.Logf("rule %s/%s: %s", g.Name, rule.Name, rule.State)
			}
		}
	}
	if n == 0 {
		t.Errorf("Prometheus loaded no alerting rule from deploy/prometheus/hapbx-rules.yml")
	}
	t.Logf("%d alerting rules evaluated without error", n)
}

// TestDashboardQueriesParse needs no lab: every dashboard query, its
// Grafana variables replaced as TestDashboardQueries does, is accepted by
// a real Prometheus (with nothing to scrape, so no series is asked for).
func TestDashboardQueriesParse(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("needs prometheus on PATH (Debian package prometheus)")
	}
	api := startPrometheus(t, prom, t.TempDir(), "global: {scrape_interval: 1s}\n")
	vars := grafanaVars(time.Hour)
	for _, q := range loadDashboardQueries(t) {
		expr := vars.Replace(q.expr)
		if strings.Contains(expr, "$") {
			t.Errorf("%s: %s: a Grafana variable is left", q.where, expr)
		}
		if _, err := promQuery(api, expr); err != nil {
			t.Errorf("%s: %s: %v", q.where, expr, err)
		}
	}
}

// grafanaVars replaces the dashboard's variables as Grafana does with
// "All" selected (their allValue .*) over a range of d.
func grafanaVars(d time.Duration) *strings.Replacer {
	return strings.NewReplacer(`$instance`, `.*`, `$backend`, `.*`, `$agent`, `.*`,
		`$__rate_interval`, `30s`, `$__range`, strconv.Itoa(int(d.Seconds()))+"s")
}

func loadDashboardQueries(t *testing.T) []dashQuery {
	t.Helper()
	queries, err := dashboardQueries(filepath.Join("..", "grafana", "hapbx-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(queries) < 40 {
		t.Fatalf("found %d queries in the dashboard: the walk is broken", len(queries))
	}
	return queries
}

// startPrometheus runs prometheus with config conf (data and log in dir)
// on a free loopback port until the test ends, and returns its URL once
// it is ready.
func startPrometheus(t *testing.T, prom, dir, conf string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	port := testkit.FreePort(t, "127.0.0.1")
	api := "http://127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address=127.0.0.1:"+strconv.Itoa(port),
		"--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait(); logf.Close() })
	if err := WaitFor(30*time.Second, "Prometheus ready", func() bool {
		res, err := http.Get(api + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
		t.Fatalf("%v\n%s", err, b)
	}
	return api
}

type dashQuery struct{ where, expr string }

// dashboardQueries returns every PromQL expression of the dashboard: panel
// targets (rows included), variable queries (label_values(M, L) becomes
// `count by (L) (M)`) and annotation expressions.
func dashboardQueries(path string) ([]dashQuery, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	type panel struct {
		Title   string                  `json:"title"`
		Targets []struct{ Expr string } `json:"targets"`
		Panels  []json.RawMessage       `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Annotations struct {
			List []struct {
				Name string `json:"name"`
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	var out []dashQuery
	var walk func([]json.RawMessage) error
	walk = func(raw []json.RawMessage) error {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				return err
			}
			for _, tg := range p.Targets {
				if tg.Expr != "" {
					out = append(out, dashQuery{"panel " + strconv.Quote(p.Title), tg.Expr})
				}
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d.Panels); err != nil {
		return nil, err
	}
	labelValues := regexp.MustCompile(`^label_values\(\s*([^,]+?)\s*,\s*([a-z_]+)\s*\)$`)
	for _, v := range d.Templating.List {
		q, ok := v.Query.(map[string]any)
		if !ok {
			continue // the datasource variable
		}
		s, _ := q["query"].(string)
		if m := labelValues.FindStringSubmatch(s); m != nil {
			out = append(out, dashQuery{"variable " + v.Name, "count by (" + m[2] + ") (" + m[1] + ")"})
		} else if s != "" {
			return nil, fmt.Errorf("variable %s: query %q is not label_values(METRIC, LABEL)", v.Name, s)
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			// Fires only around a switch: the series of its counter is what
			// must exist.
			out = append(out, dashQuery{"annotation " + strconv.Quote(a.Name), strings.TrimSuffix(a.Expr, " > 0")})
		}
	}
	return out, nil
}

// promQuery evaluates expr now and returns the number of series (or 1 for
// a scalar); an error for a failed query.
func promQuery(api, expr string) (int, error) {
	res, err := http.Get(api + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("decode: %w (HTTP %s)", err, res.Status)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s", r.Error)
	}
	if r.Data.ResultType == "scalar" || r.Data.ResultType == "string" {
		return 1, nil
	}
	var series []json.RawMessage
	if err := json.Unmarshal(r.Data.Result, &series); err != nil {
		return 0, err
	}
	return len(series), nil
}
