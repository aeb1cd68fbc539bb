package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// Agents (RoleAgent, `hapbx agent` with a cluster: section): memberlist members
// with the same keyring, so a wrong key cannot join either and says so the same
// way. Never raft servers (not in peers, no raft transport, no data_dir), never VIP
// holders or leadership transfer targets (transfers go to role "proxy" members
// only), never sent shared state (RegisterState is refused on an agent, and
// Broadcast and full pushes skip members of role "agent" whatever their metadata
// says). An agent's metadata (JSON, well under memberlist's 512 bytes, checked by
// New) carries {"r":"agent","b":BACKEND,"api":URL}, given by WithAgentInfo. A proxy
// reads them with Agents(): name, backend, API URL, alive. An agent joins the
// gossip addresses of its peers (names optional) with the same backoff and keeps
// re-joining; it starts at once (no heartbeat_timeout of silence: it casts no
// vote). Its arrival or death changes no quorum, term or leader
// (TestAgentJoinsWithoutVoting).

// AgentInfo is a PBX node's storage agent as the cluster knows it: what it announces in
// its memberlist metadata, and whether memberlist holds it alive.
type AgentInfo struct {
	// Name is the agent's memberlist name (its cluster.name).
	Name string `json:"name"`
	// Backend is the backend the agent serves, as the proxies' backends[].name.
	Backend string `json:"backend"`
	// API is the base URL of its control API, e.g. http://192.168.1.11:7790.
	API string `json:"api"`
	// Addr is its gossip address.
	Addr string `json:"addr,omitempty"`
	// Alive is false once memberlist declared it dead or it left.
	Alive bool `json:"alive"`
}

// Option configures New.
type Option func(*options)

type options struct {
	agent AgentInfo
}

// WithAgentInfo is required for RoleAgent: the backend the agent serves and the URL at
// which proxies reach its control API. Both ride in the memberlist metadata, which
// memberlist limits to 512 bytes (New checks).
func WithAgentInfo(backend, api string) Option {
	return func(o *options) { o.agent = AgentInfo{Backend: backend, API: api} }
}

func checkAgentInfo(a AgentInfo) error {
	if a.Backend == "" {
		return fmt.Errorf("cluster: an agent needs its backend name (WithAgentInfo)")
	}
	u, err := url.Parse(a.API)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("cluster: agent API %q is not an http:// or https:// URL", a.API)
	}
	b, _ := json.Marshal(nodeMeta{Role: RoleAgent.String(), Backend: a.Backend, API: a.API})
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster: agent metadata is %d bytes, memberlist allows %d: shorten the backend name or API URL", len(b), memberlist.MetaMaxSize)
	}
	return nil
}

// startAgent runs an agent: memberlist only. No raft, no VIP, no silence before joining
// (it casts no vote, so the restart argument in leadership.go does not concern it).
func (c *Cluster) startAgent(ctx context.Context) error {
	ctx, c.cancel = context.WithCancel(ctx)
	c.runCtx = ctx
	if err := c.startMemberlist(); err != nil {
		return err
	}
	c.wg.Add(1)
	go c.joinLoop(ctx)
	c.log.Info("cluster started as agent", zap.String("bind", c.cfg.Bind), zap.String("backend", c.mem.agent.Backend), zap.String("api", c.mem.agent.API))
	return nil
}

// Agents lists the storage agents that have joined (alive or not, since this node
// started), sorted by name. A proxy's cold-standby coordinator reaches each backend's
// agent at the API of the alive entry whose Backend is the backend's name.
func (c *Cluster) Agents() []AgentInfo {
	var out []AgentInfo
	for _, m := range c.Members() {
		if m.Role == RoleAgent.String() {
			out = append(out, AgentInfo{Name: m.Name, Backend: m.Backend, API: m.API, Addr: m.Addr, Alive: m.State == "alive"})
		}
	}
	return out
}
