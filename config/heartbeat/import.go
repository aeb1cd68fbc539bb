package heartbeat

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Options says where the Heartbeat files are and what they cannot tell.
type Options struct {
	// HaDir holds ha.cf, authkeys, haresources and resource.d
	// (default /etc/ha.d).
	HaDir string
	// DRBDConf is drbd.conf (default /etc/drbd.conf); needed when
	// haresources has a drbddisk resource.
	DRBDConf string
	// Node is the node the files are written for (one of ha.cf's node
	// lines); both nodes get their own pair of files.
	Node string
	// Addresses gives node addresses drbd.conf does not (node name -> IP).
	Addresses map[string]netip.Addr
	// Witness is the third voter's address; unset, a documentation
	// address (192.0.2.20) is written and Result.Todo says so.
	Witness netip.Addr
	// SecretsDir is where the generated files expect the secret files
	// (default /etc/hapbx).
	SecretsDir string
}

// Result is the generated configuration and what the operator must know.
type Result struct {
	// Proxy is hapbx.yaml for Options.Node.
	Proxy []byte
	// Agent is the PBX node's agent file (hapbx-agent.yaml); nil when
	// haresources has no DRBD resource (no cold standby).
	Agent []byte
	// Secrets are the files the generated configuration names and the
	// operator must create (never copied from Heartbeat's files).
	Secrets []Secret
	// Skipped lists every directive or resource that was not imported.
	Skipped []Finding
	// Todo lists what the import could not decide.
	Todo []string
}

// Secret is a file to create before the first start.
type Secret struct {
	Path string
	// What it holds and how to make it.
	What string
	// Proxy and Agent say which generated file names it.
	Proxy, Agent bool
}

// Finding is a directive that was not imported, where it was and why.
type Finding struct {
	At        string // FILE:LINE
	Directive string
	Reason    string
}

func (f Finding) String() string { return f.At + ": " + f.Directive + ": " + f.Reason }

// ErrInput is wrapped by every error about the Heartbeat files themselves.
var ErrInput = errors.New("cannot import")

// Ports hapbx uses on a node: Asterisk moves off 5060, which the proxy takes.
const (
	asteriskPort = 5080
	agentPort    = 7790
	gossipPort   = 7946
	raftPort     = 7947
	adminPort    = 9060
)

// placeholderWitness is TEST-NET-1 (RFC 5737): valid, never routed, so a
// forgotten witness address shows as an unreachable voter, not a stranger.
var placeholderWitness = netip.MustParseAddr("192.0.2.20")

// Import reads the Heartbeat pair's files and generates hapbx's.
func Import(o Options) (Result, error) {
	if o.HaDir == "" {
		o.HaDir = "/etc/ha.d"
	}
	if o.DRBDConf == "" {
		o.DRBDConf = "/etc/drbd.conf"
	}
	if o.SecretsDir == "" {
		o.SecretsDir = "/etc/hapbx"
	}
	p := &plan{opts: o, addr: map[string]netip.Addr{}, addrAt: map[string]string{}, fence: map[string]fence{}, nodeAt: map[string]string{}}
	hacf, err := readLines(filepath.Join(o.HaDir, "ha.cf"), "ha.cf", true)
	if err != nil {
		return Result{}, err
	}
	p.readHaCf(hacf)
	if p.Ipfail != nil && len(p.Pings) == 0 {
		p.skip(*p.Ipfail, "ipfail without ping nodes compared nothing")
		p.Ipfail = nil
	}
	if len(p.nodes) != 2 {
		return Result{}, fmt.Errorf("%w: ha.cf: %d node lines (%s): hapbx imports a pair of two nodes", ErrInput, len(p.nodes), strings.Join(p.nodes, ", "))
	}
	if o.Node == "" || !slices.Contains(p.nodes, o.Node) {
		return Result{}, fmt.Errorf("%w: node %q is not one of ha.cf's nodes (%s)", ErrInput, o.Node, strings.Join(p.nodes, ", "))
	}
	keys, err := readLines(filepath.Join(o.HaDir, "authkeys"), "authkeys", false)
	if err != nil {
		return Result{}, err
	}
	p.readAuthkeys(keys)
	res, err := readLines(filepath.Join(o.HaDir, "haresources"), "haresources", true)
	if err != nil {
		return Result{}, err
	}
	if err := p.readHaresources(res); err != nil {
		return Result{}, err
	}
	if err := p.readDRBD(); err != nil {
		return Result{}, err
	}
	if err := p.resolveAddresses(); err != nil {
		return Result{}, err
	}
	p.planFencing()
	return p.render()
}

