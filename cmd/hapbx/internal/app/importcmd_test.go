package app

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The import through the CLI: the files it writes pass check-config once
// the secret files its report names exist, and it never overwrites.
func TestImportHeartbeatThenCheckConfig(t *testing.T) {
	seed := filepath.Join("..", "..", "..", "..", "config", "heartbeat", "testdata", "seed")
	out, secrets := t.TempDir(), t.TempDir()
	args := []string{"import-heartbeat", "-ha-dir", seed, "-drbd-conf", filepath.Join(seed, "drbd.conf"),
		"-node", "asterisk2", "-witness", "192.168.1.20", "-secrets-dir", secrets, "-o", out}
	var stdout, stderr bytes.Buffer
	if code := Main(args, &stdout, &stderr); code != 0 {
		t.Fatalf("import-heartbeat: exit %d\n%s", code, stderr.String())
	}
	// Before the secrets exist, check-config must say they are missing.
	proxy, agent := filepath.Join(out, "hapbx.yaml"), filepath.Join(out, "hapbx-agent.yaml")
	var e bytes.Buffer
	if code := Main([]string{"check-config", "-c", proxy}, &bytes.Buffer{}, &e); code != 1 || !strings.Contains(e.String(), "dialog_secret_file") {
		t.Errorf("check-config before the secrets exist: exit %d, %q; want 1 naming the missing secret files", code, e.String())
	}
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) + "\n"
	n := 0
	for _, line := range strings.Split(stdout.String(), "\n") {
		path, _, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if ok && strings.HasPrefix(path, secrets+string(filepath.Separator)) {
			if err := os.WriteFile(path, []byte(key), 0o600); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n != 4 { // cluster.key, dialog.key, admin.token, agent.token
		t.Errorf("the report names %d secret files, want 4:\n%s", n, stdout.String())
	}
	for _, f := range []string{proxy, agent} {
		var o, e bytes.Buffer
		if code := Main([]string{"check-config", "-c", f}, &o, &e); code != 0 {
			t.Errorf("check-config %s: exit %d\n%s", filepath.Base(f), code, e.String())
		}
	}
	stderr.Reset()
	if code := Main(args, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "exists") {
		t.Errorf("a second import over the written files: exit %d, %q; want 1, file exists", code, stderr.String())
	}
	if code := Main([]string{"import-heartbeat", "-address", "asterisk1"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Errorf("-address without =IP: exit %d, want 2", code)
	}
}
