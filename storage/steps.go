package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ReadyChecker tells whether the started service really serves. The
// production check (SIP OPTIONS answered and AMI FullyBooted) lives in the
// health package (health.ReadyCheck, wired by `hapbx agent`).
type ReadyChecker interface {
	Ready(ctx context.Context) error
}

// ReadyFunc adapts a function to ReadyChecker.
type ReadyFunc func(ctx context.Context) error

// Ready calls f.
func (f ReadyFunc) Ready(ctx context.Context) error { return f(ctx) }

// step is one resource of the group. start and stop must be idempotent:
// rollback stops the step that failed too.
type step interface {
	name() string
	timeout() time.Duration
	start(ctx context.Context, force bool) error
	stop(ctx context.Context) error
}

// Step names used in reports and metric labels.
const (
	StepDRBD       = "drbd"
	StepFilesystem = "filesystem"
	StepService    = "service"
)

type drbdStep struct{ cfg DRBDConfig }

func (s drbdStep) name() string           { return StepDRBD }
func (s drbdStep) timeout() time.Duration { return s.cfg.Timeout }

func (s drbdStep) start(ctx context.Context, force bool) error {
	args := []string{"primary", s.cfg.Resource}
	if force {
		args = []string{"primary", "--force", s.cfg.Resource}
	}
	_, err := runCmd(ctx, s.cfg.Drbdadm, args...)
	return err
}

func (s drbdStep) stop(ctx context.Context) error {
	_, err := runCmd(ctx, s.cfg.Drbdadm, "secondary", s.cfg.Resource)
	return err
}

// status reads `drbdadm status RES`.
func (s drbdStep) status(ctx context.Context) (DRBDState, error) {
	out, err := runCmd(ctx, s.cfg.Drbdadm, "status", s.cfg.Resource)
	if err != nil {
		return DRBDState{}, err
	}
	return ParseStatus(out, s.cfg.Resource)
}

type fsStep struct{ cfg FilesystemConfig }

func (s fsStep) name() string           { return StepFilesystem }
func (s fsStep) timeout() time.Duration { return s.cfg.Timeout }

// mountFlags maps the generic options of mount(8) to flags and passes the
// rest to the file system as data.
var mountFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
	"noexec": unix.MS_NOEXEC, "sync": unix.MS_SYNCHRONOUS, "noatime": unix.MS_NOATIME,
	"nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME, "dirsync": unix.MS_DIRSYNC,
	"bind": unix.MS_BIND, "rw": 0, "defaults": 0,
}

func parseMountOptions(opts string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range strings.Split(opts, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if f, ok := mountFlags[o]; ok {
			flags |= f
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

// inSyscall runs fn in a goroutine so that a hung mount(2) on a dead device
// cannot hold the group past its timeout.
func inSyscall(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s fsStep) start(ctx context.Context, _ bool) error {
	flags, data := parseMountOptions(s.cfg.Options)
	if m, err := MountedAt(s.cfg.MountPoint); err != nil {
		return err
	} else if m == s.cfg.Device || (m != "" && flags&unix.MS_BIND != 0) {
		return nil // already mounted (a bind mount shows its origin's source)
	} else if m != "" {
		return fmt.Errorf("mount point %s already holds %s, not %s", s.cfg.MountPoint, m, s.cfg.Device)
	}
	return inSyscall(ctx, func() error {
		if err := unix.Mount(s.cfg.Device, s.cfg.MountPoint, s.cfg.Type, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s type %s options %q: %w", s.cfg.Device, s.cfg.MountPoint, s.cfg.Type, s.cfg.Options, err)
		}
		return nil
	})
}

func (s fsStep) stop(ctx context.Context) error {
	for {
		m, err := MountedAt(s.cfg.MountPoint)
		if err != nil {
			return err
		}
		if m == "" {
			return nil
		}
		err = inSyscall(ctx, func() error { return unix.Unmount(s.cfg.MountPoint, 0) })
		if err == nil {
			continue // stacked mounts: unmount until none is left
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("umount %s: %w", s.cfg.MountPoint, err)
		}
		// Busy: a process still holds a file; give it a moment to exit.
		select {
		case <-ctx.Done():
			return fmt.Errorf("umount %s: %w (%w)", s.cfg.MountPoint, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// MountedAt returns the source of the file system mounted at mountPoint,
// per /proc/self/mountinfo, or "" when nothing is mounted there.
func MountedAt(mountPoint string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	src, err := parseMountinfo(bufio.NewScanner(f), mountPoint)
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return src, nil
}

func parseMountinfo(sc *bufio.Scanner, mountPoint string) (string, error) {
	want := strings.TrimRight(mountPoint, "/")
	if want == "" {
		want = "/"
	}
	src := ""
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		f := strings.Fields(sc.Text())
		if len(f) < 5 || unescapeMount(f[4]) != want {
			continue
		}
		for i := 5; i < len(f)-2; i++ {
			if f[i] == "-" {
				src = unescapeMount(f[i+2])
				break
			}
		}
		if src == "" {
			src = "?"
		}
	}
	return src, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

type serviceStep struct {
	cfg          ServiceConfig
	ready        ReadyChecker
	readyTimeout time.Duration
	poll         time.Duration
	// readyAfter is set by start: the service's own start-to-ready time.
	readyAfter *time.Duration
}

func (s *serviceStep) name() string { return StepService }

// timeout covers the start command plus the readiness wait.
func (s *serviceStep) timeout() time.Duration { return s.cfg.Timeout + s.readyTimeout }

func (s *serviceStep) start(ctx context.Context, _ bool) error {
	t0 := time.Now()
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	var err error
	if s.cfg.Unit != "" {
		_, err = runCmd(cctx, "systemctl", "start", s.cfg.Unit)
	} else {
		_, err = runShell(cctx, s.cfg.StartCommand)
	}
	cancel()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	check := s.ready
	if check == nil && s.cfg.Unit != "" {
		check = ReadyFunc(func(ctx context.Context) error { return unitActive(ctx, s.cfg.Unit) })
	}
	if check != nil {
		var last error
		for {
			if last = check.Ready(rctx); last == nil {
				break
			}
			select {
			case <-rctx.Done():
				return fmt.Errorf("service not ready within %s: %w", s.readyTimeout, last)
			case <-time.After(s.poll):
			}
		}
	}
	if s.readyAfter != nil {
		*s.readyAfter = time.Since(t0)
	}
	return nil
}

func (s *serviceStep) stop(ctx context.Context) error {
	var err error
	if s.cfg.Unit != "" {
		_, err = runCmd(ctx, "systemctl", "stop", s.cfg.Unit)
	} else {
		_, err = runShell(ctx, s.cfg.StopCommand)
	}
	return err
}

func unitActive(ctx context.Context, unit string) error {
	out, err := runCmd(ctx, "systemctl", "is-active", unit)
	if err != nil {
		return fmt.Errorf("unit %s is %q: %w", unit, out, err)
	}
	return nil
}