func readLines(path, name string, required bool) ([]Line, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInput, name, err)
	}
	return parseLines(name, data), nil
}

// plan is what the files said, ready to be written out. Its fields are
// exported for the templates only.
type plan struct {
	opts  Options
	nodes []string
	// nodeAt is where each node line was.
	nodeAt map[string]string
	// Preferred is haresources' first word; GroupAt its line.
	Preferred, GroupAt string
	addr               map[string]netip.Addr
	addrAt             map[string]string // where each address came from

	VIP      netip.Prefix
	VIPAt    string
	Nic      string
	VIPGuess []string // what the IPaddr line left out and was assumed

	DRBDName, DRBDAt string
	DRBD             *DRBDResource
	FS               *filesystem
	services         []service

	failback   *bool
	FailbackAt string
	timing     []Line // keepalive, deadtime, warntime, initdead
	transport  []Line // udpport, bcast, mcast, ucast
	logging    []Line
	Debug      bool
	Pings      []string
	pingLines  []Line
	Ipfail     *Line

	stonith    []Line // stonith and stonith_host lines
	fence      map[string]fence
	AuthAt     string
	AuthMethod string
	clusterKey string
	Skipped    []Finding
	Todo       []string
	Secrets    []Secret
}

type filesystem struct {
	At, Device, MountPoint, Type, Options string
}

type service struct {
	At, Name string
	Args     []string
	Script   string // Heartbeat's resource.d script; "" means a systemd unit
}

type fence struct {
	Command, At string
}

func (p *plan) skip(l Line, reason string) {
	p.Skipped = append(p.Skipped, Finding{At: l.At(), Directive: l.Text(), Reason: reason})
}

// secret registers a secret file named in the proxy's file, the agent's
// or both, and returns its path.
func (p *plan) secret(name, what string, proxy, agent bool) string {
	path := filepath.Join(p.opts.SecretsDir, name)
	for i := range p.Secrets {
		if p.Secrets[i].Path == path {
			p.Secrets[i].Proxy = p.Secrets[i].Proxy || proxy
			p.Secrets[i].Agent = p.Secrets[i].Agent || agent
			return path
		}
	}
	p.Secrets = append(p.Secrets, Secret{Path: path, What: what, Proxy: proxy, Agent: agent})
	return path
}

// ignored are ha.cf directives hapbx has no use for: they tuned
// Heartbeat's own transport or process and have no effect on what the pair
// does.
var ignored = map[string]string{
	"compression":             "Heartbeat's message compression: hapbx's cluster messages are small",
	"compression_threshold":   "Heartbeat's message compression: hapbx's cluster messages are small",
	"traditional_compression": "Heartbeat's message compression: hapbx's cluster messages are small",
	"coredumps":               "systemd's LimitCORE and coredumpctl decide",
	"realtime":                "hapbx runs at normal priority",
	"rtprio":                  "hapbx runs at normal priority",
	"hopfudge":                "Heartbeat's ring transport only",
	"msgfmt":                  "Heartbeat's wire format",
	"apiauth":                 "Heartbeat's client API; hapbx's admin API uses admin.token_file",
	"conn_logd_time":          "no logging daemon: hapbx logs to journald",
	"max_rexmit_delay":        "Heartbeat's retransmission; memberlist and raft retransmit themselves",
	"log_badpack":             "hapbx logs what it refuses",
	"uuidfrom":                "hapbx names nodes by node.name",
	"autojoin":                "cluster.peers is a fixed list of voters",
	"deadping":                "cluster.ping_timeout (500ms) bounds one ping target check",
}

