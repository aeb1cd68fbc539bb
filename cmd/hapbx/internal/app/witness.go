package app

import (
	"context"
	"io"
	"net/http"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

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
		if cfg.Admin.Listen != "" {
			mux := http.NewServeMux()
			mux.Handle("GET /metrics", metricsHandler(reg))
			srv, err := serveHTTP(cfg.Admin.Listen, "admin interface", mux, log, nil)
			if err != nil {
				return err
			}
			defer srv.Close()
		}
		log.Info("witness running", zap.String("version", version), zap.String("config", path))
		if err := cluster.RunWitness(ctx, cfg.ClusterConfig(), log.Named("cluster"), reg); err != nil {
			return err
		}
		log.Info("witness stopped")
		return nil
	})
}
