// Package sipptest runs SIPp as a SIP backend that answers OPTIONS, for
// tests of health probes and of anything routing by backend health. Only
// tests import it. It skips the test when sipp is not installed.
package sipptest

import (
	_ "embed"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxysipp "github.com/hapbx/hapbx/proxy/sipptest"
)

//go:embed testdata/options-uas.xml
var scenario string

// UAS is one SIPp process answering OPTIONS on Addr.
type UAS struct {
	tb        testing.TB
	IP        string
	Port      int
	Transport string // "udp" or "tcp"
	file      string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Addr is host:port.
func (u *UAS) Addr() string { return net.JoinHostPort(u.IP, strconv.Itoa(u.Port)) }

// Need skips tb when sipp is missing.
func Need(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("sipp"); err != nil {
		tb.Skip("needs sipp on PATH (Debian package sip-tester): ", err)
	}
}

// RandomIP returns a 127.0.0.x address (x in 2..254), so parallel tests do
// not collide.
func RandomIP() string { return "127.0.0." + strconv.Itoa(2+rand.IntN(253)) }

// FreePort returns a port free for both UDP and TCP on ip, reserved for
// this test process (see the proxy's sipptest.FreePort).
func FreePort(tb testing.TB, ip string) int {
	tb.Helper()
	return proxysipp.FreePort(tb, ip)
}

// Start runs sipp on ip:port (port 0: a free one) answering every OPTIONS
// with code over transport ("udp" or "tcp"). It waits until the socket is
// bound and kills sipp at test end.
func Start(tb testing.TB, ip string, port, code int, transport string) *UAS {
	tb.Helper()
	Need(tb)
	if port == 0 {
		port = FreePort(tb, ip)
	}
	file := filepath.Join(tb.TempDir(), "options-uas.xml")
	text := strings.Replace(scenario, "SIP/2.0 200 OK", fmt.Sprintf("SIP/2.0 %d Probe", code), 1)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	u := &UAS{tb: tb, IP: ip, Port: port, Transport: transport, file: file}
	u.Restart()
	tb.Cleanup(u.Kill)
	return u
}

// Restart starts sipp again on the same address after Kill.
func (u *UAS) Restart() {
	u.tb.Helper()
	u.Kill()
	t := "u1"
	if u.Transport == "tcp" {
		t = "t1"
	}
	dir := u.tb.TempDir()
	cmd := exec.Command("sipp", "-sf", u.file, "-i", u.IP, "-p", strconv.Itoa(u.Port),
		"-t", t, "-nostdin", "-max_socket", "64")
	cmd.Dir = dir // sipp writes its error and trace files next to it
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := os.Create(filepath.Join(dir, "sipp.out"))
	if err != nil {
		u.tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		u.tb.Fatalf("start sipp: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(done) }()
	u.mu.Lock()
	u.cmd, u.done = cmd, done
	u.mu.Unlock()
	if !u.waitBound(done) {
		u.Kill()
		b, _ := os.ReadFile(out.Name())
		u.tb.Fatalf("sipp did not bind %s/%s within 3s; output:\n%s", u.Addr(), u.Transport, b)
	}
}

// waitBound polls until the port is taken by sipp (or sipp exits).
func (u *UAS) waitBound(done chan struct{}) bool {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return false
		default:
		}
		if u.Transport == "tcp" {
			if c, err := net.DialTimeout("tcp", u.Addr(), 100*time.Millisecond); err == nil {
				c.Close()
				return true
			}
		} else if proxysipp.UDPBound(u.Addr()) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Kill sends SIGKILL and waits for the process to go; safe to repeat.
func (u *UAS) Kill() {
	u.mu.Lock()
	cmd, done := u.cmd, u.done
	u.cmd = nil
	u.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}
