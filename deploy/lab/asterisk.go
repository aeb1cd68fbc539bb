package lab

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Real Asterisk as the lab's PBX (Options.Asterisk): each PBX namespace runs
// `asterisk -f -C DIR/asterisk.conf` with the operators' files of
// deploy/asterisk, rendered for the lab's addresses and phones. Its own
// manager (manager.conf) is the AMI the proxies' health check and the agents'
// readiness check log in to, exactly as on a deployed node.
const (
	// PhoneUser and PhoneSecret are the digest credentials every lab phone
	// uses (testdata/phones_register.xml, uac_call_lab.xml): one SIPp
	// instance cannot take credentials per phone from its -inf file.
	PhoneUser   = "phones"
	PhoneSecret = "secretphones"
)

// Addresses in deploy/asterisk's files and what they stand for in the lab.
var asteriskExampleAddrs = map[string]string{
	"192.0.2.10": VIP,
	"192.0.2.11": Hosts["proxy1"],
	"192.0.2.12": Hosts["proxy2"],
}

// exampleAccount matches a section of one of deploy/asterisk's example phone
// accounts ([201](phone), [202](phone-auth), ...): the lab writes its own.
var exampleAccount = regexp.MustCompile(`^\[[0-9]+\]`)

// nodeFiles are deploy/asterisk's files every node gets as shipped: without
// them Asterisk logs an ERROR at start (ASTERISK-NOTES).
var nodeFiles = []string{"extensions.conf", "cdr.conf", "cel.conf", "features.conf", "acl.conf", "udptl.conf", "pjproject.conf", "indications.conf"}

// AsteriskConfigs renders the configuration of PBX host be from
// deploy/asterisk for the lab's channel driver (Options.ChanSIP): pjsip.conf
// or sip.conf, and manager.conf, with the lab's VIP, proxy and host
// addresses, an account for every lab phone (testdata/phones.csv) instead
// of the examples, the lab's AMI secret; extensions.conf with [globals] set
// and modules.conf set for the driver; the other files of nodeFiles as
// shipped; and the files a node has anyway (asterisk.conf with the
// directories under etc, logger.conf). File name -> content.
func (l *Lab) AsteriskConfigs(be, etc string) (map[string]string, error) {
	src := filepath.Join(l.opt.Root, "deploy", "asterisk")
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", fmt.Errorf("lab: asterisk config: %w", err)
		}
		s := string(b)
		for ex, addr := range asteriskExampleAddrs {
			s = strings.ReplaceAll(s, ex, addr)
		}
		return s, nil
	}
	phones, err := l.labPhones()
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, name := range nodeFiles {
		if files[name], err = read(name); err != nil {
			return nil, err
		}
	}
	modules, err := read("modules.conf")
	if err != nil {
		return nil, err
	}
	// The driver's file, bound to the node's address, with the lab's phones
	// instead of the examples.
	conf, bind := "pjsip.conf", "bind="
	note := "one shared digest user"
	account := "\n[%[1]s](phone)\naors=%[1]s\nauth=%[1]s\ncallerid=\"Lab %[1]s\" <%[1]s>\n[%[1]s](phone-aor)\n[%[1]s](phone-auth)\nusername=%[2]s\npassword=%[3]s\n"
	if l.opt.ChanSIP {
		conf, bind = "sip.conf", "udpbindaddr="
		note = "chan_sip takes the peer's name as the digest user"
		account = "\n[%[1]s](phone)\nsecret=%[3]s\ncallerid=\"Lab %[1]s\" <%[1]s>\n"
		modules = chanSIPModules(modules)
		files["extensions.conf"] = chanSIPGlobals(files["extensions.conf"])
	}
	text, err := read(conf)
	if err != nil {
		return nil, err
	}
	text = strings.Replace(text, bind+"0.0.0.0:5060", fmt.Sprintf("%s%s:%d", bind, Hosts[be], SIPPort), 1)
	var b strings.Builder
	b.WriteString(strings.TrimRight(dropSections(text, exampleAccount), "\n"))
	fmt.Fprintf(&b, "\n\n; The lab's phones (testdata/phones.csv), %s.\n", note)
	for _, ext := range phones {
		fmt.Fprintf(&b, account, ext, PhoneUser, PhoneSecret)
	}
	files[conf] = b.String()
	manager, err := read("manager.conf")
	if err != nil {
		return nil, err
	}
	secret, err := os.ReadFile(filepath.Join(l.opt.Dir, "ami.secret"))
	if err != nil {
		return nil, fmt.Errorf("lab: AMI secret: %w", err)
	}
	manager = strings.Replace(manager, "bindaddr = 0.0.0.0", "bindaddr = "+Hosts[be], 1)
	manager = strings.Replace(manager, "secret = change-me-ami", "secret = "+strings.TrimSpace(string(secret)), 1)
	// The agent checks readiness from the node itself, on the node's address.
	manager = strings.Replace(manager, "permit = 127.0.0.1/255.255.255.255",
		"permit = 127.0.0.1/255.255.255.255\npermit = "+Hosts[be]+"/255.255.255.255", 1)
	if !strings.Contains(manager, "\n["+AMIUser+"]") {
		return nil, fmt.Errorf("lab: deploy/asterisk/manager.conf has no [%s] account", AMIUser)
	}
	files["manager.conf"] = manager
	run := filepath.Join(etc, "run")
	files["asterisk.conf"] = fmt.Sprintf("[directories]\nastetcdir => %[1]s\nastrundir => %[2]s\nastlogdir => %[2]s\nastspooldir => %[2]s\nastdbdir => %[2]s\n"+
		"\n[options]\nverbose = 1\n", etc, run)
	files["modules.conf"] = modules
	files["logger.conf"] = "[general]\n\n[logfiles]\nconsole => notice,warning,error\n"
	return files, nil
}