func (p *plan) readHaCf(lines []Line) {
	for _, l := range lines {
		w := l.Words
		arg := ""
		if len(w) > 1 {
			arg = strings.ToLower(w[1])
		}
		switch w[0] {
		case "node":
			for _, n := range w[1:] {
				if !slices.Contains(p.nodes, n) {
					p.nodes = append(p.nodes, n)
					p.nodeAt[n] = l.At()
				}
			}
		case "keepalive", "deadtime", "warntime", "initdead":
			p.timing = append(p.timing, l)
		case "udpport", "bcast", "mcast", "ucast", "mcast6":
			p.transport = append(p.transport, l)
		case "auto_failback":
			switch arg {
			case "on", "yes", "true", "1":
				p.setFailback(true, l)
			case "off", "no", "false", "0":
				p.setFailback(false, l)
			case "legacy":
				p.setFailback(false, l)
				p.skip(l, "legacy (failback only when the other node has no nice_failback) has no equivalent: imported as off")
			default:
				p.skip(l, "not on, off or legacy")
			}
		case "nice_failback":
			p.setFailback(!(arg == "on" || arg == "yes"), l)
		case "ping":
			for _, h := range w[1:] {
				p.Pings = append(p.Pings, pingTarget(h))
			}
			p.pingLines = append(p.pingLines, l)
		case "ping_group":
			if len(w) < 3 {
				p.skip(l, "ping_group needs a name and hosts")
				continue
			}
			for _, h := range w[2:] {
				p.Pings = append(p.Pings, pingTarget(h))
			}
			p.pingLines = append(p.pingLines, l)
		case "respawn":
			if len(w) >= 3 && filepath.Base(w[2]) == "ipfail" {
				l := l
				p.Ipfail = &l
				continue
			}
			p.skip(l, "hapbx starts no other programs: run it as its own systemd unit (Restart=always)")
		case "stonith", "stonith_host":
			p.stonith = append(p.stonith, l)
		case "crm":
			switch arg {
			case "off", "no", "false":
			default:
				p.skip(l, "Heartbeat took its resources from the CIB (cib.xml), not haresources: the import read haresources; compare it with the CIB (crm_mon, cibadmin -Q) before use")
			}
		case "logfacility", "logfile", "debugfile", "use_logd":
			p.logging = append(p.logging, l)
		case "debug":
			if n, err := strconv.Atoi(arg); err == nil && n > 0 {
				p.Debug = true
			}
			p.logging = append(p.logging, l)
		case "watchdog":
			p.skip(l, "no hardware watchdog: the systemd units restart hapbx (Restart=on-failure); a hung host is fenced by the other node (fence commands)")
		case "baud", "serial":
			p.skip(l, "serial heartbeat: hapbx's cluster talks over IP only; a third voter (the witness) replaces the second path's tie-breaking")
		default:
			if why, ok := ignored[w[0]]; ok {
				p.skip(l, "no hapbx equivalent needed ("+why+")")
			} else {
				p.skip(l, "unknown directive: not imported")
			}
		}
	}
}

func (p *plan) setFailback(v bool, l Line) {
	p.failback = &v
	p.FailbackAt = l.At() + " `" + l.Text() + "`"
}

// pingTarget turns a Heartbeat ping node (ICMP) into a TCP target: a
// refused connection counts as reached, so port 80 works on most routers.
func pingTarget(h string) string {
	if ip, err := netip.ParseAddr(h); err == nil && ip.Is6() {
		return "[" + h + "]:80"
	}
	return h + ":80"
}

func (p *plan) readAuthkeys(lines []Line) {
	if lines == nil {
		p.Todo = append(p.Todo, "authkeys not found: create the cluster key as listed under secrets")
	}
	active := ""
	for _, l := range lines {
		switch {
		case l.Words[0] == "auth" && len(l.Words) == 2:
			active = l.Words[1]
			p.AuthAt = l.At()
		case len(l.Words) >= 2 && l.Words[0] == active:
			p.AuthMethod = l.Words[1]
		case len(l.Words) >= 2:
			// Other numbered keys: unused by Heartbeat unless auth names them.
		default:
			p.skip(Line{File: l.File, Num: l.Num, Words: l.Words[:1]}, "not an authkeys line")
		}
	}
	what := "the cluster's key (authkeys' role; its secret is not copied): base64 of 16, 24 or 32 random bytes, `head -c 32 /dev/urandom | base64`; the same file on both proxies and the witness; root:hapbx 0640"
	if p.AuthMethod == "crc" {
		what += " (authkeys used crc: Heartbeat's messages were not authenticated at all)"
	}
	p.clusterKey = p.secret("cluster.key", what, true, false)
}

