package testkit

import (
	"bufio"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The stand-ins, written out per test: a test binary runs from its own
// package's folder, and the namespace lab reads them in place (drbd/).
//
//go:embed drbd
var drbdStandIns embed.FS

// DRBD is a two-node DRBD (nodes A and B) kept in files and driven by the
// stand-ins of drbd/: drbdadm (primary, secondary, status) and drbdsetup
// (events2) print what drbd-utils 9 prints, fence-node stands in for an
// IPMI power-off, systemctl for a systemd unit. Every call is recorded in
// calls.log, with the roles after it.
type DRBD struct {
	tb  testing.TB
	Dir string // the shared state (DRBD_STUB_DIR): role.N, disk.N, up.N, sb, pids.N, calls.log
	Bin string // the stand-ins: drbdadm, drbdsetup, fence-node, systemctl
}

// NewDRBD writes the stand-ins and an empty state in temp dirs, with the
// nodes in up powered on. A failed test logs calls.log.
func NewDRBD(tb testing.TB, up ...string) *DRBD {
	tb.Helper()
	d := &DRBD{tb: tb, Dir: filepath.Join(tb.TempDir(), "drbd"), Bin: filepath.Join(tb.TempDir(), "bin")}
	if err := os.Mkdir(d.Dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	sub, _ := fs.Sub(drbdStandIns, "drbd")
	if err := os.CopyFS(d.Bin, sub); err != nil {
		tb.Fatal(err)
	}
	ents, _ := os.ReadDir(d.Bin)
	for _, e := range ents {
		if err := os.Chmod(filepath.Join(d.Bin, e.Name()), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	for _, n := range up {
		d.Write("up."+n, "1")
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			b, _ := os.ReadFile(d.Path("calls.log"))
			tb.Logf("calls.log:\n%s", b)
		}
	})
	return d
}

// Path is the state file name.
func (d *DRBD) Path(name string) string { return filepath.Join(d.Dir, name) }

// Tool is the stand-in named name (drbdadm, drbdsetup, ...).
func (d *DRBD) Tool(name string) string { return filepath.Join(d.Bin, name) }

// Write sets the state file name (role.A, up.B, sb, ...) to content.
func (d *DRBD) Write(name, content string) {
	d.tb.Helper()
	if err := os.WriteFile(d.Path(name), []byte(content+"\n"), 0o644); err != nil {
		d.tb.Fatal(err)
	}
}

// Read is the state file name without its newline, "" when missing.
func (d *DRBD) Read(name string) string {
	b, _ := os.ReadFile(d.Path(name))
	return strings.TrimSpace(string(b))
}

// AddPID lists pid among node's processes, which fence-node kills.
func (d *DRBD) AddPID(node string, pid int) {
	f, err := os.OpenFile(d.Path("pids."+node), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, pid)
		f.Close()
	}
}

// Env is the environment of node's agent: the shared state, the node's
// name and its mount point (drbdadm secondary fails while it is mounted).
func (d *DRBD) Env(node, mount string) []string {
	return []string{"DRBD_STUB_DIR=" + d.Dir, "DRBD_STUB_NODE=" + node, "DRBD_STUB_MOUNT=" + mount}
}

// FenceCommand powers node off in the shared state; with fail it fails as
// an unreachable BMC does.
func (d *DRBD) FenceCommand(node string, fail bool) string {
	f := "0"
	if fail {
		f = "1"
	}
	return fmt.Sprintf("FENCE_FAIL=%s DRBD_STUB_DIR=%s %s %s", f, d.Dir, d.Tool("fence-node"), node)
}

// DRBDCall is one line of calls.log.
type DRBDCall struct {
	At    float64 // Unix seconds
	Node  string  // A, B, or ? for a fence-node run outside an agent
	What  string  // "drbdadm primary --force r0", "fence A", ...
	Exit  int
	Roles map[string]string // after the call, "(down)" suffixed when off
}

// Calls parses calls.log; none yet is no call.
func (d *DRBD) Calls() []DRBDCall {
	d.tb.Helper()
	f, err := os.Open(d.Path("calls.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		d.tb.Fatal(err)
	}
	defer f.Close()
	var out []DRBDCall
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			d.tb.Fatalf("bad calls.log line %q", sc.Text())
		}
		c := DRBDCall{Node: strings.TrimPrefix(fs[1], "node="), Roles: map[string]string{}}
		c.At, _ = strconv.ParseFloat(fs[0], 64)
		var what []string
		in := true
		for _, w := range fs[2:] {
			switch {
			case strings.HasPrefix(w, "exit="):
				c.Exit, _ = strconv.Atoi(strings.TrimPrefix(w, "exit="))
				in = false
			case in:
				what = append(what, w)
			case strings.HasPrefix(w, "A=") || strings.HasPrefix(w, "B="):
				c.Roles[w[:1]] = w[2:]
			}
		}
		c.What = strings.Join(what, " ")
		out = append(out, c)
	}
	return out
}

// NeverTwoPrimaries replays calls: after every successful promotion,
// demotion or fencing at most one powered-on node is Primary, and the roles
// recorded with each call agree.
func NeverTwoPrimaries(tb testing.TB, calls []DRBDCall) {
	tb.Helper()
	const primaryRole = "Primary"
	primary := map[string]bool{}
	for _, c := range calls {
		if c.Exit == 0 {
			switch {
			case strings.HasPrefix(c.What, "drbdadm primary"):
				primary[c.Node] = true
			case strings.HasPrefix(c.What, "drbdadm secondary"):
				delete(primary, c.Node)
			case strings.HasPrefix(c.What, "fence "):
				delete(primary, strings.TrimPrefix(c.What, "fence "))
			}
		}
		if len(primary) > 1 {
			tb.Fatalf("two primaries after %+v", c)
		}
		if c.Roles["A"] == primaryRole && c.Roles["B"] == primaryRole {
			tb.Fatalf("calls.log records both nodes Primary and up at %+v", c)
		}
	}
}

// FindCall is the index of node's first call starting with prefix that
// exited with exit, -1 when none.
func FindCall(calls []DRBDCall, node, prefix string, exit int) int {
	for i, c := range calls {
		if c.matches(node, prefix, exit) {
			return i
		}
	}
	return -1
}

// LastCall is FindCall's last match.
func LastCall(calls []DRBDCall, node, prefix string, exit int) int {
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].matches(node, prefix, exit) {
			return i
		}
	}
	return -1
}

func (c DRBDCall) matches(node, prefix string, exit int) bool {
	return c.Node == node && strings.HasPrefix(c.What, prefix) && c.Exit == exit
}
