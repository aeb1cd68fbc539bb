package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/proxy/limits"
)

const minimal = `
node: {name: proxy1}
sip:
  listen: ["udp://127.0.0.1:5060", "tcp://127.0.0.1:5060"]
  advertise: 127.0.0.1
backends:
  - {name: asterisk1, address: 127.0.0.11:5060, transport: udp}
  - {name: asterisk2, address: 127.0.0.12:5060, transport: udp}
routing: active-standby
admin: {listen: 127.0.0.1:9060}
log: {level: info, format: json}
`

func TestParseMinimalAppliesDefaults(t *testing.T) {
	f, err := Parse("hapbx.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if f.SIP.HopTimeout != 500*time.Millisecond || f.SIP.DrainTimeout != 5*time.Second || f.SIP.MaxMessageSize != 65535 {
		t.Errorf("defaults not applied: %+v", f.SIP)
	}
	if len(f.Backends) != 2 || f.Backends[1].Name != "asterisk2" {
		t.Errorf("backends = %+v", f.Backends)
	}
}

func TestParseDurations(t *testing.T) {
	f, err := Parse("x", []byte(minimal+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(minimal, "advertise: 127.0.0.1", "advertise: 127.0.0.1\n  hop_timeout: 250ms\n  drain_timeout: 2s", 1)
	if f, err = Parse("x", []byte(text)); err != nil {
		t.Fatal(err)
	}
	if f.SIP.HopTimeout != 250*time.Millisecond || f.SIP.DrainTimeout != 2*time.Second {
		t.Errorf("durations: %v %v", f.SIP.HopTimeout, f.SIP.DrainTimeout)
	}
}

// Every bad input must produce its own line: FILE: field.path: reason.
func TestParseListsEveryProblem(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "missing-secret")
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown keys at every depth", `
node: {name: p}
sip: {listen: ["udp://127.0.0.1:5060"], advertise: 127.0.0.1, advertize: x}
backends: [{name: a, address: "127.0.0.1:5060", transport: udp, prio: 1}]
bogus: 1
`, []string{"x.yaml: sip.advertize: unknown key (line 3)", "x.yaml: backends[0].prio: unknown key", "x.yaml: bogus: unknown key"}},
		{"field errors", `
node: {name: ""}
sip: {listen: ["sctp://1.2.3.4:5", "udp://127.0.0.1:99999"], advertise: "", hop_timeout: 0s, max_message_size: 10}
backends:
  - {name: a, address: "127.0.0.11", transport: udp}
  - {name: a, address: "127.0.0.12:5060", transport: xyz, ami: {address: "h:1", username: "", secret_file: "` + secret + `"}}
routing: roundrobin
admin: {listen: "nope"}
log: {level: loud, format: xml}
`, []string{
			"x.yaml: node.name: must not be empty",
			`x.yaml: sip.listen[0]: "sctp://1.2.3.4:5": transport "sctp" is not udp, tcp or tls`,
			"x.yaml: sip.listen[1]:",
			"x.yaml: sip.advertise: must name",
			"x.yaml: sip.hop_timeout: 0s must be between",
			"x.yaml: sip.max_message_size: 10 must be between",
			"x.yaml: backends[0].address:",
			`x.yaml: backends[1].name: "a" already used by backends[0]`,
			`x.yaml: backends[1].transport: "xyz" is not udp, tcp or tls`,
			"x.yaml: backends[1].ami.username: must not be empty",
			"x.yaml: backends[1].ami.secret_file:",
			`x.yaml: routing: unknown mode "roundrobin"`,
			"x.yaml: admin.listen:",
			`x.yaml: log.level: "loud"`,
			`x.yaml: log.format: "xml"`,
		}},
		{"tcp on a backend that is not udp", strings.Replace(minimal, "address: 127.0.0.12:5060, transport: udp", "address: 127.0.0.12:5060, transport: tls, tcp: true", 1),
			[]string{`x.yaml: backends[1].tcp: only for a udp backend (transport is "tls")`}},
		{"sip.tcp limits and timeouts", strings.Replace(minimal, "advertise: 127.0.0.1", "advertise: 127.0.0.1\n  tcp: {read_timeout: 0s, idle_timeout: 30m, max_connections: 10, max_per_source: 11}", 1), []string{
			"x.yaml: sip.tcp.read_timeout: 0s must be > 0",
			"x.yaml: sip.tcp.idle_timeout: 30m0s must exceed registrar.max_expires (1h0m0s)",
			"x.yaml: sip.tcp.max_per_source: 11 must be between 1 and max_connections (10)",
		}},
		{"no backends", "node: {name: p}\nsip: {listen: [\"udp://127.0.0.1:5060\"], advertise: 127.0.0.1}\n",
			[]string{"x.yaml: backends: at least one backend is required"}},
		{"no room for a phone's contacts", minimal + "registrar: {max_bindings_per_aor: 0}\n",
			[]string{"x.yaml: registrar.max_bindings_per_aor: must be > 0, got 0"}},
		{"wrong type", minimal + "\nadmin: {listen: [1, 2]}\n", []string{"x.yaml: "}},
		{"not yaml", "node: [", []string{"x.yaml: "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			got := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, line := range strings.Split(got, "\n") {
				if !strings.HasPrefix(line, "x.yaml: ") {
					t.Errorf("line without the file name: %q", line)
				}
			}
		})
	}
}

func TestParseBackendTCP(t *testing.T) {
	f, err := Parse("x", []byte(strings.Replace(minimal, "127.0.0.12:5060, transport: udp", "127.0.0.12:5060, transport: udp, tcp: true", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Backends[0].TCP || !f.Backends[1].TCP {
		t.Errorf("backends[].tcp = %v, %v, want false, true", f.Backends[0].TCP, f.Backends[1].TCP)
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	if _, err := Load(filepath.Join("..", "deploy", "hapbx.example.yaml")); err != nil {
		t.Fatalf("deploy/hapbx.example.yaml: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("err = %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// FuzzParse: whatever the file holds, Parse returns a value or an error,
// never panics, and every error line names the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("backends: [{name: a}]\nsip: {listen: [\"udp://[::1]:5060\"]}"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Parse("f.yaml", data)
		if err == nil {
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			if !strings.HasPrefix(line, "f.yaml: ") {
				t.Fatalf("error line without file: %q", line)
			}
		}
	})
}

// withCluster is minimal with a cluster whose gossip key is the file secret.
func withCluster(secret string) string {
	return minimal + `
cluster:
  peers:
    - {name: proxy1, gossip: "127.0.0.1:7946", raft: "127.0.0.1:7947"}
    - {name: proxy2, gossip: "127.0.0.2:7946", raft: "127.0.0.2:7947"}
    - {name: witness, gossip: "127.0.0.3:7946", raft: "127.0.0.3:7947"}
  secret_file: ` + secret + `
  vip: {address: 10.0.0.13/24, interface: eth0}
`
}

// The cluster key file is checked by check-config, not only at start.
func TestClusterSecretFileChecked(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.key")
	if _, err := Parse("x.yaml", []byte(withCluster(missing))); err == nil || !strings.Contains(err.Error(), "x.yaml: cluster.secret_file:") {
		t.Fatalf("missing key file: %v", err)
	}
	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("not base64 !!\n"), 0o600)
	if _, err := Parse("x.yaml", []byte(withCluster(bad))); err == nil || !strings.Contains(err.Error(), "cluster.secret_file:") {
		t.Fatalf("bad key file: %v", err)
	}
	good := filepath.Join(dir, "good.key")
	os.WriteFile(good, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600)
	if _, err := Parse("x.yaml", []byte(withDialogSecret(withCluster(good), dialogSecret(t)))); err != nil {
		t.Fatalf("good key file: %v", err)
	}
}

// withDialogSecret sets sip.dialog_secret_file in a config built on minimal.
func withDialogSecret(yaml, path string) string {
	return strings.Replace(yaml, "advertise: 127.0.0.1", "advertise: 127.0.0.1\n  dialog_secret_file: "+path, 1)
}

func dialogSecret(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "dialog.key")
	if err := os.WriteFile(path, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The dialog token key is required with a cluster (both proxies must share
// it) and checked like the other secret files.
func TestDialogSecretFileChecked(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "gossip.key")
	os.WriteFile(keyring, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600)
	cluster := withCluster(keyring)
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("tooshort\n"), 0o600)
	cases := []struct {
		name, yaml, want string
	}{
		{"cluster without it", cluster, "x.yaml: sip.dialog_secret_file: required with cluster.peers"},
		{"missing file", withDialogSecret(minimal, filepath.Join(dir, "nope.key")), "x.yaml: sip.dialog_secret_file: open "},
		{"too short", withDialogSecret(minimal, short), "x.yaml: sip.dialog_secret_file: " + short + ": 8 bytes, want at least 16"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse("x.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse("x.yaml", []byte(minimal)); err != nil {
		t.Errorf("without a cluster the file is optional: %v", err)
	}
	if _, err := Parse("x.yaml", []byte(withDialogSecret(cluster, dialogSecret(t)))); err != nil {
		t.Errorf("cluster with the file: %v", err)
	}
}

// TestTypeErrorsHavePaths: a value of the wrong type is reported as
// FILE: field.path: reason like every other problem, also inside lists;
// an unreadable file is FILE: reason too.
func TestTypeErrorsHavePaths(t *testing.T) {
	in := "node: {name: p1}\nsip:\n  listen: [\"udp://127.0.0.1:5060\"]\n  advertise: 127.0.0.1\n  hop_timeout: fast\n" +
		"backends:\n  - {name: a1, address: \"127.0.0.1:5070\", transport: udp}\n  - name: a2\n    address: [1, 2]\n"
	_, err := Parse("x.yaml", []byte(in))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"x.yaml: sip.hop_timeout: line 5: cannot unmarshal", "x.yaml: backends[1].address: line 9: cannot unmarshal"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	if _, err := Load(missing); err == nil || !strings.HasPrefix(err.Error(), missing+": cannot read the file: ") {
		t.Errorf("missing file: %v", err)
	}
}

// The limits section: sizes with units, every bad value on its own line
// with its path.
func TestLimits(t *testing.T) {
	f, err := Parse("x.yaml", []byte(minimal+"limits: {memory: 1GiB, flood: {rate: 0}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Limits.Memory != limits.GiB || f.Limits.Flood.Rate != 0 || f.Limits.MaxTransactions != limits.DefaultConfig().MaxTransactions {
		t.Errorf("limits read as %+v", f.Limits)
	}
	_, err = Parse("x.yaml", []byte(minimal+"limits:\n  memory: lots\n  max_transactions: 0\n  flood: {window: 1ms}\n"))
	for _, want := range []string{
		"x.yaml: limits.memory: line 13: \"lots\" is not a size",
		"x.yaml: limits.max_transactions: 0 must be at least 1",
		"x.yaml: limits.flood.window: 1ms must be between 100ms and 1m",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}
