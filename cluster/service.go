package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// Service members (RoleService; `hapbx agent` with a cluster: section is one): memberlist
// members with the same keyring, so a wrong key cannot join either and says so the same
// way. Never raft servers (not in peers, no raft transport, no data_dir), never VIP
// holders or leadership transfer targets (transfers go to role "proxy" members
// only), never sent shared state (RegisterState is refused on a service member, and
// Broadcast and full pushes skip members of its role whatever their metadata
// says). A service member's metadata (JSON, well under memberlist's 512 bytes, checked by
// New) carries {"r":"agent","b":BACKEND,"api":URL}, given by WithServiceInfo. A proxy
// reads them with Services(): name, backend, API URL, alive. A service member joins the
// gossip addresses of its peers (names optional) with the same backoff and keeps
// re-joining; it starts at once (no heartbeat_timeout of silence: it casts no
// vote). Its arrival or death changes no quorum, term or leader
// (TestServiceJoinsWithoutVoting).

// ServiceInfo is a service member as the cluster knows it: what it announces in its
// memberlist metadata, and whether memberlist holds it alive.
type ServiceInfo struct {
	// Name is the member's memberlist name (its cluster.name).
	Name string `json:"name"`
	// Backend is the backend the service serves, as the proxies' backends[].name.
	Backend string `json:"backend"`
	// API is the base URL of its control API, e.g. http://192.168.1.11:7790.
	API string `json:"api"`
	// Addr is its gossip address.
	Addr string `json:"addr,omitempty"`
	// Alive is false once memberlist declared it dead or it left.
	Alive bool `json:"alive"`
}

// WithServiceInfo is required for RoleService: the backend the service serves and the URL at
// which proxies reach its control API. Both ride in the memberlist metadata, which
// memberlist limits to 512 bytes (New checks).
func WithServiceInfo(backend, api string) Option {
	return func(o *options) { o.svc = ServiceInfo{Backend: backend, API: api} }
}

func checkServiceInfo(a ServiceInfo) error {
	if a.Backend == "" {
		return fmt.Errorf("cluster: a service member needs its backend name (WithServiceInfo)")
	}
	u, err := url.Parse(a.API)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("cluster: service API %q is not an http:// or https:// URL", a.API)
	}
	b, _ := json.Marshal(nodeMeta{Role: RoleService.String(), Backend: a.Backend, API: a.API})
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster: service metadata is %d bytes, memberlist allows %d: shorten the backend name or API URL", len(b), memberlist.MetaMaxSize)
	}
	return nil
}

// startService runs a service member: memberlist only. No raft, no VIP, no silence before joining
// (it casts no vote, so the restart argument in leadership.go does not concern it).
func (c *Cluster) startService(ctx context.Context) error {
	ctx, c.cancel = context.WithCancel(ctx)
	c.runCtx = ctx
	if err := c.startMemberlist(); err != nil {
		return err
	}
	c.wg.Add(1)
	go c.joinLoop(ctx)
	c.log.Info("cluster started as a service member", zap.String("bind", c.cfg.Bind), zap.String("backend", c.mem.service.Backend), zap.String("api", c.mem.service.API))
	return nil
}

// Services lists the service members that have joined (alive or not, since this node
// started), sorted by name.
func (c *Cluster) Services() []ServiceInfo {
	var out []ServiceInfo
	for _, m := range c.Members() {
		if m.Role == RoleService.String() {
			out = append(out, ServiceInfo{Name: m.Name, Backend: m.Backend, API: m.API, Addr: m.Addr, Alive: m.State == "alive"})
		}
	}
	return out
}
