package app

import (
	"context"
	"io"
	"net/http"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
)

// runWitness is `hapbx witness -c FILE`: a raft voter that breaks ties
// between the two proxies and never holds the VIP. SIGTERM/SIGINT stop it.
func runWitness(path string, stderr io.Writer) int {
	return command("witness", path, config.LoadWitness, stderr, func(cfg config.File, log *zap.Logger) error {
		reg := newRegistry()
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		// A voter that breaks ties, hands raft leadership to the best proxy
		// whenever it wins an election, and never holds the VIP.
		c, err := cluster.New(cfg.ClusterConfig(), cluster.RoleWitness, log.Named("cluster"), reg)
		if err != nil {
			return err
		}
		g, ctx := errgroup.WithContext(ctx)
		if cfg.Admin.Listen != "" {
			mux := http.NewServeMux()
			mux.Handle("GET /metrics", metricsHandler(reg))
			serve, err := serveAdmin(cfg.Admin, mux, log)
			if err != nil {
				return err
			}
			g.Go(func() error { return serve(ctx) })
		}
		g.Go(func() error { return c.Run(ctx) })
		log.Info("witness running", zap.String("version", version), zap.String("config", path))
		if err := g.Wait(); err != nil {
			return err
		}
		log.Info("witness stopped")
		return nil
	})
}
