package lab

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAMIServerProcess runs this test binary as the backends' AMI server
// (what the lab starts in each PBX namespace) on loopback and speaks AMI to it.
func TestAMIServerProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "ami.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(exe, AMIServerCommand, "-listen", addr, "-user", "u", "-secret-file", secret)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ami-server exit after SIGTERM: %v (%s)", err, stderr.String())
			}
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("ami-server did not exit on SIGTERM")
		}
	}()
	var c net.Conn
	if err := WaitFor(5*time.Second, "ami-server listening", func() bool {
		c, err = net.Dial("tcp", addr)
		return err == nil
	}); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	banner, _ := br.ReadString('\n')
	if !strings.HasPrefix(banner, "Asterisk Call Manager/") {
		t.Fatalf("banner %q", banner)
	}
	read := func() string {
		var b strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v (so far %q)", err, b.String())
			}
			if line == "\r\n" {
				return b.String()
			}
			b.WriteString(line)
		}
	}
	c.Write([]byte("Action: Login\r\nActionID: 7\r\nUsername: u\r\nSecret: s3cret\r\n\r\n"))
	if r := read(); !strings.Contains(r, "Response: Success") || !strings.Contains(r, "ActionID: 7") {
		t.Fatalf("login answer %q", r)
	}
	if r := read(); !strings.Contains(r, "Event: FullyBooted") {
		t.Fatalf("after login %q, want FullyBooted", r)
	}
	c.Write([]byte("Action: Ping\r\nActionID: 8\r\n\r\n"))
	if r := read(); !strings.Contains(r, "Ping: Pong") || !strings.Contains(r, "ActionID: 8") {
		t.Fatalf("ping answer %q", r)
	}
	// A wrong secret is refused and the session closed.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	br2 := bufio.NewReader(c2)
	br2.ReadString('\n')
	c2.Write([]byte("Action: Login\r\nUsername: u\r\nSecret: wrong\r\n\r\n"))
	var ans strings.Builder
	for {
		line, err := br2.ReadString('\n')
		ans.WriteString(line)
		if err != nil {
			break
		}
	}
	if !strings.Contains(ans.String(), "Authentication failed") {
		t.Fatalf("wrong secret answer %q", ans.String())
	}
}