// knownUnsupported are Heartbeat resource agents that are not a service
// the PBX node runs: listed, not imported.
var knownUnsupported = map[string]string{
	"MailTo":       "hapbx sends no mail: alert on its metrics (deploy/prometheus/hapbx-rules.yml) instead",
	"SendArp":      "the VIP holder sends gratuitous ARP itself (cluster.vip.garp_count)",
	"IPsrcaddr":    "hapbx does not change the node's source address",
	"IPv6addr":     "give an IPv6 VIP as the IPaddr resource's address instead",
	"Delay":        "the agent waits for Asterisk's readiness (agent.ready_timeout), not a fixed delay",
	"portblock":    "no port blocking during moves",
	"AudibleAlarm": "hapbx has no alarm: alert on its metrics",
	"LVM":          "the agent drives one DRBD resource and one file system",
	"Raid1":        "the agent drives one DRBD resource and one file system",
	"LinuxSCSI":    "the agent drives one DRBD resource and one file system",
	"ServeRAID":    "the agent drives one DRBD resource and one file system",
	"Xinetd":       "not a service hapbx starts",
	"WinPopup":     "hapbx sends no messages: alert on its metrics",
	"ICP":          "the agent drives one DRBD resource and one file system",
	"WAS":          "not a service hapbx starts",
	"OCF":          "OCF resource agents are not run by hapbx",
}

func (p *plan) readHaresources(lines []Line) error {
	if len(lines) == 0 {
		return fmt.Errorf("%w: haresources has no resource group: hapbx needs the IPaddr line's VIP", ErrInput)
	}
	g := lines[0]
	for _, l := range lines[1:] {
		p.skip(l, "a second resource group: hapbx moves one group (the first line's); run the other service on its own or merge the groups")
	}
	p.Preferred, p.GroupAt = g.Words[0], g.At()
	if !slices.Contains(p.nodes, p.Preferred) {
		p.Todo = append(p.Todo, fmt.Sprintf("%s: the group's node %q is not one of ha.cf's nodes (%s): %s (ha.cf's first node) is taken as the preferred one",
			g.At(), p.Preferred, strings.Join(p.nodes, ", "), p.nodes[0]))
		p.Preferred = p.nodes[0]
	}
	storageSeen := false
	serviceBefore := ""
	for _, r := range g.Words[1:] {
		typ, args := splitResource(r)
		rl := Line{File: g.File, Num: g.Num, Words: []string{r}}
		switch typ {
		case "IPaddr", "IPaddr2":
			if p.VIP.IsValid() {
				p.skip(rl, "hapbx holds one VIP ("+p.VIP.String()+"): move what used this address to it, or add the address to the interface by other means")
				continue
			}
			if err := p.readVIP(rl, args); err != nil {
				return err
			}
		case "drbddisk", "drbdupper":
			if p.DRBDAt != "" {
				p.skip(rl, "a second DRBD resource: the agent drives one")
				continue
			}
			p.DRBDName, p.DRBDAt = "all", rl.At()
			if len(args) > 0 {
				p.DRBDName = args[0]
			}
			storageSeen = true
		case "Filesystem":
			if p.FS != nil {
				p.skip(rl, "a second file system: the agent mounts one")
				continue
			}
			if len(args) < 3 {
				return fmt.Errorf("%w: %s: %s: want Filesystem::DEVICE::MOUNTPOINT::TYPE", ErrInput, rl.At(), r)
			}
			p.FS = &filesystem{At: rl.At() + " `" + r + "`", Device: args[0], MountPoint: args[1], Type: args[2]}
			if len(args) > 3 {
				p.FS.Options = strings.Join(args[3:], ",")
			}
			storageSeen = true
		default:
			if why, ok := knownUnsupported[typ]; ok {
				p.skip(rl, why)
				continue
			}
			if serviceBefore == "" && !storageSeen {
				serviceBefore = r
			}
			s := service{At: rl.At(), Name: typ, Args: args}
			script := filepath.Join(p.opts.HaDir, "resource.d", typ)
			if st, err := os.Stat(script); err == nil && !st.IsDir() {
				s.Script = script
			} else if len(args) > 0 {
				p.skip(rl, "arguments of a service that is not a script in resource.d: the systemd unit "+typ+".service is started without them")
			}
			p.services = append(p.services, s)
		}
	}
	if !p.VIP.IsValid() {
		return fmt.Errorf("%w: %s: no IPaddr or IPaddr2 resource: hapbx needs the VIP phones use", ErrInput, g.At())
	}
	if serviceBefore != "" && storageSeen {
		p.Todo = append(p.Todo, fmt.Sprintf("%s: %s started before the DRBD disk or file system; the agent starts DRBD, the file system, then the service(s): check it does not need the replica unmounted", g.At(), serviceBefore))
	}
	if p.FS != nil && p.DRBDAt == "" {
		p.Todo = append(p.Todo, fmt.Sprintf("%s: a file system without drbddisk: the agent needs a DRBD resource; it was taken from drbd.conf's resource of device %s", p.FS.At, p.FS.Device))
	}
	return nil
}

