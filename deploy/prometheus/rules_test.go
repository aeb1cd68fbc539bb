package prometheus

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// repoRoot is the module root, two levels up.
const repoRoot = "../.."

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type testFile struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// load decodes a YAML file; strict refuses keys v does not have (a
// misspelt key in a rule would be ignored by hand-written checks).
func load(t *testing.T, name string, v any, strict bool) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(strict)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// registered is every hapbx_* metric name written as a string literal in
// the module's non-test Go files: the names the code registers.
func registered(t *testing.T) map[string]bool {
	t.Helper()
	lit := regexp.MustCompile(`"(hapbx_[a-z0-9_]+)"`)
	names := map[string]bool{}
	err := filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllStringSubmatch(string(data), -1) {
			names[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// The rules name only metrics the code exports (a rule on a misspelt or
// removed metric never fires), cover what issue 18 asks for, carry a
// severity and both annotations, and each fires in a promtool unit test.
func TestRules(t *testing.T) {
	var rules ruleFile
	load(t, "hapbx-rules.yml", &rules, true)
	var tests testFile
	load(t, "hapbx-rules.test.yml", &tests, false)
	names := registered(t)
	if len(names) < 20 {
		t.Fatalf("found only %d hapbx_* names in the code: the scan is broken", len(names))
	}
	tested := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				tested[a.Alertname] = true
			}
		}
	}
	metric := regexp.MustCompile(`\bhapbx_[a-z0-9_]+`)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, m := range metric.FindAllString(r.Expr, -1) {
				base := m
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(m, suffix); ok && names[b] {
						base = b
					}
				}
				if !names[base] {
					t.Errorf("%s: %s is not a metric the code registers", r.Alert, m)
				}
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
			if !tested[r.Alert] {
				t.Errorf("%s: no test in hapbx-rules.test.yml expects it to fire", r.Alert)
			}
		}
	}
	for _, want := range []string{"HapbxBackendDown", "HapbxNoVIPHolder", "HapbxTwoVIPHolders", "HapbxDRBDSplitBrain",
		"HapbxColdPromotionBlocked", "HapbxRegistrationStoreErrors"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no %s alert", want)
		}
	}
}

// TestPromtool: promtool's own check and the unit tests of the rules.
func TestPromtool(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Skip("promtool is not installed (Debian package prometheus): the rules' promtool check and unit tests did not run")
	}
	for _, args := range [][]string{{"check", "rules", "hapbx-rules.yml"}, {"test", "rules", "hapbx-rules.test.yml"}} {
		out, err := exec.Command("promtool", args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