// chanSIPGlobals switches extensions.conf's [globals] from the PJSIP lines
// to the SIP ones, as its comments tell the operator to.
func chanSIPGlobals(ext string) string {
	lines := strings.Split(ext, "\n")
	for i, line := range lines {
		switch line {
		case "PHONE_PREFIX=PJSIP/", "PHONE_SUFFIX=@hapbx":
			lines[i] = ";" + line
		case ";PHONE_PREFIX=SIP/hapbx/", ";PHONE_SUFFIX=":
			lines[i] = line[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// chanSIPModules switches modules.conf to a chan_sip node, as its comments
// tell the operator to.
func chanSIPModules(conf string) string {
	lines := strings.Split(conf, "\n")
	for i, line := range lines {
		switch {
		case line == "noload => chan_sip.so":
			lines[i] = ";" + line
		case strings.HasPrefix(line, ";noload => "):
			lines[i] = line[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// dropSections removes every section whose header line matches re, with
// its body, from an Asterisk .conf file.
func dropSections(conf string, re *regexp.Regexp) string {
	var out []string
	skip := false
	for _, line := range strings.Split(conf, "\n") {
		if strings.HasPrefix(line, "[") {
			skip = re.MatchString(line)
		}
		if !skip {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// labPhones lists the phones' extensions from testdata/phones.csv.
func (l *Lab) labPhones() ([]string, error) {
	f, err := os.Open(l.Scenario("phones.csv"))
	if err != nil {
		return nil, fmt.Errorf("lab: phones: %w", err)
	}
	defer f.Close()
	var exts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line == "SEQUENTIAL" || line == "RANDOM" || strings.HasPrefix(line, "#") {
			continue
		}
		exts = append(exts, strings.TrimSuffix(strings.SplitN(line, ";", 2)[0], ";"))
	}
	return exts, sc.Err()
}

// writeAsterisk renders backend be's configuration into Dir/asterisk-<be>
// and returns the path of its asterisk.conf.
func (l *Lab) writeAsterisk(be string) (string, error) {
	if _, err := l.amiSecretFile(); err != nil {
		return "", err
	}
	etc := filepath.Join(l.opt.Dir, "asterisk-"+be)
	if err := os.MkdirAll(filepath.Join(etc, "run"), 0o755); err != nil {
		return "", err
	}
	files, err := l.AsteriskConfigs(be, etc)
	if err != nil {
		return "", err
	}
	for name, c := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(c), 0o644); err != nil {
			return "", err
		}
	}
	return filepath.Join(etc, "asterisk.conf"), nil
}

// pbxStartCommand is the shell command an agent's service runs to start
// backend be's PBX in the background, its pids appended to pids: asterisk,
// or SIPp and the lab's AMI server.
func (l *Lab) pbxStartCommand(be, pids string) (string, error) {
	if l.opt.Asterisk != "" {
		conf, err := l.writeAsterisk(be)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s -f -C %s >%s 2>&1 </dev/null & echo $! >%s",
			l.opt.Asterisk, conf, filepath.Join(l.opt.Dir, "svc-"+be+"-asterisk.log"), pids), nil
	}
	secret := filepath.Join(l.opt.Dir, "ami.secret")
	return fmt.Sprintf("sipp -sf %s -i %s -p %d -nostdin >%s 2>&1 </dev/null & echo $! >%s; "+
		"%s %s -listen %s -user %s -secret-file %s >%s 2>&1 </dev/null & echo $! >>%s",
		l.Scenario("uas_lab.xml"), Hosts[be], SIPPort, filepath.Join(l.opt.Dir, "svc-"+be+"-sipp.log"), pids,
		l.opt.Self, AMIServerCommand, amiAddr(be), AMIUser, secret, filepath.Join(l.opt.Dir, "svc-"+be+"-ami.log"), pids), nil
}
