package storage

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The control handler's request checks, without starting anything: no
// token file, a bad token, a malformed body.
func TestHandlerRejects(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TokenFile = filepath.Join(dir, "token")
	cfg.DRBD.Drbdadm = "/nonexistent/drbdadm"
	cfg.Service = ServiceConfig{StartCommand: "false", StopCommand: "true", Timeout: time.Second}
	a, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := a.Handler()
	do := func(method, path, token, body string) (int, string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	if code, _ := do("POST", PathStart, "x", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("no token file: %d, want 503 (fail closed)", code)
	}
	if err := os.WriteFile(cfg.TokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.TokenFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _ := do("POST", PathStop, "s3cret", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("token file readable by others: %d, want 503 (fail closed)", code)
	}
	if err := os.Chmod(cfg.TokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _ := do("POST", PathStop, "wrong", ""); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d, want 401", code)
	}
	if code, body := do("POST", PathStart, "s3cret", "{force:"); code != http.StatusBadRequest || !strings.Contains(body, "bad start body") {
		t.Fatalf("bad body: %d %s", code, body)
	}
	if code, body := do("POST", PathStart, "s3cret", `{"peer_down":{"node":"a","how":"rebooted"}}`); code != http.StatusBadRequest || !strings.Contains(body, "peer_down.how") {
		t.Fatalf("bad peer_down: %d %s", code, body)
	}
	if code, _ := do("GET", PathStart, "s3cret", ""); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET start: %d, want 405", code)
	}
	if code, body := do("GET", PathStatus, "", ""); code != http.StatusOK || !strings.Contains(body, `"state":"stopped"`) {
		t.Fatalf("status: %d %s", code, body)
	}
	if st := a.Status(); st.State != StateStopped || st.LastError != "" {
		t.Fatalf("a rejected request changed the agent: %+v", st)
	}
}
