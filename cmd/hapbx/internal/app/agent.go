package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/storage"
)

// runAgent is `hapbx agent`: the storage agent of a PBX node. Its control
// API (and /metrics) is served on agent.listen. With a cluster: section it
// joins the proxies' cluster (same gossip key, memberlist only) and
// announces its node name and API URL there, so a proxy finds it without
// backends[].agent.url; without one, the proxy needs that url.
//
// On SIGTERM the agent exits and leaves the group as it is: restarting the
// agent must not stop Asterisk. `hapbx standby` moves the group first.
func runAgent(path string, stderr io.Writer) int {
	return command("hapbx agent", path, config.LoadAgent, stderr, agentMain)
}

func agentMain(cfg config.File, log *zap.Logger) error {
	reg := newRegistry()

	target := health.Target{Name: cfg.Node.Name, Address: cfg.Agent.Ready.SIP, Transport: cfg.Agent.Ready.Transport}
	if m := cfg.Agent.Ready.AMI; m != nil {
		secret, err := secretfile.Read(m.SecretFile)
		if err != nil {
			return fmt.Errorf("agent.ready.ami.secret_file: %w", err)
		}
		target.AMI = &health.AMITarget{Address: m.Address, Username: m.Username, Secret: strings.TrimRight(string(secret), "\r\n")}
	}
	hc := health.DefaultConfig()
	hc.Timeout = cfg.Agent.Ready.Timeout
	ready, err := health.NewReadyCheck(target, hc, 200*time.Millisecond, log.Named("ready"))
	if err != nil {
		return fmt.Errorf("agent.ready: %w", err)
	}
	scfg := cfg.Agent.Config
	agent, err := storage.New(scfg, log.Named("agent"), reg, storage.WithReadyChecker(ready))
	if err != nil {
		return err
	}
	var member *cluster.Cluster
	if cfg.ClusterEnabled() {
		api, err := cfg.AgentURL()
		if err != nil {
			return err
		}
		if member, err = cluster.New(cfg.ClusterConfig(), cluster.RoleService, log.Named("cluster"), reg, cluster.WithServiceInfo(cfg.Node.Name, api)); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	if scfg.Listen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metricsHandler(reg))
		mux.Handle("/", agent.Handler())
		serve, err := serveHTTP(scfg.Listen, "agent API", mux, nil, log)
		if err != nil {
			return err
		}
		g.Go(func() error { return serve(ctx) })
	}
	// Joined after the API answers: a proxy that sees the agent can use it.
	if member != nil {
		g.Go(func() error { return member.Run(ctx) })
	}
	g.Go(func() error { return ready.Run(ctx) })
	g.Go(func() error { return agent.Run(ctx) })
	log.Info("hapbx agent running", zap.String("version", version), zap.String("listen", scfg.Listen),
		zap.String("resource", scfg.DRBD.Resource), zap.String("mount_point", scfg.Filesystem.MountPoint))
	return g.Wait()
}
