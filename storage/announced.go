package storage

import (
	"context"
	"fmt"
	"sync"

	"go.uber.org/zap"
)

// Announced is a storage agent as the proxies' cluster reports it: the
// fields of cluster.ServiceInfo, so one converts to the other.
type Announced struct {
	Name, Backend, API, Addr string
	Alive                    bool
}

// AnnouncedClient reaches a backend's agent at the API URL it announces in
// the cluster, looked up on every call: an agent that restarts elsewhere or
// changes its address is followed. One that has not joined (or was declared
// dead) is unreachable (ErrAgentNotJoined), which the failover coordinator
// treats like any unreachable agent: fence before starting the group
// elsewhere.
type AnnouncedClient struct {
	backend string
	client  Client // BaseURL set per call
	agents  func() []Announced
	log     *zap.Logger

	mu   sync.Mutex
	last string // URL last used, to log changes
}

// NewAnnouncedClient returns the client of backend's agent; client gives
// the token and HTTP client, agents lists the announced agents.
func NewAnnouncedClient(backend string, client Client, agents func() []Announced, log *zap.Logger) *AnnouncedClient {
	return &AnnouncedClient{backend: backend, client: client, agents: agents, log: log}
}

func (a *AnnouncedClient) resolve() (Client, error) {
	// Several alive agents claiming one backend is a configuration error;
	// the first by member name is used, deterministically on every proxy.
	var found []Announced
	for _, ag := range a.agents() {
		if ag.Alive && ag.Backend == a.backend {
			found = append(found, ag)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(found) == 0 {
		if a.last != "" {
			a.log.Warn("cold standby: agent gone from the cluster", zap.String("backend", a.backend), zap.String("last_url", a.last))
			a.last = ""
		}
		return Client{}, fmt.Errorf("backend %s: %w (no alive member with node name %q)", a.backend, ErrAgentNotJoined, a.backend)
	}
	if found[0].API != a.last {
		a.log.Info("cold standby: agent found in the cluster", zap.String("backend", a.backend), zap.String("member", found[0].Name), zap.String("url", found[0].API))
		if len(found) > 1 {
			a.log.Error("cold standby: several agents announce the same backend; using the first", zap.String("backend", a.backend), zap.Any("agents", found))
		}
		a.last = found[0].API
	}
	c := a.client
	c.BaseURL = found[0].API
	return c, nil
}

// Status is Client.Status of the announced agent.
func (a *AnnouncedClient) Status(ctx context.Context) (Status, error) {
	c, err := a.resolve()
	if err != nil {
		return Status{}, err
	}
	return c.Status(ctx)
}

// Start is Client.Start of the announced agent.
func (a *AnnouncedClient) Start(ctx context.Context, opts StartOptions) (Result, error) {
	c, err := a.resolve()
	if err != nil {
		return Result{}, err
	}
	return c.Start(ctx, opts)
}

// Stop is Client.Stop of the announced agent.
func (a *AnnouncedClient) Stop(ctx context.Context) (Result, error) {
	c, err := a.resolve()
	if err != nil {
		return Result{}, err
	}
	return c.Stop(ctx)
}
