package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/storage"
)

// AgentConfig is the `agent:` section of a PBX node's file (`hapbx
// agent`): the storage agent's settings plus where the local Asterisk
// answers, for the readiness check (SIP OPTIONS answered and AMI
// FullyBooted).
type AgentConfig struct {
	storage.Config `yaml:",inline"`
	Ready          AgentReady `yaml:"ready"`
	// URL is where proxies reach this agent's control API, announced in the
	// cluster when the file has a cluster: section. Default: http:// and
	// listen, or, when listen is on all addresses, the host of
	// cluster.advertise (else cluster.bind) with listen's port.
	URL string `yaml:"url"`
}

// AgentReady is where the local Asterisk answers.
type AgentReady struct {
	// SIP is the host:port of Asterisk's SIP stack.
	SIP string `yaml:"sip"`
	// Transport is udp or tcp.
	Transport string `yaml:"transport"`
	// AMI, when set, adds the manager check (logged in, FullyBooted).
	AMI *AMI `yaml:"ami,omitempty"`
	// Timeout of one SIP probe and of the AMI connect/login/ping.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultAgent is the `agent:` defaults: storage's, Asterisk on
// 127.0.0.1:5060/udp.
func DefaultAgent() AgentConfig {
	return AgentConfig{Config: storage.DefaultConfig(), Ready: AgentReady{SIP: "127.0.0.1:5060", Transport: "udp", Timeout: 400 * time.Millisecond}}
}

// BackendAgent is how the proxy reaches a backend's storage agent in cold
// standby and how it fences that node when its agent cannot stop the group.
type BackendAgent struct {
	// URL of the agent's control API, e.g. http://192.168.1.11:7790. Empty
	// with a cluster: the URL the agent announces when it joins (its
	// node.name must be this backend's name); set, it overrides that.
	URL string `yaml:"url"`
	// TokenFile holds the agent's bearer token.
	TokenFile string `yaml:"token_file"`
	// Fence: command (exit 0 = fenced), its timeout, and, with no command,
	// the safety delay after the standby's DRBD shows this node
	// disconnected. Defaults: no command, timeout 30s, safety_delay 5s.
	Fence storage.FenceConfig `yaml:"fence"`
}

// UnmarshalYAML fills the defaults of keys the file leaves out.
func (b *BackendAgent) UnmarshalYAML(n *yaml.Node) error {
	type plain BackendAgent
	p := plain{Fence: storage.FenceConfig{Timeout: 30 * time.Second, SafetyDelay: 5 * time.Second}}
	if err := n.Decode(&p); err != nil {
		return err
	}
	*b = BackendAgent(p)
	return nil
}

// IsAgentFile reports whether data is a PBX node's file: it has an agent:
// section and no backends:.
func IsAgentFile(data []byte) bool {
	var top map[string]yaml.Node
	if yaml.Unmarshal(data, &top) != nil {
		return false
	}
	_, agent := top["agent"]
	_, backends := top["backends"]
	return agent && !backends
}

// LoadAgent reads and validates a PBX node's file: node, agent, log and,
// when it joins the proxies' cluster, cluster (other sections are ignored
// but must be known keys).
func LoadAgent(path string) (File, error) {
	data, err := ReadFile(path)
	if err != nil {
		return File{}, err
	}
	return ParseAgent(path, data)
}

// ParseAgent decodes and validates a PBX node's file.
func ParseAgent(name string, data []byte) (File, error) {
	f, problems, err := decode(name, data)
	if err != nil {
		return File{}, err
	}
	// The default unit gives way to start/stop commands the file sets.
	var svc struct {
		Agent struct {
			Service map[string]any `yaml:"service"`
		} `yaml:"agent"`
	}
	if yaml.Unmarshal(data, &svc) == nil {
		if _, unit := svc.Agent.Service["unit"]; !unit && f.Agent.Service.StartCommand != "" {
			f.Agent.Service.Unit = ""
		}
	}
	if strings.TrimSpace(f.Node.Name) == "" {
		problems = append(problems, "node.name: must not be empty")
	}
	problems = append(problems, f.Agent.problems()...)
	if f.ClusterEnabled() {
		for _, e := range flatten(f.ClusterConfig().ValidateService()) {
			problems = append(problems, "cluster."+e.Error())
		}
		if _, err := f.AgentURL(); err != nil {
			problems = append(problems, err.Error())
		}
	} else if f.Agent.URL != "" {
		if err := checkAgentURL(f.Agent.URL); err != nil {
			problems = append(problems, "agent.url: "+err.Error())
		}
	}
	if _, err := zapcore.ParseLevel(f.Log.Level); err != nil {
		problems = append(problems, fmt.Sprintf("log.level: %q is not debug, info, warn or error", f.Log.Level))
	}
	if f.Log.Format != "json" && f.Log.Format != "console" {
		problems = append(problems, fmt.Sprintf("log.format: %q is not json or console", f.Log.Format))
	}
	if len(problems) > 0 {
		return File{}, &Error{File: name, Problems: problems}
	}
	return f, nil
}

func checkAgentURL(s string) error {
	if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	return nil
}

// AgentURL is the URL an agent announces to the cluster: agent.url, else
// derived from agent.listen (see AgentConfig.URL). A loopback listen
// address is refused while the cluster gossips on another address: the
// proxies could not reach it.
func (f File) AgentURL() (string, error) {
	if f.Agent.URL != "" {
		if err := checkAgentURL(f.Agent.URL); err != nil {
			return "", fmt.Errorf("agent.url: %w", err)
		}
		return strings.TrimRight(f.Agent.URL, "/"), nil
	}
	if f.Agent.Listen == "" {
		return "", errors.New("agent.listen: must be set to join the cluster: the proxies reach the agent's API there")
	}
	host, port, err := net.SplitHostPort(f.Agent.Listen)
	if err != nil {
		return "", fmt.Errorf("agent.listen: %q is not host:port", f.Agent.Listen)
	}
	// The address other cluster members reach this node at.
	var gossip netip.Addr
	for _, a := range []string{f.Cluster.Advertise, f.Cluster.Bind} {
		if h, _, err := net.SplitHostPort(a); err == nil {
			if ip, err := netip.ParseAddr(h); err == nil && !ip.IsUnspecified() {
				gossip = ip
				break
			}
		}
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case host != "" && err != nil: // a host name
		return "http://" + net.JoinHostPort(host, port), nil
	case host != "" && !ip.IsUnspecified():
		if ip.IsLoopback() && !(gossip.IsValid() && gossip.IsLoopback()) {
			return "", fmt.Errorf("agent.listen: %s is a loopback address the proxies cannot reach: listen on the node's address (or set agent.url)", f.Agent.Listen)
		}
		return "http://" + net.JoinHostPort(host, port), nil
	case gossip.IsValid():
		return "http://" + net.JoinHostPort(gossip.String(), port), nil
	}
	return "", fmt.Errorf("agent.url: must be set: agent.listen %s is on all addresses and neither cluster.advertise nor cluster.bind names this node's address", f.Agent.Listen)
}

func (a AgentConfig) problems() []string {
	var p []string
	for _, e := range flatten(a.Config.Validate()) {
		p = append(p, "agent."+e.Error())
	}
	if a.Listen != "" && a.TokenFile != "" {
		if _, err := secretfile.Read(a.TokenFile); err != nil {
			p = append(p, "agent.token_file: "+err.Error())
		}
	}
	if err := checkHostPort(a.Ready.SIP); err != nil {
		p = append(p, "agent.ready.sip: "+err.Error())
	}
	if a.Ready.Transport != "udp" && a.Ready.Transport != "tcp" {
		p = append(p, fmt.Sprintf("agent.ready.transport: %q is not udp or tcp", a.Ready.Transport))
	}
	if a.Ready.Timeout <= 0 {
		p = append(p, "agent.ready.timeout: must be > 0")
	}
	if m := a.Ready.AMI; m != nil {
		if err := checkHostPort(m.Address); err != nil {
			p = append(p, "agent.ready.ami.address: "+err.Error())
		}
		if m.Username == "" {
			p = append(p, "agent.ready.ami.username: must not be empty")
		}
		if _, err := secretfile.Read(m.SecretFile); err != nil {
			p = append(p, "agent.ready.ami.secret_file: "+err.Error())
		}
	}
	return p
}

// coldProblems checks the cold: section and the backends' agent: keys.
func (f File) coldProblems() []string {
	var p []string
	for _, e := range flatten(f.Cold.Validate()) {
		p = append(p, "cold."+e.Error())
	}
	if f.Cold.Enabled && f.Failover.Routing != failover.RoutingActiveStandby {
		p = append(p, fmt.Sprintf("cold.enabled: needs routing: %s, not %s (one node runs at a time)", failover.RoutingActiveStandby, f.Failover.Routing))
	}
	for i, b := range f.Backends {
		at := fmt.Sprintf("backends[%d].agent", i)
		if b.Agent == nil {
			if f.Cold.Enabled {
				p = append(p, at+": required with cold.enabled (token_file of the node's storage agent, and its url unless the agent joins the cluster)")
			}
			continue
		}
		switch {
		case b.Agent.URL == "" && !f.ClusterEnabled():
			p = append(p, at+".url: must be set without a cluster (with one, agents that join it are found by their node name)")
		case b.Agent.URL != "":
			if err := checkAgentURL(b.Agent.URL); err != nil {
				p = append(p, at+".url: "+err.Error())
			}
		}
		if b.Agent.TokenFile == "" {
			p = append(p, at+".token_file: must not be empty")
		} else if _, err := secretfile.Read(b.Agent.TokenFile); err != nil {
			p = append(p, at+".token_file: "+err.Error())
		}
		if b.Agent.Fence.Timeout <= 0 {
			p = append(p, at+".fence.timeout: must be > 0")
		}
		if b.Agent.Fence.SafetyDelay < 0 {
			p = append(p, at+".fence.safety_delay: must be >= 0")
		}
	}
	return p
}