// splitResource splits "Filesystem::/dev/drbd0::/replica::ext3".
func splitResource(r string) (string, []string) {
	parts := strings.Split(r, "::")
	return parts[0], parts[1:]
}

// readVIP reads IPaddr::IP[/BITS[/NIC[/BROADCAST]]] (the netmask may be
// dotted) or the same as separate :: arguments.
func (p *plan) readVIP(l Line, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: %s: %s has no address", ErrInput, l.At(), l.Text())
	}
	f := strings.Split(args[0], "/")
	f = append(f, args[1:]...)
	ip, err := netip.ParseAddr(f[0])
	if err != nil {
		return fmt.Errorf("%w: %s: %s: %q is not an IP address", ErrInput, l.At(), l.Text(), f[0])
	}
	bits := -1
	if len(f) > 1 && f[1] != "" {
		if n, err := strconv.Atoi(f[1]); err == nil {
			bits = n
		} else if m, err := netip.ParseAddr(f[1]); err == nil && m.Is4() {
			b := m.As4()
			bits = 0
			for _, x := range b {
				for ; x&0x80 != 0; x <<= 1 {
					bits++
				}
			}
		} else {
			return fmt.Errorf("%w: %s: %s: netmask %q is neither bits nor dotted", ErrInput, l.At(), l.Text(), f[1])
		}
	}
	if bits < 0 {
		bits = 24
		if ip.Is6() {
			bits = 64
		}
		p.VIPGuess = append(p.VIPGuess, fmt.Sprintf("the prefix /%d (IPaddr took the netmask of the route to the address)", bits))
		p.Todo = append(p.Todo, fmt.Sprintf("%s: %s gives no netmask: the VIP got the prefix /%d; check it", l.At(), l.Text(), bits))
	}
	pfx, err := ip.Prefix(bits)
	if err != nil {
		return fmt.Errorf("%w: %s: %s: prefix /%d: %w", ErrInput, l.At(), l.Text(), bits, err)
	}
	p.VIP = netip.PrefixFrom(ip, pfx.Bits())
	p.VIPAt = l.At() + " `" + l.Text() + "`"
	p.Nic = "eth0"
	if len(f) > 2 && f[2] != "" {
		p.Nic = f[2]
	} else {
		p.VIPGuess = append(p.VIPGuess, "the interface eth0 (IPaddr took the interface of the route to the address)")
		p.Todo = append(p.Todo, fmt.Sprintf("%s: %s gives no interface: the VIP goes on eth0; check it", l.At(), l.Text()))
	}
	return nil
}

