package testkit

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireSIPp returns sipp's path; without it the test fails in CI (which
// installs the Debian package sip-tester) and skips with a clear message
// elsewhere.
func RequireSIPp(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("sipp")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("sipp not on PATH in CI: install the Debian package sip-tester")
		}
		t.Skip("sipp not on PATH: install the Debian package sip-tester to run this test")
	}
	return path
}

// SIPp is one running sipp.
type SIPp struct {
	t       testing.TB
	proc    *Process
	out     Buffer
	Addr    string // ip:port it listens on
	Dir     string
	Started time.Time // just before exec: sipp's trace times (Date_ms) count from about here
}

// StartSIPp runs sipp with args in its own process group, listening on
// ip:port, with stats and errors traced into a temp dir. The test's cleanup
// kills it.
func StartSIPp(t testing.TB, ip string, port int, args ...string) *SIPp {
	t.Helper()
	bin := RequireSIPp(t)
	dir := t.TempDir()
	full := append([]string{"-i", ip, "-p", strconv.Itoa(port), "-nostdin", "-trace_err", "-trace_screen"}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Dir = dir
	p := &SIPp{t: t, Addr: net.JoinHostPort(ip, strconv.Itoa(port)), Dir: dir}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	p.Started = time.Now()
	proc, err := StartGroup(cmd)
	if err != nil {
		t.Fatalf("start sipp %v: %v", full, err)
	}
	p.proc = proc
	t.Cleanup(p.Kill)
	return p
}

// Kill stops sipp at once (SIGKILL to its process group) and waits for it.
func (p *SIPp) Kill() { p.proc.Kill() }

// Stop ends sipp with SIGTERM, which makes it flush its trace files, and
// waits up to 3 s before killing it.
func (p *SIPp) Stop() { p.proc.Stop(3 * time.Second) }

// Wait waits up to d for sipp to exit and returns its exit code.
func (p *SIPp) Wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.proc.Done:
	case <-time.After(d):
		p.Kill()
		p.t.Fatalf("sipp %s did not finish within %v\n%s", p.Addr, d, p.Output())
	}
	return p.proc.ExitCode()
}

// Exited reports whether sipp has ended.
func (p *SIPp) Exited() bool { return p.proc.Exited() }

// Output is what sipp printed plus its error and screen traces.
func (p *SIPp) Output() string {
	var b bytes.Buffer
	b.WriteString(p.out.String())
	for _, pat := range []string{"*_errors.log", "*_screen.log", "*_messages.log"} {
		files, _ := filepath.Glob(filepath.Join(p.Dir, pat))
		for _, f := range files {
			data, _ := os.ReadFile(f)
			fmt.Fprintf(&b, "\n--- %s ---\n%s", f, tail(data, 4000))
		}
	}
	return b.String()
}

// Buffer collects a child process's output, which exec writes from its
// own goroutine while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Reset empties the buffer.
func (l *Buffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

// Trace returns sipp's whole -trace_msg log (empty without that flag).
func (p *SIPp) Trace() string {
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_messages.log"))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return b.String()
}

// Counts are sipp's cumulative call counts from its final screen.
type Counts struct {
	Successful, Failed int
}

var (
	reSuccess = regexp.MustCompile(`Successful call\s*\|\s*\d+\s*\|\s*(\d+)`)
	reFailed  = regexp.MustCompile(`Failed call\s*\|\s*\d+\s*\|\s*(\d+)`)
)

// Counts reads the last screen sipp wrote.
func (p *SIPp) Counts() Counts {
	text := p.Output()
	var c Counts
	if m := reSuccess.FindAllStringSubmatch(text, -1); len(m) > 0 {
		c.Successful, _ = strconv.Atoi(m[len(m)-1][1])
	}
	if m := reFailed.FindAllStringSubmatch(text, -1); len(m) > 0 {
		c.Failed, _ = strconv.Atoi(m[len(m)-1][1])
	}
	return c
}

// WaitListening waits until sipp has bound addr: over TCP until a
// connection is accepted, over UDP until /proc/net/udp lists it.
func WaitListening(t testing.TB, network, addr string, d time.Duration) {
	t.Helper()
	if !Poll(d, func() bool { return Listening(network, addr) }) {
		t.Fatalf("nothing listening on %s %s after %v", network, addr, d)
	}
}

// Listening reports whether something listens on addr: over TCP whether a
// connection is accepted, over UDP whether /proc/net/udp lists it.
func Listening(network, addr string) bool {
	if network != "tcp" {
		return UDPBound(addr)
	}
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// G711aPCAP is the G.711 a-law pcap the Debian package sip-tester ships,
// for SIPp's play_pcap_audio.
const G711aPCAP = "/usr/share/sip-tester/g711a.pcap"

// RequirePCAP returns G711aPCAP; without it the test fails in CI (which
// installs sip-tester) and skips with a clear message elsewhere.
func RequirePCAP(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(G711aPCAP); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s missing in CI: the Debian package sip-tester ships it", G711aPCAP)
		}
		tb.Skip("needs " + G711aPCAP + " (Debian package sip-tester)")
	}
	return G711aPCAP
}

// Exchange sends msg over UDP from a free port on fromIP to `to` and returns
// the first final response ("" when none came within wait). "PEER" in msg
// becomes the sender's address; "\n" becomes "\r\n" (the body's too).
func Exchange(tb testing.TB, fromIP, to, msg string, wait time.Duration) string {
	tb.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(fromIP, strconv.Itoa(FreePort(tb, fromIP))))
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "PEER", c.LocalAddr().String()), "\n", "\r\n")
	dst, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := c.WriteTo([]byte(msg), dst); err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 65535)
	deadline := time.Now().Add(wait)
	for {
		_ = c.SetReadDeadline(deadline)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return ""
		}
		if res := string(buf[:n]); !strings.HasPrefix(res, "SIP/2.0 1") {
			return res
		}
	}
}
