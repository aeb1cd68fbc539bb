package debian

import (
	"bufio"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// repoRoot is the module root, two levels up.
const repoRoot = "../.."

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// debFile is $HAPBX_DEB (`make deb-test` sets it) or the package `make
// deb` builds.
func debFile(t *testing.T) string {
	if p := os.Getenv("HAPBX_DEB"); p != "" {
		return p
	}
	cmd := exec.Command("make", "-s", "deb")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	cmd = exec.Command("make", "-s", "print-deb")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make print-deb: %v", err)
	}
	return filepath.Join(repoRoot, strings.TrimSpace(string(out)))
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// TestDebianPackage installs the .deb with dpkg, checks what it put where
// and that the installed example passes check-config, then purges it and
// removes the account it created, leaving the machine as it was.
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: installs the package with dpkg (CI runs as root; `sudo make deb-test`)")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("needs dpkg (a Debian-based machine)")
	}
	if exec.Command("dpkg-query", "-W", "-f", "${Status}", "hapbx").Run() == nil {
		t.Skip("a hapbx package is installed on this machine: the test would replace and purge it")
	}
	deb := debFile(t)

	// The control file and the name.
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Depends"} {
		fields[f] = strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, f))
	}
	if fields["Package"] != "hapbx" || fields["Architecture"] != "amd64" {
		t.Errorf("control: Package %q Architecture %q, want hapbx amd64", fields["Package"], fields["Architecture"])
	}
	if want := "hapbx_" + fields["Version"] + "_amd64.deb"; filepath.Base(deb) != want {
		t.Errorf("file name %s, want %s", filepath.Base(deb), want)
	}
	if !regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*-[0-9]+$`).MatchString(fields["Version"]) {
		t.Errorf("Version %q is not a Debian version with a revision", fields["Version"])
	}

	_, userErr := user.Lookup("hapbx")
	hadUser := userErr == nil
	hadEtc, hadState := exists("/etc/hapbx"), exists("/var/lib/hapbx")
	run(t, "dpkg", "-i", deb)
	purged := false
	purge := func() {
		if purged {
			return
		}
		purged = true
		os.Remove("/etc/hapbx/agent.token")
		run(t, "dpkg", "--purge", "hapbx")
		if !hadUser {
			if out, err := exec.Command("userdel", "hapbx").CombinedOutput(); err != nil {
				t.Errorf("userdel hapbx: %v %s", err, out)
			}
			if _, err := user.LookupGroup("hapbx"); err == nil {
				exec.Command("groupdel", "hapbx").Run()
			}
		}
	}
	t.Cleanup(purge)

	// Files where Debian wants them, units pointing at /usr/bin.
	for _, p := range []string{"/usr/bin/hapbx", "/usr/share/man/man1/hapbx.1.gz", "/usr/share/doc/hapbx/copyright",
		"/usr/share/doc/hapbx/examples/hapbx.example.yaml", "/usr/share/doc/hapbx/examples/hapbx-agent.example.yaml",
		"/usr/share/doc/hapbx/examples/classic-pair/MIGRATION.md", "/usr/lib/sysusers.d/hapbx.conf"} {
		if !exists(p) {
			t.Errorf("%s not installed", p)
		}
	}
	for _, u := range []string{"hapbx.service", "hapbx-agent.service", "hapbx-witness.service"} {
		data, err := os.ReadFile("/lib/systemd/system/" + u)
		if err != nil {
			t.Errorf("unit %s: %v", u, err)
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			l := sc.Text()
			if strings.HasPrefix(l, "Exec") && !strings.Contains(l, "=/usr/bin/hapbx ") && !strings.Contains(l, "=-/usr/bin/hapbx ") && !strings.Contains(l, "/bin/kill") {
				t.Errorf("%s: %q does not run /usr/bin/hapbx", u, l)
			}
		}
	}
	run(t, "/usr/bin/hapbx", "version")

	// The account: a system user with no login, owner group of /etc/hapbx.
	u, err := user.Lookup("hapbx")
	if err != nil {
		t.Fatalf("no hapbx account after install: %v", err)
	}
	if pw := strings.Split(strings.TrimSpace(run(t, "getent", "passwd", "hapbx")), ":"); len(pw) != 7 || !strings.HasSuffix(pw[6], "nologin") {
		t.Errorf("hapbx account %q: want a nologin shell", pw)
	}
	st, err := os.Stat("/etc/hapbx")
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode()&(fs.ModePerm|fs.ModeSetgid) != 0o750|fs.ModeSetgid || sys.Uid != 0 || strconv.FormatUint(uint64(sys.Gid), 10) != u.Gid {
		t.Errorf("/etc/hapbx: mode %v uid %d gid %d, want drwxr-s--- root:hapbx (gid %s)", st.Mode(), sys.Uid, sys.Gid, u.Gid)
	}

	// A secret written as the README says (install -m 600 -o hapbx) is
	// hapbx's alone: hapbx refuses secret files readable by group or
	// others, and check-config as that user reads it.
	run(t, "sh", "-c", "head -c 24 /dev/urandom | base64 | install -m 600 -o hapbx -g hapbx /dev/stdin /etc/hapbx/agent.token")
	st, err = os.Stat("/etc/hapbx/agent.token")
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o600 || strconv.FormatUint(uint64(sys.Uid), 10) != u.Uid {
		t.Errorf("/etc/hapbx/agent.token: mode %v uid %d, want 0600 owned by hapbx (uid %s)", st.Mode(), sys.Uid, u.Uid)
	}
	if out := run(t, "/usr/bin/hapbx", "check-config", "-c", "/usr/share/doc/hapbx/examples/hapbx.example.yaml"); !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Errorf("check-config of the installed proxy example: %q", out)
	}
	if out := run(t, "runuser", "-u", "hapbx", "--", "/usr/bin/hapbx", "check-config", "-c", "/usr/share/doc/hapbx/examples/hapbx-agent.example.yaml"); !strings.HasSuffix(strings.TrimSpace(out), ": ok") {
		t.Errorf("check-config of the installed agent example as hapbx: %q", out)
	}

	// Purged, nothing is left.
	purge()
	if out, _ := exec.Command("dpkg-query", "-W", "-f", "${Status}", "hapbx").Output(); strings.Contains(string(out), "installed") {
		t.Errorf("dpkg still lists hapbx after purge: %q", out)
	}
	if exec.Command("dpkg-statoverride", "--list", "/etc/hapbx").Run() == nil {
		t.Error("dpkg-statoverride for /etc/hapbx left after purge")
	}
	for p, had := range map[string]bool{"/usr/bin/hapbx": false, "/etc/hapbx": hadEtc, "/var/lib/hapbx": hadState} {
		if !had && exists(p) {
			t.Errorf("%s left after purge", p)
		}
	}
	if _, err := user.Lookup("hapbx"); !hadUser && err == nil {
		t.Error("the hapbx account is left")
	}
}

// TestLintian runs Debian's lintian on the package: no error and no
// warning (deploy/debian/lintian-overrides says why the two it overrides
// do not apply).
func TestLintian(t *testing.T) {
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Skip("lintian is not installed (apt-get install lintian): the package's lint is not checked")
	}
	deb := debFile(t)
	out, err := exec.Command("lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", deb).CombinedOutput()
	if err != nil {
		t.Errorf("lintian %s: %v\n%s", filepath.Base(deb), err, out)
	}
}