func (p *plan) readDRBD() error {
	if p.DRBDAt == "" && p.FS == nil {
		return nil
	}
	res, err := ParseDRBD(p.opts.DRBDConf)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInput, err)
	}
	name := p.DRBDName
	if name == "all" || name == "" {
		// drbddisk without a resource (or none, with a Filesystem on a
		// DRBD device): the resource whose device is mounted, else the
		// only one.
		for _, r := range res {
			for _, h := range r.Hosts {
				if p.FS != nil && h.Device == p.FS.Device {
					name = r.Name
				}
			}
		}
		if (name == "all" || name == "") && len(res) == 1 {
			for n := range res {
				name = n
			}
		}
	}
	r, ok := res[name]
	if !ok {
		return fmt.Errorf("%w: %s: DRBD resource %q is not in %s", ErrInput, p.DRBDAt, name, p.opts.DRBDConf)
	}
	p.DRBD, p.DRBDName = r, name
	for _, other := range sortedKeys(res) {
		if other != name {
			p.Skipped = append(p.Skipped, Finding{At: res[other].At, Directive: "resource " + other,
				Reason: "not in haresources' group: DRBD keeps running it, hapbx does not promote it"})
		}
	}
	if r.Protocol != "" && r.Protocol != "C" {
		p.Todo = append(p.Todo, fmt.Sprintf("%s: resource %s uses protocol %s (asynchronous): writes acknowledged on the old Primary can be missing after a failover; hapbx does not change that", r.At, name, r.Protocol))
	}
	for _, n := range p.nodes {
		h, ok := r.Hosts[n]
		if !ok {
			return fmt.Errorf("%w: %s: resource %s has no `on %s` section", ErrInput, r.At, name, n)
		}
		if p.FS == nil {
			p.FS = &filesystem{At: h.At, Device: h.Device}
		} else if h.Device != "" && p.FS.Device != h.Device && !strings.HasPrefix(p.FS.Device, "/dev/drbd/") {
			p.Todo = append(p.Todo, fmt.Sprintf("%s: Filesystem device %s differs from resource %s's device %s on %s (%s)", p.FS.At, p.FS.Device, name, h.Device, n, h.At))
		}
		if h.Address.IsValid() {
			p.addr[n], p.addrAt[n] = h.Address, h.At+" (DRBD replication address)"
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func (p *plan) resolveAddresses() error {
	for n, a := range p.opts.Addresses {
		p.addr[n], p.addrAt[n] = a, "given on the command line"
	}
	var missing []string
	for _, n := range p.nodes {
		if !p.addr[n].IsValid() {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: no address for node %s (drbd.conf's `on NODE { address ...; }` gives it): pass -address NODE=IP", ErrInput, strings.Join(missing, ", "))
	}
	return nil
}

// planFencing turns stonith lines into one fence command per node: the
// stonith(8) command line of cluster-glue with the device's parameters in
// a secret file (they hold the device's password).
func (p *plan) planFencing() {
	for _, target := range p.nodes {
		for _, l := range p.stonith {
			w := l.Words
			var typ, what string
			switch {
			case w[0] == "stonith" && len(w) >= 3:
				typ, what = w[1], "the contents of "+w[2]+" (the stonith device's parameters, "+l.At()+")"
			case w[0] == "stonith_host" && len(w) >= 3 && (w[1] == "*" || w[1] != target):
				// stonith_host FROM TYPE PARAMS: the device node FROM uses; the
				// one of the other node (or *) fences this one.
				typ, what = w[2], "the words after `"+w[2]+"` on "+l.At()+" (the device's parameters, password included)"
			default:
				continue
			}
			file := p.secret("stonith-"+target+".params", what+": for `stonith -F`; root:hapbx 0640", true, target != p.opts.Node)
			p.fence[target] = fence{
				Command: fmt.Sprintf("stonith -t %s -F %s -T off %s", typ, file, target),
				At:      l.At() + " `" + strings.Join(l.Words[:min(3, len(l.Words))], " ") + " ...`",
			}
			break
		}
	}
	for _, l := range p.stonith {
		used := false
		for _, f := range p.fence {
			used = used || strings.HasPrefix(f.At, l.At()+" ")
		}
		if !used {
			// Only the directive's first words: the rest holds the device's password.
			p.skip(Line{File: l.File, Num: l.Num, Words: l.Words[:min(3, len(l.Words))]}, "no node left for this stonith device to fence (one fence command per node)")
		}
	}
	if len(p.stonith) > 0 {
		p.Todo = append(p.Todo, "the fence commands run cluster-glue's stonith tool (Debian package cluster-glue): keep it installed when Heartbeat goes")
	}
}
