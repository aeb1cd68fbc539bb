package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// tokenParam is the Record-Route URI parameter that carries a dialog token.
const tokenParam = "hpxd"

// tokenLen is the HMAC-SHA256 prefix kept: 96 bits, 16 base64url characters.
const tokenLen = 12

// minSecretLen is the shortest dialog secret accepted (128 bits).
const minSecretLen = 16

// WithDialogSecret keys the dialog tokens with secret (see DialogSecret).
// Both proxies of a pair need the same one, so that a twin that took the
// VIP accepts the dialogs of the proxy that died. Without it New draws a
// random key: dialogs then survive neither a restart nor a failover.
func WithDialogSecret(secret []byte) Option {
	return func(p *Proxy) { p.secret = bytes.Clone(secret); p.macs = newMACPool(p.secret) }
}

// dialogToken binds a dialog set up through this proxy, as it is known when
// the Record-Route is written (the callee's tag is not yet known), to the
// backend its non-backend side may send in-dialog requests to. The phone
// side's address is not bound: phones move behind NAT within a call, and
// requests from a backend are trusted whatever their target.
func (p *Proxy) dialogToken(callID, fromTag, backend string) string {
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(p.dialogMAC(sum[:0], callID, fromTag, backend))
}

// dialogMAC appends to dst the MAC of a dialog token (tokenLen bytes).
func (p *Proxy) dialogMAC(dst []byte, callID, fromTag, backend string) []byte {
	return p.macs.sum(dst, "hapbx-dialog-v1", callID, fromTag, backend)[:len(dst)+tokenLen]
}

// tokenAllows reports whether tok was issued by a proxy holding the same
// secret for the dialog of req and backend: either tag of req may be the
// one bound (the caller's tag is the To tag of a request the callee sends).
func (p *Proxy) tokenAllows(tok string, req *sip.Request, backend string) bool {
	var got [tokenLen]byte
	if backend == "" || base64.RawURLEncoding.DecodedLen(len(tok)) != tokenLen {
		return false
	}
	if n, err := base64.RawURLEncoding.Decode(got[:], []byte(tok)); err != nil || n != tokenLen {
		return false
	}
	cid := req.CallID().Value()
	for _, tag := range [2]string{tagOf(req.From().Params), tagOf(req.To().Params)} {
		if tag == "" {
			continue
		}
		var sum [sha256.Size]byte
		if hmac.Equal(got[:], p.dialogMAC(sum[:0], cid, tag, backend)) {
			return true
		}
	}
	return false
}

func tagOf(hp sip.HeaderParams) string {
	t, _ := hp.Get("tag")
	return t
}

// readSecret reads a dialog secret file: its bytes, surrounding whitespace
// trimmed, at least 16 of them.
func readSecret(path string) ([]byte, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < minSecretLen {
		return nil, fmt.Errorf("%s: %d bytes, want at least %d (e.g. `openssl rand -hex 32`)", path, len(b), minSecretLen)
	}
	return b, nil
}

// DialogSecret returns the key of the dialog tokens: the content of path
// (config sip.dialog_secret_file) when set; else the one kept in
// dir/dialog.secret, created with a random key on first use so that a
// restart keeps the calls in progress; else, with no dir either, a random
// key for this process only.
func DialogSecret(path, dir string) ([]byte, error) {
	if path != "" {
		return readSecret(path)
	}
	if dir == "" {
		return randomSecret()
	}
	kept := filepath.Join(dir, "dialog.secret")
	b, err := readSecret(kept)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return b, err
	}
	b, err = randomSecret()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dialog secret directory: %w", err)
	}
	if err := os.WriteFile(kept, b, 0o600); err != nil {
		return nil, fmt.Errorf("keep dialog secret: %w", err)
	}
	return b, nil
}

func randomSecret() ([]byte, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("random dialog secret: %w", err)
	}
	return []byte(hex.EncodeToString(raw)), nil
}
