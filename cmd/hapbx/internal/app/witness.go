package app

import (
	"context"
	"fmt"
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
	cfg, err := config.LoadWitness(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "%s: log: %v\n", path, err)
		return 1
	}
	defer func() { _ = log.Sync() }()
	log = log.With(zap.String("node", cfg.Node.Name))
	reg := newRegistry()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.Admin.Listen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metricsHandler(reg))
		srv, err := serveHTTP(cfg.Admin.Listen, "admin interface", mux, log, nil)
		if err != nil {
			log.Error("witness admin", zap.Error(err))
			return 1
		}
		defer srv.Close()
	}
	log.Info("witness running", zap.String("version", version), zap.String("config", path))
	if err := cluster.RunWitness(ctx, cfg.ClusterConfig(), log.Named("cluster"), reg); err != nil {
		log.Error("witness stopped with an error", zap.Error(err))
		return 1
	}
	log.Info("witness stopped")
	return 0
}
