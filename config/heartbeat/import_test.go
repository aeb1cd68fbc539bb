package heartbeat

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/config"
)

// stubKey is what every secret file of the tests holds: a valid gossip
// key, long enough for the dialog key and the tokens too.
var stubKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) + "\n"

// imported runs Import on testdata/DIR with the secrets in a temporary
// directory, creates the secret files it names, and loads the generated
// files the way `hapbx check-config` does (config.Parse for the proxy,
// config.ParseAgent for the agent).
func imported(t *testing.T, dir string, o Options) (Result, config.File, *config.File) {
	t.Helper()
	o.HaDir = filepath.Join("testdata", dir)
	if o.DRBDConf == "" {
		o.DRBDConf = filepath.Join("testdata", dir, "drbd.conf")
	}
	o.SecretsDir = t.TempDir()
	r, err := Import(o)
	if err != nil {
		t.Fatalf("Import(%s): %v", dir, err)
	}
	for _, s := range r.Secrets {
		if err := os.WriteFile(s.Path, []byte(stubKey), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if config.IsAgentFile(r.Proxy) || config.IsWitnessFile(r.Proxy) {
		t.Fatalf("%s: the proxy's file is taken for an agent's or a witness's", dir)
	}
	proxy, err := config.Parse("hapbx.yaml", r.Proxy)
	if err != nil {
		t.Fatalf("%s: generated hapbx.yaml does not pass check-config:\n%v\n%s", dir, err, r.Proxy)
	}
	if r.Agent == nil {
		return r, proxy, nil
	}
	if !config.IsAgentFile(r.Agent) {
		t.Fatalf("%s: the agent's file is not taken for an agent's", dir)
	}
	agent, err := config.ParseAgent("hapbx-agent.yaml", r.Agent)
	if err != nil {
		t.Fatalf("%s: generated hapbx-agent.yaml does not pass check-config:\n%v\n%s", dir, err, r.Agent)
	}
	return r, proxy, &agent
}

func TestImport(t *testing.T) {
	witness := netip.MustParseAddr("192.168.1.20")
	cases := []struct {
		name, dir string
		opts      Options
		check     func(t *testing.T, r Result, p config.File, a *config.File)
		// skipped are the findings expected, each as "AT: DIRECTIVE"
		// (the reason is not compared).
		skipped []string
		todo    []string // substrings, one per expected to-do, in order
	}{
		{
			name: "seed pair as the issue gives it", dir: "seed", opts: Options{Node: "asterisk1", Witness: witness},
			check: func(t *testing.T, r Result, p config.File, a *config.File) {
				seedChecks(t, p, a, "asterisk1", 100)
				eq(t, "failback", p.Failover.Failback, true)
				eq(t, "cluster.failback", p.Cluster.Failback, true)
			},
			todo: []string{`haresources:1: the group's node "asterisk" is not one of ha.cf's nodes`},
		},
		{
			name: "seed pair, the other node", dir: "seed-named", opts: Options{Node: "asterisk2"},
			check: func(t *testing.T, r Result, p config.File, a *config.File) {
				seedChecks(t, p, a, "asterisk2", 90)
				eq(t, "witness placeholder", p.Cluster.Peers[2].Gossip, "192.0.2.20:7946")
				eq(t, "agent.listen", a.Agent.Listen, "192.168.1.12:7790")
			},
			todo: []string{"placeholder address 192.0.2.20"},
		},
		{
			name: "Heartbeat v2 style", dir: "v2", opts: Options{Node: "pbx-b", Witness: witness},
			check: func(t *testing.T, r Result, p config.File, a *config.File) {
				eq(t, "nodes", names(p), []string{"pbx-a", "pbx-b"})
				eq(t, "backends[0].address", p.Backends[0].Address, "10.0.0.1:5080")
				eq(t, "cluster.vip", p.Cluster.VIP.Address, "192.168.10.50/24")
				eq(t, "cluster.vip.interface", p.Cluster.VIP.Interface, "eth0")
				eq(t, "cluster.priority", p.Cluster.Priority, 90)
				eq(t, "failback", p.Failover.Failback, false)
				eq(t, "ping_targets", p.Cluster.PingTargets, []string{"192.168.10.1:80", "192.168.10.2:80", "192.168.10.3:80"})
				eq(t, "log.level", p.Log.Level, "debug")
				eq(t, "fence of pbx-a", p.Backends[0].Agent.Fence.Command, "stonith -t external/ipmi -F "+secretPath(r, "stonith-pbx-a.params")+" -T off pbx-a")
				eq(t, "fence of pbx-b", p.Backends[1].Agent.Fence.Command, "stonith -t external/ipmi -F "+secretPath(r, "stonith-pbx-b.params")+" -T off pbx-b")
				eq(t, "agent fences the peer", a.Agent.Fence.Command, p.Backends[0].Agent.Fence.Command)
				eq(t, "drbd.resource", a.Agent.DRBD.Resource, "r1")
				eq(t, "filesystem", a.Agent.Filesystem.Device+" "+a.Agent.Filesystem.MountPoint+" "+a.Agent.Filesystem.Type, "/dev/drbd1 /srv/pbx ext4")
				eq(t, "filesystem.options", a.Agent.Filesystem.Options, "noatime,data=ordered")
				script := filepath.Join("testdata", "v2", "resource.d", "pbxsync")
				eq(t, "service.unit", a.Agent.Service.Unit, "")
				eq(t, "service.start_command", a.Agent.Service.StartCommand, script+" full start && systemctl start asterisk.service")
				eq(t, "service.stop_command", a.Agent.Service.StopCommand, "systemctl stop asterisk.service && "+script+" full stop")
				for _, s := range []string{"IpmiPassA", "IpmiPassB", "Md5SecretNeverCopied"} {
					if bytes.Contains(r.Proxy, []byte(s)) || bytes.Contains(r.Agent, []byte(s)) || strings.Contains(findings(r), s) {
						t.Errorf("the secret %q was copied", s)
					}
				}
				if !bytes.Contains(r.Proxy, []byte("(authkeys:1, md5)")) {
					t.Error("hapbx.yaml does not name authkeys' active method (auth 3: md5)")
				}
			},
			skipped: []string{
				"ha.cf:13: baud 19200", "ha.cf:14: serial /dev/ttyS0", "ha.cf:17: crm on",
				"ha.cf:19: respawn hacluster /usr/lib/heartbeat/dopd", "ha.cf:20: apiauth dopd gid=haclient uid=hacluster",
				"ha.cf:23: watchdog /dev/watchdog", "ha.cf:24: compression bz2",
				"ha.cf:27: stonith_host * meatware", "ha.cf:28: frobnicate yes",
				"haresources:2: IPaddr2::192.168.20.50/255.255.255.0/eth2", "haresources:2: MailTo::ops@example.com::PBX",
				"haresources:7: pbx-b IPaddr2::192.168.10.60/24/eth0 apache2",
				"drbd.d/r9.res:1: resource r9",
			},
			todo: []string{"cluster-glue"},
		},
		{
			name: "no DRBD: hot standby", dir: "hot",
			opts: Options{Node: "sip1", Witness: witness, Addresses: map[string]netip.Addr{"sip1": netip.MustParseAddr("10.1.1.11"), "sip2": netip.MustParseAddr("10.1.1.12")}},
			check: func(t *testing.T, r Result, p config.File, a *config.File) {
				if a != nil {
					t.Error("an agent file without a DRBD resource")
				}
				eq(t, "cold.enabled", p.Cold.Enabled, false)
				eq(t, "backends", names(p), []string{"sip2", "sip1"})
				eq(t, "cluster.priority", p.Cluster.Priority, 90)
				eq(t, "cluster.vip", p.Cluster.VIP.Address, "10.1.1.50/24")
				if slices.ContainsFunc(r.Secrets, func(s Secret) bool { return strings.HasSuffix(s.Path, "agent.token") }) {
					t.Error("agent.token asked for without agents")
				}
			},
			todo: []string{"authkeys not found", "no netmask: the VIP got the prefix /24", "no interface: the VIP goes on eth0", "hot standby"},
		},
		{
			name: "stonith with a parameter file", dir: "stonith-file", opts: Options{Node: "asterisk1", Witness: witness},
			check: func(t *testing.T, r Result, p config.File, a *config.File) {
				for i, n := range []string{"asterisk1", "asterisk2"} {
					eq(t, "fence of "+n, p.Backends[i].Agent.Fence.Command, "stonith -t baytech -F "+secretPath(r, "stonith-"+n+".params")+" -T off "+n)
				}
				eq(t, "agent fences the peer", a.Agent.Fence.Command, p.Backends[1].Agent.Fence.Command)
				if !strings.Contains(secretWhat(r, "cluster.key"), "crc") {
					t.Errorf("cluster.key's note does not say authkeys used crc: %q", secretWhat(r, "cluster.key"))
				}
				if !strings.Contains(secretWhat(r, "stonith-asterisk2.params"), "/etc/ha.d/conf/stonith.baytech") {
					t.Errorf("the stonith secret does not name the file to copy: %q", secretWhat(r, "stonith-asterisk2.params"))
				}
			},
			todo: []string{"cluster-glue"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, p, a := imported(t, c.dir, c.opts)
			c.check(t, r, p, a)
			var got []string
			for _, f := range r.Skipped {
				got = append(got, strings.TrimPrefix(f.At, filepath.Join("testdata", c.dir)+"/")+": "+f.Directive)
			}
			for _, w := range c.skipped {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
					t.Errorf("not listed as skipped: %s\nskipped: %q", w, got)
				}
			}
			if len(got) != len(c.skipped) {
				t.Errorf("skipped %d directives, want %d:\n%s", len(got), len(c.skipped), strings.Join(got, "\n"))
			}
			if len(r.Todo) != len(c.todo) {
				t.Errorf("to-do %q, want %d of them (%q)", r.Todo, len(c.todo), c.todo)
			}
			for i := range min(len(r.Todo), len(c.todo)) {
				if !strings.Contains(r.Todo[i], c.todo[i]) {
					t.Errorf("to-do %d: %q does not say %q", i, r.Todo[i], c.todo[i])
				}
			}
			nothingDropped(t, c.dir, r)
		})
	}
}

// seedChecks is what the classic pair's files must give on either node.
func seedChecks(t *testing.T, p config.File, a *config.File, self string, priority int) {
	t.Helper()
	eq(t, "node.name", p.Node.Name, self)
	eq(t, "backends", names(p), []string{"asterisk1", "asterisk2"})
	eq(t, "backends[0].address", p.Backends[0].Address, "192.168.1.11:5080")
	eq(t, "backends[1].address", p.Backends[1].Address, "192.168.1.12:5080")
	eq(t, "backends[1].agent.url", p.Backends[1].Agent.URL, "http://192.168.1.12:7790")
	eq(t, "routing", p.Failover.Routing, "active-standby")
	eq(t, "sip.advertise", p.SIP.Advertise, "192.168.1.13")
	eq(t, "cluster.vip", p.Cluster.VIP.Address, "192.168.1.13/24")
	eq(t, "cluster.vip.interface", p.Cluster.VIP.Interface, "eth0")
	eq(t, "cluster.priority", p.Cluster.Priority, priority)
	eq(t, "cluster.peers", len(p.Cluster.Peers), 3)
	eq(t, "cold.enabled", p.Cold.Enabled, true)
	eq(t, "health.interval", p.Health.Interval, 500*time.Millisecond)
	eq(t, "agent node", a.Node.Name, self)
	eq(t, "drbd.resource", a.Agent.DRBD.Resource, "r0")
	eq(t, "filesystem", a.Agent.Filesystem.Device+" "+a.Agent.Filesystem.MountPoint+" "+a.Agent.Filesystem.Type, "/dev/drbd0 /replica ext3")
	eq(t, "service.unit", a.Agent.Service.Unit, "asterisk.service")
	eq(t, "ready.sip", a.Agent.Ready.SIP, "127.0.0.1:5080")
	eq(t, "fence without stonith", p.Backends[0].Agent.Fence.Command+a.Agent.Fence.Command, "")
}

// nothingDropped: every ha.cf directive and haresources resource is named
// in a generated file's comments or in the skipped list.
func nothingDropped(t *testing.T, dir string, r Result) {
	t.Helper()
	out := string(r.Proxy) + string(r.Agent) + findings(r)
	for _, name := range []string{"ha.cf", "haresources"} {
		data, err := os.ReadFile(filepath.Join("testdata", dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range parseLines(name, data) {
			if !strings.Contains(out, l.At()+" ") && !strings.Contains(out, l.At()+":") && !strings.Contains(out, l.At()+")") {
				t.Errorf("%s/%s: `%s` is neither imported nor listed", dir, l.At(), l.Text())
			}
			if name == "haresources" {
				for _, w := range l.Words[1:] {
					if !strings.Contains(out, w) {
						t.Errorf("%s/%s: resource %s is neither imported nor listed", dir, l.At(), w)
					}
				}
			}
		}
	}
}

func TestImportErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("drbd.conf", "resource r0 { on a { device /dev/drbd0; address 10.0.0.1:7788; } on b { device /dev/drbd0; address 10.0.0.2:7788; } }\n")
	cases := []struct {
		name, hacf, haresources, node, want string
	}{
		{"one node", "node a\n", "a IPaddr::10.0.0.9/24/eth0 asterisk\n", "a", "1 node lines"},
		{"not a node", "node a\nnode b\n", "a IPaddr::10.0.0.9/24/eth0 asterisk\n", "c", `node "c" is not one of ha.cf's nodes (a, b)`},
		{"no VIP", "node a\nnode b\n", "a drbddisk::r0 asterisk\n", "a", "haresources:1: no IPaddr or IPaddr2 resource"},
		{"bad VIP", "node a\nnode b\n", "a IPaddr::10.0.0/24 asterisk\n", "a", `"10.0.0" is not an IP address`},
		{"missing DRBD resource", "node a\nnode b\n", "a drbddisk::r7 IPaddr::10.0.0.9/24/eth0 asterisk\n", "a", `DRBD resource "r7" is not in`},
		{"no address", "node a\nnode b\n", "a IPaddr::10.0.0.9/24/eth0 asterisk\n", "a", "no address for node a, b"},
		{"short Filesystem", "node a\nnode b\n", "a drbddisk::r0 Filesystem::/dev/drbd0 IPaddr::10.0.0.9/24/eth0\n", "a", "want Filesystem::DEVICE::MOUNTPOINT::TYPE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			write("ha.cf", c.hacf)
			write("haresources", c.haresources)
			_, err := Import(Options{HaDir: dir, DRBDConf: filepath.Join(dir, "drbd.conf"), Node: c.node})
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want ErrInput saying %q", err, c.want)
			}
		})
	}
	if _, err := Import(Options{HaDir: filepath.Join(dir, "absent"), Node: "a"}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing ha.cf: err = %v, want one wrapping ErrNotExist", err)
	}
}

