package secretfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRead: only files no one but their owner may read are returned; the
// error of an exposed one names the file and its mode.
func TestRead(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode    os.FileMode
		exposed bool
	}{
		{0o600, false}, {0o400, false}, {0o700, false},
		{0o640, true}, {0o644, true}, {0o604, true}, {0o660, true}, {0o602, true}, {0o610, true},
	} {
		p := filepath.Join(dir, fmt.Sprintf("secret%04o", tc.mode))
		if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		b, err := Read(p)
		if !tc.exposed {
			if err != nil || string(b) != "s3cret\n" {
				t.Errorf("mode %04o: %q, %v; want the content", tc.mode, b, err)
			}
			continue
		}
		if !errors.Is(err, ErrExposed) || b != nil {
			t.Errorf("mode %04o: %q, %v; want ErrExposed", tc.mode, b, err)
			continue
		}
		if want := fmt.Sprintf("%s has mode %04o", p, tc.mode); !strings.Contains(err.Error(), want) {
			t.Errorf("mode %04o: error %q does not say %q", tc.mode, err, want)
		}
	}
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}
