package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hapbx/hapbx/internal/testkit"
)

// exposedFile writes content to a file of mode 0644 (readable by all).
func exposedFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSecretFilesMustBePrivate: every secret file a proxy reads is refused
// when group or others may read it, the problem naming the key, the file
// and its mode.
func TestSecretFilesMustBePrivate(t *testing.T) {
	key := "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"
	token := exposedFile(t, "admin.token", "tok3n\n")
	ami := exposedFile(t, "ami.secret", "s3cret\n")
	dialog := exposedFile(t, "dialog.key", key)
	gossip := exposedFile(t, "cluster.key", key)
	cert, tlsKey := testkit.SelfSigned(t, t.TempDir(), "127.0.0.1")
	if err := os.Chmod(tlsKey, 0o644); err != nil {
		t.Fatal(err)
	}
	withTLS := strings.Replace(withCluster(gossip), `"tcp://127.0.0.1:5060"]`,
		fmt.Sprintf(`"tcp://127.0.0.1:5060", "tls://127.0.0.1:5061"]`+"\n  tls: {cert: %s, key: %s}", cert, tlsKey), 1)
	yaml := strings.Replace(withDialogSecret(withTLS, dialog), "admin: {listen: 127.0.0.1:9060}",
		fmt.Sprintf("admin: {listen: 127.0.0.1:9060, token_file: %s}", token), 1)
	yaml = strings.Replace(yaml, "address: 127.0.0.12:5060, transport: udp}",
		fmt.Sprintf("address: 127.0.0.12:5060, transport: udp, ami: {address: \"127.0.0.12:5038\", username: hapbx, secret_file: %s}}", ami), 1)
	_, err := Parse("x.yaml", []byte(yaml))
	if err == nil {
		t.Fatal("no error")
	}
	for k, p := range map[string]string{"admin.token_file": token, "backends[1].ami.secret_file": ami, "sip.dialog_secret_file": dialog, "cluster.secret_file": gossip, "sip.tls.key": tlsKey} {
		if want := fmt.Sprintf("x.yaml: %s: secret file %s has mode 0644: readable by group or others", k, p); !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

// TestAdminSection: admin.tls needs both files, admin.pprof the token.
func TestAdminSection(t *testing.T) {
	cases := []struct{ admin, want string }{
		{"{listen: 127.0.0.1:9060, tls: {cert: /nonexistent.pem}}", "x.yaml: admin.tls.key: required with admin.tls.cert"},
		{"{listen: 127.0.0.1:9060, tls: {key: /nonexistent.pem}}", "x.yaml: admin.tls.cert: required with admin.tls.key"},
		{"{listen: 127.0.0.1:9060, tls: {cert: /nonexistent.pem, key: /nonexistent.key}}", "x.yaml: admin.tls: TLS certificate: open /nonexistent.pem"},
		{"{listen: 127.0.0.1:9060, pprof: true}", "x.yaml: admin.pprof: needs admin.token_file"},
	}
	for _, tc := range cases {
		yaml := strings.Replace(minimal, "admin: {listen: 127.0.0.1:9060}", "admin: "+tc.admin, 1)
		if _, err := Parse("x.yaml", []byte(yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("admin: %s: got %v, want %q", tc.admin, err, tc.want)
		}
	}
}
