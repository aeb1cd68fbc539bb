package admin

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

func writeToken(t *testing.T, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(p, []byte("tok3n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func get(t *testing.T, h http.Handler, path, token string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// TestRequireToken: only the token of a private token file opens the way.
func TestRequireToken(t *testing.T) {
	ok := func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("inside")) }
	good, exposed := writeToken(t, 0o600), writeToken(t, 0o644)
	cases := []struct {
		name, file, token string
		code              int
	}{
		{"no token file configured", "", "tok3n", http.StatusForbidden},
		{"token file readable by others", exposed, "tok3n", http.StatusServiceUnavailable},
		{"missing token file", filepath.Join(t.TempDir(), "none"), "tok3n", http.StatusServiceUnavailable},
		{"no token", good, "", http.StatusUnauthorized},
		{"wrong token", good, "guess", http.StatusUnauthorized},
		{"right token", good, "tok3n", http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, RequireToken(tc.file, ok), "/x", tc.token)
			if code != tc.code {
				t.Fatalf("HTTP %d %s, want %d", code, body, tc.code)
			}
			if (code == http.StatusOK) != (body == "inside") {
				t.Fatalf("body %q", body)
			}
			if code != http.StatusOK && !strings.Contains(body, `"error":`) {
				t.Fatalf("refusal is not JSON {error}: %q", body)
			}
		})
	}
}

// TestPprofNeedsToken: the profiles are served with the token only.
func TestPprofNeedsToken(t *testing.T) {
	mux := http.NewServeMux()
	Pprof(mux, writeToken(t, 0o600))
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine", "/debug/pprof/cmdline"} {
		if code, _ := get(t, mux, path, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without the token: HTTP %d, want 401", path, code)
		}
		if code, body := get(t, mux, path, "tok3n"); code != http.StatusOK {
			t.Errorf("%s with the token: HTTP %d %.200s", path, code, body)
		}
	}
}

func TestExposed(t *testing.T) {
	for listen, want := range map[string]bool{
		"127.0.0.1:9060": false, "127.0.3.7:9060": false, "[::1]:9060": false, "localhost:9060": false,
		"0.0.0.0:9060": true, "[::]:9060": true, ":9060": true, "192.168.1.13:9060": true, "admin.example:9060": true,
	} {
		if got := Exposed(listen); got != want {
			t.Errorf("Exposed(%q) = %v, want %v", listen, got, want)
		}
	}
}

// selfSigned writes a certificate for a name that is not the address
// dialled, and its key, and returns their paths.
func selfSigned(t *testing.T) (cert, key string) {
	return testkit.SelfSigned(t, t.TempDir(), "hapbx-admin.invalid")
}

// TestClientTrustsExactlyTheCertificate: the CLI's client reaches a server
// presenting admin.tls.cert (whose name is not the address dialled), and
// refuses one presenting another certificate.
func TestClientTrustsExactlyTheCertificate(t *testing.T) {
	cert, key := selfSigned(t)
	other, otherKey := selfSigned(t)
	serve := func(cert, key string) string {
		conf, err := ServerTLS(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
		srv.TLS = conf
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv.URL
	}
	client := func() *http.Client {
		tc, err := ClientTLS(cert)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	}
	res, err := client().Get(serve(cert, key))
	if err != nil {
		t.Fatalf("server with admin.tls.cert: %v", err)
	}
	res.Body.Close()
	if _, err := client().Get(serve(other, otherKey)); err == nil || !strings.Contains(err.Error(), "other than admin.tls.cert") {
		t.Fatalf("server with another certificate: %v, want refused", err)
	}
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get(serve(cert, key)); err == nil {
		t.Fatal("a client without the certificate trusted the self-signed server")
	}
}

// TestServerTLSRefusesExposedKey: the private key is a secret file.
func TestServerTLSRefusesExposedKey(t *testing.T) {
	cert, key := selfSigned(t)
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(cert, key); err == nil || !strings.Contains(err.Error(), key+" has mode 0640") {
		t.Fatalf("key readable by group: %v, want refused naming it and its mode", err)
	}
}
