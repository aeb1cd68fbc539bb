package testkit

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a started child process and the channel closed once it has
// been waited for.
type Process struct {
	Cmd  *exec.Cmd
	Done <-chan struct{}
	err  error
}

// StartGroup starts cmd in its own process group, so that Kill and Stop
// reach whatever it forks too.
func StartGroup(cmd *exec.Cmd) (*Process, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return Watch(cmd)
}

// Watch starts cmd as it is configured and waits for it in the background.
func Watch(cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	p := &Process{Cmd: cmd, Done: done}
	go func() { p.err = cmd.Wait(); close(done) }()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.Done:
		return true
	default:
		return false
	}
}

// ExitCode waits for the end (Done closed) and returns the exit code, -1
// when the process did not exit by itself.
func (p *Process) ExitCode() int {
	<-p.Done
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// signal sends sig to the process group when the process leads one, else
// to the process.
func (p *Process) signal(sig syscall.Signal) {
	pid := p.Cmd.Process.Pid
	if a := p.Cmd.SysProcAttr; a != nil && a.Setpgid {
		pid = -pid
	}
	_ = syscall.Kill(pid, sig)
}

// Kill sends SIGKILL and waits for the process to go; safe to repeat.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	p.signal(syscall.SIGKILL)
	<-p.Done
}

// Stop sends SIGTERM, so that the process can flush and clean up, waits up
// to grace for it to go and kills it then.
func (p *Process) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.Done:
	case <-time.After(grace):
		p.Kill()
	}
}

// KillPIDFile SIGKILLs every process whose pid is listed (one per line or
// space separated) in file, as a crash would; a missing file kills nothing.
func KillPIDFile(file string) {
	b, _ := os.ReadFile(file)
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil && p > 0 {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
}
