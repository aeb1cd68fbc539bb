package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// adminConfig writes a daemon's file with the admin section given.
func adminConfig(t *testing.T, adminSection string) (path string, adminPort int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "hapbx.yaml")
	adminPort = testkit.FreePort(t, "127.0.0.1")
	be := net.JoinHostPort(be1IP, strconv.Itoa(testkit.FreePort(t, be1IP)))
	writeConfig(t, path, testkit.FreePort(t, proxyIP), adminPort, "", be)
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old := fmt.Sprintf("admin: {listen: \"127.0.0.1:%d\"}", adminPort)
	out := strings.Replace(string(text), old, "admin: "+fmt.Sprintf(adminSection, adminPort), 1)
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, adminPort
}

// secret writes content to a file of the given mode.
func secret(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRunRefusesExposedTokenFile: `hapbx run` does not start with an
// admin token any local user can read, and says which file and mode.
func TestRunRefusesExposedTokenFile(t *testing.T) {
	token := secret(t, "admin.token", "tok3n\n", 0o644)
	path, _ := adminConfig(t, "{listen: \"127.0.0.1:%d\", token_file: "+token+"}")
	cmd := exec.Command(hapbxBin, "run", "-c", path)
	var stderr testkit.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1\n%s", err, stderr.String())
	}
	if want := path + ": admin.token_file: secret file " + token + " has mode 0644: readable by group or others"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("stderr lacks %q:\n%s", want, stderr.String())
	}
}

// startAdmin runs hapbx on path until its /healthz at base answers 200
// through client, and returns its log.
func startAdmin(t *testing.T, path, base string, client *http.Client) *testkit.Buffer {
	t.Helper()
	cmd := exec.Command(hapbxBin, "run", "-c", path)
	var log testkit.Buffer
	cmd.Stderr = &log
	p, err := testkit.Watch(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if !testkit.Poll(30*time.Second, func() bool {
		if p.Exited() {
			t.Fatalf("hapbx exited (%d)\n%s", p.ExitCode(), log.String())
		}
		res, err := client.Get(base + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}) {
		t.Fatalf("hapbx not healthy within 30s\n%s", log.String())
	}
	return &log
}

func getCode(t *testing.T, client *http.Client, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	res.Body.Close()
	return res.StatusCode
}

const exposedWarning = "admin interface reachable from other hosts without TLS"

// TestAdminPlainOnAllAddresses: an admin interface on all addresses
// without TLS logs a warning at start; pprof is off by default.
func TestAdminPlainOnAllAddresses(t *testing.T) {
	path, port := adminConfig(t, "{listen: \"0.0.0.0:%d\"}")
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	log := startAdmin(t, path, base, http.DefaultClient)
	if !strings.Contains(log.String(), exposedWarning) {
		t.Errorf("no warning about the admin interface on 0.0.0.0 without TLS:\n%s", log.String())
	}
	if code := getCode(t, http.DefaultClient, base+"/debug/pprof/", ""); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without admin.pprof: HTTP %d, want 404", code)
	}
}

// TestAdminTLS: with admin.tls the API answers HTTPS only, `hapbx status`
// and `hapbx standby` reach it with the same file, no warning is logged, the
// status (JSON and page) is open, and the profiles (admin.pprof) need the
// token.
func TestAdminTLS(t *testing.T) {
	cert, key := adminCert(t)
	token := secret(t, "admin.token", "tok3n\n", 0o600)
	path, port := adminConfig(t, "{listen: \"0.0.0.0:%d\", token_file: "+token+", pprof: true, tls: {cert: "+cert+", key: "+key+"}}")
	certPEM, _ := os.ReadFile(cert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "hapbx-admin.invalid"}}, Timeout: 10 * time.Second}
	base := "https://127.0.0.1:" + strconv.Itoa(port)
	log := startAdmin(t, path, base, client)
	if strings.Contains(log.String(), exposedWarning) {
		t.Errorf("warning about clear text with admin.tls set:\n%s", log.String())
	}
	if res, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz"); err == nil {
		res.Body.Close()
		if res.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200 with admin.tls set")
		}
	}
	out, err := exec.Command(hapbxBin, "status", "-c", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "proxy test") {
		t.Fatalf("hapbx status over HTTPS: %v\n%s", err, out)
	}
	// standby reaches the API over HTTPS with the token: this proxy runs
	// hot standby, which the API answers (not a TLS or token failure).
	out, err = exec.Command(hapbxBin, "standby", "-c", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cold standby is not enabled") {
		t.Fatalf("hapbx standby over HTTPS: %v, want the API's answer that cold standby is off\n%s", err, out)
	}
	// The status page shows what /api/v1/status shows: like it, it needs no
	// token (admin.tls protects both); / leads to the page.
	for _, p := range []string{"/api/v1/status", "/status", "/"} {
		if code := getCode(t, client, base+p, ""); code != http.StatusOK {
			t.Errorf("%s without the token: HTTP %d, want 200", p, code)
		}
	}
	if code := getCode(t, client, base+"/debug/pprof/heap", ""); code != http.StatusUnauthorized {
		t.Errorf("/debug/pprof/heap without the token: HTTP %d, want 401", code)
	}
	if code := getCode(t, client, base+"/debug/pprof/heap", "tok3n"); code != http.StatusOK {
		t.Errorf("/debug/pprof/heap with the token: HTTP %d, want 200", code)
	}
}

// adminCert writes a certificate for hapbx-admin.invalid (not the
// address the CLI dials: it trusts the file, not the name) and its key.
func adminCert(t *testing.T) (cert, key string) {
	return testkit.SelfSigned(t, t.TempDir(), "hapbx-admin.invalid")
}
