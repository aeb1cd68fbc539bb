// Package secretfile reads the files that hold hapbx's secrets (bearer
// tokens, keys, the AMI password, TLS private keys) and refuses one that
// users other than its owner may read: any local user could otherwise
// run `hapbx standby` or forge dialog tokens. It does not parse them.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrExposed is the error of a secret file readable by group or others.
var ErrExposed = errors.New("readable by group or others")

// maxSize bounds what is read: secrets are a few lines.
const maxSize = 1 << 20

// Read returns the content of the secret file at path, or an error naming
// it: it cannot be opened, or its mode lets group or others read, write or
// execute it (ErrExposed, with the mode).
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat() // the file opened, not the path again
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secret file %s has mode %04o: %w (chmod 600 %s, owned by the user hapbx runs as)", path, perm, ErrExposed, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSize))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}
