package lab

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health/amitest"
)

// The asterisk stand-in: Debian 12 packages no Asterisk, so where none is on
// PATH the lab's Asterisk mode (Options.Asterisk: config rendering, start
// and stop by the lab or by the agents, AMI through manager.conf) runs
// against this stand-in instead. It is the test binary itself, run as
// `asterisk-standin` (see TestMain) through a wrapper script named asterisk.
// Like the real `asterisk -f -C FILE` it reads asterisk.conf and the files
// in its astetcdir, refuses to start on the mistakes that would break the
// lab against a real Asterisk, prints "Asterisk Ready." and serves:
//   - SIP on pjsip.conf's UDP transport bind, through SIPp with
//     testdata/uas_asterisk_standin.xml: OPTIONS 200; REGISTER challenged
//     (realm of pjsip.conf), a wrong password challenged again, the 200
//     listing the phone's Contact without its URI parameters, as
//     chan_pjsip's rewrite_contact=yes drops ;transport=UDP (measured on
//     Asterisk 20.20.1); an INVITE challenged (401) and answered only with
//     the digest credentials of pjsip.conf's phone accounts, else 403;
//   - AMI on manager.conf's bindaddr:port for its account (health/amitest:
//     login, Ping, FullyBooted).
//
// Each invocation is appended to astrundir/standin.calls. What it does not
// check: dialplan semantics, codecs, RTP, manager permit/deny lists.
const asteriskStandInCommand = "asterisk-standin"

// confSection is one [section] of an Asterisk .conf file.
type confSection struct {
	name, templates string // [name](templates)
	kv              [][2]string
}

func (s confSection) get(key string) string {
	for _, p := range s.kv {
		if p[0] == key {
			return p[1]
		}
	}
	return ""
}

// parseConf reads the subset of Asterisk's config syntax the lab's files
// use: ; comments, [name] and [name](template,...) headers, key = value and
// key => value lines.
func parseConf(path string) ([]confSection, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []confSection
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.Index(line, ";"); i >= 0 && (i == 0 || line[i-1] != '\\') {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.HasPrefix(line, "["):
			end := strings.Index(line, "]")
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: unterminated section header", path, n)
			}
			sec := confSection{name: line[1:end]}
			if rest := line[end+1:]; strings.HasPrefix(rest, "(") && strings.HasSuffix(rest, ")") {
				sec.templates = rest[1 : len(rest)-1]
			}
			out = append(out, sec)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("%s:%d: %q is neither a section nor key = value", path, n, line)
			}
			if len(out) == 0 {
				return nil, fmt.Errorf("%s:%d: %q outside any section", path, n, line)
			}
			v = strings.TrimPrefix(v, ">")
			out[len(out)-1].kv = append(out[len(out)-1].kv, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return out, sc.Err()
}

// standInSetup is what the stand-in serves, read from the config files.
type standInSetup struct {
	sipBind, amiAddr, amiUser, amiSecret string
	phoneUser, phoneSecret               string
	phones                               int
	runDir                               string
}

