package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.Admin.Listen != "" {
		ln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			log.Error("admin listen", zap.String("listen", cfg.Admin.Listen), zap.Error(err))
			return 1
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server stopped", zap.Error(err))
			}
		}()
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
