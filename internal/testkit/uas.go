package testkit

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
)

//go:embed testdata/options-uas.xml
var optionsScenario string

// OptionsUAS is one SIPp process answering every OPTIONS on Addr: a SIP
// backend for tests of health probes and of anything routing by backend
// health.
type OptionsUAS struct {
	tb        testing.TB
	IP        string
	Port      int
	Transport string // "udp" or "tcp"
	file      string

	mu   sync.Mutex
	proc *Process
}

// Addr is host:port.
func (u *OptionsUAS) Addr() string { return net.JoinHostPort(u.IP, strconv.Itoa(u.Port)) }

// RandomIP returns a 127.0.0.x address (x in 2..254), so parallel tests do
// not collide.
func RandomIP() string { return "127.0.0." + strconv.Itoa(2+rand.IntN(253)) }

// StartOptionsUAS runs sipp on ip:port (port 0: a free one) answering every
// OPTIONS with code over transport ("udp" or "tcp"). It waits until the
// socket is bound and kills sipp at test end.
func StartOptionsUAS(tb testing.TB, ip string, port, code int, transport string) *OptionsUAS {
	tb.Helper()
	RequireSIPp(tb)
	if port == 0 {
		port = FreePort(tb, ip)
	}
	file := filepath.Join(tb.TempDir(), "options-uas.xml")
	text := strings.Replace(optionsScenario, "SIP/2.0 200 OK", fmt.Sprintf("SIP/2.0 %d Probe", code), 1)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	u := &OptionsUAS{tb: tb, IP: ip, Port: port, Transport: transport, file: file}
	u.Restart()
	tb.Cleanup(u.Kill)
	return u
}

// Restart starts sipp again on the same address after Kill.
func (u *OptionsUAS) Restart() {
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
	out, err := os.Create(filepath.Join(dir, "sipp.out"))
	if err != nil {
		u.tb.Fatal(err)
	}
	defer out.Close() // the child has its own copy
	cmd.Stdout, cmd.Stderr = out, out
	p, err := StartGroup(cmd)
	if err != nil {
		u.tb.Fatalf("start sipp: %v", err)
	}
	u.mu.Lock()
	u.proc = p
	u.mu.Unlock()
	// Bound, or sipp gave up (its port taken).
	if !Poll(3*time.Second, func() bool { return p.Exited() || Listening(u.Transport, u.Addr()) }) || p.Exited() {
		u.Kill()
		b, _ := os.ReadFile(out.Name())
		u.tb.Fatalf("sipp did not bind %s/%s within 3s; output:\n%s", u.Addr(), u.Transport, b)
	}
}

// Freeze stops sipp (SIGSTOP) as a hung process: its socket stays open, so
// an OPTIONS gets neither an answer nor an ICMP error. Thaw resumes it.
func (u *OptionsUAS) Freeze() { u.send(syscall.SIGSTOP) }

// Thaw resumes sipp after Freeze (SIGCONT).
func (u *OptionsUAS) Thaw() { u.send(syscall.SIGCONT) }

func (u *OptionsUAS) send(sig syscall.Signal) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.proc != nil {
		u.proc.signal(sig)
	}
}

// Kill sends SIGKILL and waits for the process to go; safe to repeat.
func (u *OptionsUAS) Kill() {
	u.mu.Lock()
	p := u.proc
	u.proc = nil
	u.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}
