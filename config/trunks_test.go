package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeSecret writes a secret file with mode and returns its path.
func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "trunk.secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTrunksDefaults(t *testing.T) {
	pw := writeSecret(t, "s3cret\n", 0o600)
	f, err := Parse("x.yaml", []byte(minimal+`
trunks:
  - name: provider1
    hosts: [sip.provider.example]
    acl: [203.0.113.0/24, 198.51.100.7]
    credentials_file: `+pw+`
    register: true
    user: "4930123"
    backends: [asterisk2]
  - name: provider2
    hosts: ["192.0.2.10:5070", "192.0.2.11"]
    transport: tcp
    register_interval: 300s
    keepalive: 10s
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b := f.Trunks[0], f.Trunks[1]
	if a.Transport != "udp" || a.RegisterInterval != 600*time.Second || a.Keepalive != 30*time.Second || a.Domain != "sip.provider.example" {
		t.Errorf("defaults not applied: %+v", a)
	}
	if b.Transport != "tcp" || b.RegisterInterval != 300*time.Second || b.Keepalive != 10*time.Second || b.Domain != "192.0.2.10" {
		t.Errorf("settings not kept: %+v", b)
	}
}

// Every bad trunk setting is its own line: FILE: trunks[i].field: reason.
func TestTrunksProblems(t *testing.T) {
	exposed := writeSecret(t, "s3cret\n", 0o644)
	empty := writeSecret(t, "\n", 0o600)
	missing := filepath.Join(t.TempDir(), "missing")
	_, err := Parse("x.yaml", []byte(minimal+`
trunks:
  - name: ""
    hosts: ["sip..example", "192.0.2.1:0"]
    transport: sctp
    acl: ["10.0.0.1/8", "nope"]
  - name: p
    hosts: [sip.provider.example]
    register: true
    register_interval: 10s
    keepalive: -1s
    backends: [asterisk9, asterisk1, asterisk1]
  - name: p
    hosts: [192.0.2.1]
    credentials_file: `+exposed+`
    bogus: 1
  - name: q
    hosts: [192.0.2.2]
    credentials_file: `+empty+`
  - name: r
    hosts: [192.0.2.3]
    credentials_file: `+missing+`
  - name: s
    hosts: [192.0.2.4]
    acl: [192.0.2.3]
`))
	if err == nil {
		t.Fatal("bad trunks accepted")
	}
	got := err.Error()
	for _, want := range []string{
		"x.yaml: trunks[0].name: must not be empty",
		`x.yaml: trunks[0].hosts[0]: "sip..example" is neither an IP address nor a domain name`,
		`x.yaml: trunks[0].hosts[1]: "192.0.2.1:0": port must be 1-65535`,
		`x.yaml: trunks[0].transport: "sctp" is not udp, tcp or tls`,
		`x.yaml: trunks[0].acl[0]: "10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)`,
		`x.yaml: trunks[0].acl[1]: "nope" is not an address or network`,
		"x.yaml: trunks[1].acl: required when hosts name a domain",
		"x.yaml: trunks[1].user: required with register",
		"x.yaml: trunks[1].credentials_file: required with register",
		"x.yaml: trunks[1].register_interval: must be at least 60s, got 10s",
		"x.yaml: trunks[1].keepalive: must be > 0, got -1s",
		`x.yaml: trunks[1].backends[2]: "asterisk1" listed twice`,
		`x.yaml: trunks[1].backends[0]: "asterisk9" is no backend's name`,
		"x.yaml: trunks[2].bogus: unknown key",
		`x.yaml: trunks[2].name: "p" already used by trunks[1]`,
		"x.yaml: trunks[2].credentials_file: secret file " + exposed + " has mode 0644: readable by group or others",
		"x.yaml: trunks[3].credentials_file: " + empty + ": empty",
		"x.yaml: trunks[4].credentials_file: open " + missing + ": no such file or directory",
		`x.yaml: trunks: 192.0.2.3/32 is in the ACL of trunks "r" and "s"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "\n") + 1; n != 19 {
		t.Errorf("%d problems, want 19:\n%s", n, got)
	}
}

// TestExampleTrunk: the commented trunk of deploy/hapbx.example.yaml,
// uncommented, is a valid trunk with the defaults it says.
func TestExampleTrunk(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "deploy", "hapbx.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "trunks: []\n# trunks:\n")
	if start < 0 {
		t.Fatal("no `trunks: []` followed by a commented example")
	}
	end := start + strings.Index(text[start:], "\n\n")
	var lines []string
	for _, l := range strings.Split(text[start:end], "\n")[1:] {
		lines = append(lines, strings.TrimPrefix(l, "# "))
	}
	pw := writeSecret(t, "s3cret\n", 0o600)
	example := strings.Replace(strings.Join(lines, "\n"), "/etc/hapbx/trunk-provider1.secret", pw, 1)
	f, err := Parse("hapbx.example.yaml (trunk on)", []byte(text[:start]+example+text[end:]))
	if err != nil {
		t.Fatalf("the example with its trunk uncommented:\n%v", err)
	}
	tr := f.Trunks[0]
	if len(f.Trunks) != 1 || tr.Name != "provider1" || !tr.Register || tr.Domain != "sip.provider.example" ||
		tr.RegisterInterval != 600*time.Second || tr.Keepalive != 30*time.Second || len(tr.ACL) != 2 {
		t.Errorf("trunks = %+v", f.Trunks)
	}
}