func TestParseDRBD(t *testing.T) {
	res, err := ParseDRBD(filepath.Join("testdata", "v2", "drbd.conf"))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "resources", sortedKeys(res), []string{"r1", "r9"})
	eq(t, "r1 protocol (common)", res["r1"].Protocol, "C")
	eq(t, "r9 protocol (net)", res["r9"].Protocol, "A")
	eq(t, "r1 device (resource level)", res["r1"].Hosts["pbx-b"].Device, "/dev/drbd1")
	eq(t, "r9 device (minor)", res["r9"].Hosts["pbx-a"].Device, "/dev/drbd9")
	eq(t, "r1 address (ipv4 keyword)", res["r1"].Hosts["pbx-b"].Address, netip.MustParseAddr("10.0.0.2"))
	eq(t, "r1 meta-disk", res["r1"].Hosts["pbx-a"].MetaDisk, "internal")

	dir := t.TempDir()
	for name, text := range map[string]string{
		"unbalanced":   "resource r0 { on a { device /dev/drbd0; }\n",
		"no semicolon": "resource r0 { protocol C }\n",
		"stray brace":  "}\n",
		"unterminated": "include \"x;\n",
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ParseDRBD(path); err == nil {
			t.Errorf("%s: %q parsed without error", name, text)
		}
	}
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !equal(got, want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func equal(a, b any) bool {
	as, ok1 := a.([]string)
	bs, ok2 := b.([]string)
	if ok1 && ok2 {
		return slices.Equal(as, bs)
	}
	return a == b
}

func names(f config.File) []string {
	var n []string
	for _, b := range f.Backends {
		n = append(n, b.Name)
	}
	return n
}

func secretPath(r Result, base string) string {
	for _, s := range r.Secrets {
		if filepath.Base(s.Path) == base {
			return s.Path
		}
	}
	return "(no secret " + base + ")"
}

func secretWhat(r Result, base string) string {
	for _, s := range r.Secrets {
		if filepath.Base(s.Path) == base {
			return s.What
		}
	}
	return ""
}

func findings(r Result) string {
	var b strings.Builder
	for _, f := range r.Skipped {
		b.WriteString(f.String() + "\n")
	}
	return b.String()
}
