package lab

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hapbx/hapbx/health/amitest"
)

// AMI of the lab's SIPp backends: each PBX namespace runs an Asterisk
// Manager Interface server on its own address beside the SIPp UAS, so the
// proxies' health check needs SIP and AMI (FullyBooted) as with Asterisk.
const (
	AMIPort = 5038
	AMIUser = "hapbx"
	// AMIServerCommand is the hidden subcommand of the lab's driver binary
	// (bin/hapbx-demo, and the lab's test binary) that runs AMIServerMain.
	AMIServerCommand = "ami-server"
)

// AMIServerMain is `ami-server -listen IP:PORT -user U -secret-file F`: an
// AMI server (health/amitest's wire protocol: banner, Login,
// Ping, FullyBooted, ActionID echo) that runs until SIGTERM or SIGINT. It
// returns the process's exit code.
func AMIServerMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(AMIServerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:5038", "address to listen on")
	user := fs.String("user", AMIUser, "manager username")
	secretFile := fs.String("secret-file", "", "file holding the manager secret")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := os.ReadFile(*secretFile)
	if err != nil {
		fmt.Fprintf(stderr, "ami-server: -secret-file: %v\n", err)
		return 2
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	s, err := amitest.Start(*listen, *user, strings.TrimRight(string(b), "\r\n"))
	if err != nil {
		fmt.Fprintf(stderr, "ami-server: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "ami-server: listening on %s (%s)\n", s.Addr(), amitest.Banner)
	<-ch
	s.Close()
	return 0
}

// amiSecretFile writes (once) the backends' AMI secret and returns its path.
func (l *Lab) amiSecretFile() (string, error) {
	p := filepath.Join(l.opt.Dir, "ami.secret")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return p, os.WriteFile(p, []byte("lab-ami-secret\n"), 0o600)
}

// amiAddr is where backend be's AMI server listens.
func amiAddr(be string) string { return fmt.Sprintf("%s:%d", Hosts[be], AMIPort) }

// withAMI reports whether the backends have an AMI: a real asterisk's
// manager (manager.conf), or the lab's own server beside SIPp.
func (l *Lab) withAMI() bool { return l.opt.Asterisk != "" || l.opt.Self != "" }

// startAMI runs the AMI server of backend be in its namespace and waits
// until it accepts connections.
func (l *Lab) startAMI(be string) (*Proc, error) {
	secret, err := l.amiSecretFile()
	if err != nil {
		return nil, err
	}
	name := be + "-ami"
	p, err := l.Start(NS(be), name, l.opt.Self, AMIServerCommand, "-listen", amiAddr(be), "-user", AMIUser, "-secret-file", secret)
	if err != nil {
		return nil, err
	}
	err = WaitFor(5*time.Second, name+" listening", func() bool {
		if p.Exited() {
			return true
		}
		out, _ := runOut("ip", "netns", "exec", NS(be), "ss", "-Hltn", "sport", fmt.Sprintf("= :%d", AMIPort))
		return strings.TrimSpace(out) != ""
	})
	if p.Exited() {
		return nil, fmt.Errorf("%s exited:\n%s", name, p.Log(2000))
	}
	return p, err
}

// KillBackend SIGKILLs backend be: its PBX (SIPp or asterisk) and its AMI server.
func (l *Lab) KillBackend(be string) {
	l.Kill(be)
	l.Kill(be + "-ami")
}
