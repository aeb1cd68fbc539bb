package heartbeat

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"

	"go.yaml.in/yaml/v3"
)

// view is what the templates print.
type view struct {
	*plan
	Self, Peer    string
	SelfAt        string
	Sources       string
	Cold          bool
	Backends      []backendView
	Peers         []peerView
	WitnessUnset  bool
	DialogKey     string
	AdminToken    string
	AgentToken    string
	AgentListen   string
	AdminListen   string
	Failback      bool
	Priority      int
	Service       serviceView
	PeerFence     fence
	Timing        map[string]Line
	TransportText string
	LoggingText   string
	PingText      string
	ClusterKey    string
	// ForAgent is set while the agent's file is written.
	ForAgent bool
}

type backendView struct {
	Name, SIP, AddrAt, AgentURL string
	Fence                       fence
}

type peerView struct {
	Name, Gossip, Raft, Note string
}

type serviceView struct {
	Unit, Start, Stop, From string
}

func (p *plan) render() (Result, error) {
	self := p.opts.Node
	v := &view{plan: p, Self: self, Cold: p.DRBD != nil, Timing: map[string]Line{}}
	for _, n := range p.nodes {
		if n != self {
			v.Peer = n
		}
	}
	v.Sources = filepath.Join(p.opts.HaDir, "{ha.cf,authkeys,haresources}")
	if v.Cold {
		v.Sources += ", " + p.opts.DRBDConf
	}
	v.DialogKey = p.secret("dialog.key", "the key of the token hapbx writes into its Record-Route: `openssl rand -hex 32`; the same file on both proxies; root:hapbx 0640", true, false)
	v.AdminToken = p.secret("admin.token", "the bearer token of `hapbx standby` / `hapbx takeover` (Heartbeat's hb_standby / hb_takeover): `openssl rand -hex 24`; the same file on both proxies; root:hapbx 0640", true, false)
	if v.Cold {
		v.AgentToken = p.secret("agent.token", "the bearer token the proxies present to the nodes' agents: `openssl rand -hex 24`; the same file in hapbx.yaml and the agent file on both nodes; root:hapbx 0640", true, true)
	}
	// Backends: the preferred node first, as haresources' first word.
	order := []string{p.Preferred}
	for _, n := range p.nodes {
		if n != p.Preferred {
			order = append(order, n)
		}
	}
	for _, n := range order {
		v.Backends = append(v.Backends, backendView{
			Name: n, SIP: hostPort(p.addr[n], asteriskPort), AddrAt: p.addrAt[n],
			AgentURL: "http://" + hostPort(p.addr[n], agentPort), Fence: p.fence[n],
		})
	}
	for _, n := range p.nodes {
		v.Peers = append(v.Peers, peerView{Name: n, Gossip: hostPort(p.addr[n], gossipPort), Raft: hostPort(p.addr[n], raftPort),
			Note: p.nodeAt[n] + " `node " + n + "`"})
	}
	w := p.opts.Witness
	if !w.IsValid() {
		w, v.WitnessUnset = placeholderWitness, true
		p.Todo = append(p.Todo, "the witness (third voter, any small host that is neither node) has the placeholder address 192.0.2.20 in cluster.peers: give -witness IP, or edit it in both proxies' files")
	}
	v.Peers = append(v.Peers, peerView{Name: "witness", Gossip: hostPort(w, gossipPort), Raft: hostPort(w, raftPort),
		Note: "the third voter; Heartbeat had none (hapbx witness -c witness.yaml on a third host)"})
	v.AgentListen, v.AdminListen = hostPort(p.addr[self], agentPort), hostPort(p.addr[self], adminPort)
	v.SelfAt = p.nodeAt[self] + " `node " + self + "`"
	if p.failback != nil {
		v.Failback = *p.failback
	}
	v.Priority = 90
	if self == p.Preferred {
		v.Priority = 100
	}
	v.PeerFence = p.fence[v.Peer]
	v.Service = p.serviceView()
	for _, l := range p.timing {
		v.Timing[l.Words[0]] = l
	}
	v.TransportText = linesText(p.transport)
	v.LoggingText = linesText(p.logging)
	v.PingText = linesText(p.pingLines)
	v.ClusterKey = p.clusterKey
	if !v.Cold {
		p.Todo = append(p.Todo, "haresources has no drbddisk: hapbx runs hot standby, Asterisk on both nodes (enable asterisk.service on both); no agent file is written")
	}

	var out Result
	var err error
	if out.Proxy, err = execute(proxyTemplate, v); err != nil {
		return Result{}, err
	}
	if v.Cold {
		v.ForAgent = true
		if out.Agent, err = execute(agentTemplate, v); err != nil {
			return Result{}, err
		}
	}
	out.Secrets, out.Skipped, out.Todo = p.Secrets, p.Skipped, p.Todo
	return out, nil
}

func (p *plan) serviceView() serviceView {
	if len(p.services) == 0 {
		p.Todo = append(p.Todo, "haresources starts no service: the agent starts asterisk.service")
		return serviceView{Unit: "asterisk.service", From: "haresources starts no service: Asterisk's unit"}
	}
	var at []string
	for _, s := range p.services {
		at = append(at, s.At+" `"+strings.Join(append([]string{s.Name}, s.Args...), "::")+"`")
	}
	from := strings.Join(at, ", ")
	if len(p.services) == 1 && p.services[0].Script == "" {
		return serviceView{Unit: p.services[0].Name + ".service", From: from}
	}
	// Several services or Heartbeat scripts: started in haresources' order,
	// stopped in reverse, as Heartbeat did.
	var start, stop []string
	for _, s := range p.services {
		start = append(start, serviceCmd(s, "start"))
	}
	for i := len(p.services) - 1; i >= 0; i-- {
		stop = append(stop, serviceCmd(p.services[i], "stop"))
	}
	return serviceView{Start: strings.Join(start, " && "), Stop: strings.Join(stop, " && "), From: from}
}

func serviceCmd(s service, action string) string {
	if s.Script == "" {
		return "systemctl " + action + " " + s.Name + ".service"
	}
	return strings.Join(append(append([]string{s.Script}, s.Args...), action), " ")
}

func hostPort(a netip.Addr, port int) string { return net.JoinHostPort(a.String(), strconv.Itoa(port)) }

func linesText(ls []Line) string {
	var s []string
	for _, l := range ls {
		s = append(s, "`"+l.Text()+"` ("+l.At()+")")
	}
	return strings.Join(s, ", ")
}

var funcs = template.FuncMap{
	// q writes a YAML scalar, quoted when YAML needs it.
	"q": func(s string) string {
		b, _ := yaml.Marshal(s)
		return strings.TrimSpace(string(b))
	},
	"list": func(s []string) string {
		var q []string
		for _, x := range s {
			q = append(q, strconv.Quote(x))
		}
		return "[" + strings.Join(q, ", ") + "]"
	},
}

func execute(t *template.Template, v *view) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, v); err != nil {
		return nil, fmt.Errorf("heartbeat: writing %s: %w", t.Name(), err)
	}
	return b.Bytes(), nil
}