// readStandInSetup reads asterisk.conf and its pjsip.conf and manager.conf,
// and reports every problem a real Asterisk would have with them in the lab.
func readStandInSetup(conf string) (standInSetup, error) {
	var st standInSetup
	ast, err := parseConf(conf)
	if err != nil {
		return st, err
	}
	etc := filepath.Dir(conf)
	for _, s := range ast {
		if s.name == "directories" {
			if d := s.get("astetcdir"); d != "" {
				etc = d
			}
			st.runDir = s.get("astrundir")
		}
	}
	var errs []error
	pj, err := parseConf(filepath.Join(etc, "pjsip.conf"))
	if err != nil {
		return st, err
	}
	auths := map[string]confSection{}
	for _, s := range pj {
		if s.get("type") == "auth" || strings.Contains(s.templates, "phone-auth") {
			auths[s.name] = s
		}
	}
	for _, s := range pj {
		switch {
		case s.get("type") == "global":
			if o := s.get("endpoint_identifier_order"); !strings.HasPrefix(o, "username") {
				errs = append(errs, fmt.Errorf("pjsip.conf [%s]: endpoint_identifier_order %q: phones behind the proxy would match the proxy's endpoint by address", s.name, o))
			}
		case s.get("type") == "transport" && s.get("protocol") == "udp":
			st.sipBind = s.get("bind")
		case s.templates == "phone":
			st.phones++
			a, ok := auths[s.get("auth")]
			if !ok {
				errs = append(errs, fmt.Errorf("pjsip.conf endpoint [%s]: auth %q is not defined", s.name, s.get("auth")))
				continue
			}
			u, p := a.get("username"), a.get("password")
			if st.phoneUser == "" {
				st.phoneUser, st.phoneSecret = u, p
			} else if u != st.phoneUser || p != st.phoneSecret {
				errs = append(errs, fmt.Errorf("pjsip.conf auth [%s]: the stand-in's SIPp checks one credential pair for every phone", a.name))
			}
		}
	}
	if st.sipBind == "" || strings.HasPrefix(st.sipBind, "0.0.0.0") {
		errs = append(errs, fmt.Errorf("pjsip.conf: UDP transport bind %q: want the node's own address", st.sipBind))
	}
	if st.phones == 0 {
		errs = append(errs, errors.New("pjsip.conf: no phone endpoints"))
	}
	mg, err := parseConf(filepath.Join(etc, "manager.conf"))
	if err != nil {
		return st, err
	}
	for _, s := range mg {
		if s.name == "general" {
			if s.get("enabled") != "yes" {
				errs = append(errs, errors.New("manager.conf [general]: enabled is not yes: no AMI"))
			}
			st.amiAddr = s.get("bindaddr") + ":" + s.get("port")
		} else if st.amiUser == "" {
			st.amiUser, st.amiSecret = s.name, s.get("secret")
			if !strings.Contains(s.get("read"), "system") {
				errs = append(errs, fmt.Errorf("manager.conf [%s]: read %q lacks system: no FullyBooted event", s.name, s.get("read")))
			}
		}
	}
	if st.amiUser == "" || st.amiSecret == "" {
		errs = append(errs, errors.New("manager.conf: no account with a secret"))
	}
	return st, errors.Join(errs...)
}

