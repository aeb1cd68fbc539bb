package proxy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDialogSecret: the configured file wins; without one the key is made
// once and kept in the data directory, so a restart keeps the dialogs.
func TestDialogSecret(t *testing.T) {
	dir := t.TempDir()
	first, err := DialogSecret("", dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DialogSecret("", dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) < minSecretLen || !bytes.Equal(first, again) {
		t.Fatalf("kept secret %q, then %q: want the same, at least %d bytes", first, again, minSecretLen)
	}
	if fi, err := os.Stat(filepath.Join(dir, "dialog.secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kept secret file: %v %v", fi, err)
	}
	conf := filepath.Join(dir, "dialog.key")
	os.WriteFile(conf, []byte("  0123456789abcdef0123\n"), 0o600)
	if got, err := DialogSecret(conf, dir); err != nil || string(got) != "0123456789abcdef0123" {
		t.Fatalf("configured file: %q %v", got, err)
	}
	os.WriteFile(conf, []byte("short\n"), 0o600)
	if _, err := DialogSecret(conf, dir); err == nil || !strings.Contains(err.Error(), "want at least 16") {
		t.Fatalf("short file: %v", err)
	}
	a, _ := DialogSecret("", "")
	b, _ := DialogSecret("", "")
	if len(a) < minSecretLen || bytes.Equal(a, b) {
		t.Fatalf("without file or directory: %q and %q, want two random keys", a, b)
	}
}
