package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/internal/admin"
)

// newRegistry is the metrics registry every command hands its components:
// their metrics plus the Go runtime's and the process's.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// metricsHandler serves reg in the Prometheus text format.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// serveAdmin serves h on the admin interface a describes: HTTPS with
// admin.tls, and a warning when it listens beyond this host without it.
func serveAdmin(a config.Admin, h http.Handler, log *zap.Logger) (func(context.Context) error, error) {
	var tlsConf *tls.Config
	if a.TLS.Cert != "" {
		var err error
		if tlsConf, err = admin.ServerTLS(a.TLS.Cert, a.TLS.Key); err != nil {
			return nil, fmt.Errorf("admin.tls: %w", err)
		}
	} else if admin.Exposed(a.Listen) {
		log.Warn("admin interface reachable from other hosts without TLS: its token and answers cross the network in clear; set admin.tls or listen on a loopback address",
			zap.String("listen", a.Listen))
	}
	return serveHTTP(a.Listen, "admin interface", h, tlsConf, log)
}

// serveHTTP opens addr and returns the function that serves h there
// (over TLS with tlsConf) until its ctx ends, then shuts down, giving
// requests in progress a second.
func serveHTTP(addr, what string, h http.Handler, tlsConf *tls.Config, log *zap.Logger) (func(context.Context) error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen %s: %w", what, addr, err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	log.Info(what+" up", zap.String("listen", addr), zap.Bool("tls", tlsConf != nil))
	return func(ctx context.Context) error {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		select {
		case err := <-served:
			return fmt.Errorf("%s stopped: %w", what, err)
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}, nil
}

// command runs one long-running command (run, agent, witness): it loads
// its file with load, builds the logger the file asks for, tagged with the
// node's name, and runs main; the exit code is 1 on any error.
func command(what, path string, load func(string) (config.File, error), stderr io.Writer,
	main func(config.File, *zap.Logger) error) int {
	cfg, err := load(path)
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
	if err := main(cfg, log); err != nil {
		log.Error(what+" stopped with an error", zap.Error(err))
		return 1
	}
	return 0
}