// asteriskStandInMain is `asterisk-standin -f -C FILE`; it returns the exit code.
func asteriskStandInMain(args []string, stdout, stderr io.Writer) int {
	// sipp is killed with this thread (Pdeathsig): keep the thread alive.
	runtime.LockOSThread()
	fs := flag.NewFlagSet("asterisk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Bool("f", false, "foreground (the stand-in always is)")
	conf := fs.String("C", "/etc/asterisk/asterisk.conf", "asterisk.conf")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	st, err := readStandInSetup(*conf)
	if st.runDir != "" {
		if f, ferr := os.OpenFile(filepath.Join(st.runDir, "standin.calls"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); ferr == nil {
			fmt.Fprintf(f, "%s asterisk %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "ERROR[%d]: config: %v\n", os.Getpid(), err)
		return 1
	}
	tmpl, err := os.ReadFile(os.Getenv("HAPBX_STANDIN_UAS"))
	if err != nil {
		fmt.Fprintf(stderr, "ERROR: the stand-in's SIPp scenario ($HAPBX_STANDIN_UAS): %v\n", err)
		return 2
	}
	scen := filepath.Join(st.runDir, "uas.xml")
	body := strings.NewReplacer(`username="phones"`, fmt.Sprintf("username=%q", st.phoneUser),
		`password="secretphones"`, fmt.Sprintf("password=%q", st.phoneSecret)).Replace(string(tmpl))
	if err := os.WriteFile(scen, []byte(body), 0o644); err != nil {
		fmt.Fprintf(stderr, "ERROR: %v\n", err)
		return 1
	}
	host, port, _ := strings.Cut(st.sipBind, ":")
	if port == "" {
		port = "5060"
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	ami, err := amitest.Start(st.amiAddr, st.amiUser, st.amiSecret)
	if err != nil {
		fmt.Fprintf(stderr, "ERROR: manager: %v\n", err)
		return 1
	}
	defer ami.Close()
	sipp := exec.Command("sipp", "-sf", scen, "-i", host, "-p", port, "-nostdin")
	sipp.Dir, sipp.Stdout, sipp.Stderr = st.runDir, stderr, stderr
	sipp.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sipp.Start(); err != nil {
		fmt.Fprintf(stderr, "ERROR: chan_pjsip (sipp): %v\n", err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- sipp.Wait() }()
	fmt.Fprintf(stdout, "Asterisk Ready. (stand-in: SIP on %s, %d phones, AMI %s on %s)\n", st.sipBind, st.phones, st.amiUser, ami.Addr())
	select {
	case <-ch:
		_ = sipp.Process.Kill()
		<-exited
		return 0
	case err := <-exited:
		fmt.Fprintf(stderr, "ERROR: chan_pjsip (sipp) exited: %v\n", err)
		return 1
	}
}

// asteriskStandIn writes the wrapper script that runs this test binary as
// the asterisk stand-in and returns its path.
func asteriskStandIn(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uas, err := filepath.Abs(filepath.Join("testdata", "uas_asterisk_standin.xml"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "asterisk")
	script := fmt.Sprintf("#!/bin/sh\nHAPBX_STANDIN_UAS=%q exec %q %s \"$@\"\n", uas, self, asteriskStandInCommand)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAsteriskConfigs renders deploy/asterisk for the lab and has the
// stand-in read it as Asterisk would: every lab phone an account with the
// phones' credentials, the transport on the node's address, the AMI account
// with the lab's secret on the node's address; and the example accounts
// and addresses of the shipped files gone.
func TestAsteriskConfigs(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{opt: Options{Root: "../..", Dir: dir}}
	if _, err := l.amiSecretFile(); err != nil {
		t.Fatal(err)
	}
	conf, err := l.writeAsterisk("pbx2")
	if err != nil {
		t.Fatal(err)
	}
	st, err := readStandInSetup(conf)
	if err != nil {
		t.Fatalf("rendered config: %v", err)
	}
	phones, err := l.labPhones()
	if err != nil || len(phones) != 20 {
		t.Fatalf("lab phones: %v %v", phones, err)
	}
	want := standInSetup{sipBind: Hosts["pbx2"] + ":5060", amiAddr: amiAddr("pbx2"), amiUser: AMIUser, amiSecret: "lab-ami-secret",
		phoneUser: PhoneUser, phoneSecret: PhoneSecret, phones: len(phones), runDir: filepath.Join(dir, "asterisk-pbx2", "run")}
	if st != want {
		t.Errorf("stand-in reads\n%+v\nwant\n%+v", st, want)
	}
	pj, _ := os.ReadFile(filepath.Join(dir, "asterisk-pbx2", "pjsip.conf"))
	for _, bad := range []string{"192.0.2.", "change-me"} {
		if strings.Contains(string(pj), bad) {
			t.Errorf("pjsip.conf still has the example %q", bad)
		}
	}
	for _, good := range []string{"match=" + VIP, "match=" + Hosts["proxy1"], "match=" + Hosts["proxy2"], "[220](phone)", "outbound_proxy=sip:" + VIP} {
		if !strings.Contains(string(pj), good) {
			t.Errorf("pjsip.conf lacks %q", good)
		}
	}
	// A broken file is refused as Asterisk would refuse to serve it.
	if err := os.WriteFile(filepath.Join(dir, "asterisk-pbx2", "manager.conf"), []byte("[general]\nenabled = no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readStandInSetup(conf); err == nil || !strings.Contains(err.Error(), "enabled is not yes") {
		t.Errorf("manager disabled: %v", err)
	}
}

// TestE2EAsteriskStandIn runs the demo's cold-standby scenario with the
// lab in Asterisk mode against the stand-in: the agents start `asterisk
// -f -C ...` with the files rendered from deploy/asterisk, the proxies and
// agents log in to the AMI account of manager.conf, and every call is
// challenged and authenticated with the credentials of pjsip.conf. The
// assertions are TestE2ECold's. Skipped where a real asterisk runs the
// e2e tests instead.
func TestE2EAsteriskStandIn(t *testing.T) {
	if real, _ := exec.LookPath("asterisk"); real != "" || os.Getenv("HAPBX_ASTERISK") != "" {
		t.Skip("a real asterisk is available: TestE2E and TestE2ECold run against it")
	}
	l := newLab(t, Options{Cold: true, Asterisk: asteriskStandIn(t)})
	runCold(t, l)
	for _, be := range Backends {
		b, err := os.ReadFile(filepath.Join(l.Dir(), "asterisk-"+be, "run", "standin.calls"))
		if err != nil || !strings.Contains(string(b), "asterisk -f -C "+filepath.Join(l.Dir(), "asterisk-"+be, "asterisk.conf")) {
			t.Errorf("%s: the agent never ran asterisk -f -C with the rendered config: %v\n%s", be, err, b)
		}
	}
}
