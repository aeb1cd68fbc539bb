package app

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/hapbx/hapbx/admin"
	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/proxy"
	"github.com/hapbx/hapbx/proxy/trunk"
	"github.com/hapbx/hapbx/registrar"
)

// Status is the body of GET /api/v1/status.
type Status struct {
	Node    string `json:"node"`
	Version string `json:"version"`
	Uptime  string `json:"uptime"`
	Routing string `json:"routing"`
	Active  string `json:"active_backend"`
	// LeaderActive is the active backend the VIP holder decided, as
	// replicated to every proxy (absent without a cluster).
	LeaderActive string                `json:"leader_active_backend,omitempty"`
	Health       []health.Status       `json:"backends_health"`
	Proxy        proxy.Status          `json:"proxy"`
	Registrar    registrar.Status      `json:"registrar"`
	Media        []media.SessionStatus `json:"media_sessions,omitempty"`
	// Cluster is membership, quorum and the VIP holder (nil when alone).
	Cluster *cluster.Status `json:"cluster,omitempty"`
	// Cold is the cold standby coordinator's view (nil in hot standby).
	Cold *failover.ColdStatus `json:"cold,omitempty"`
	// Trunks: each provider trunk's registration and host health.
	Trunks []trunk.Status `json:"trunks,omitempty"`
}

func (d *daemon) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(d.reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !d.proxy.Ready() {
			http.Error(w, "SIP listeners down or draining\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d.status())
	})
	d.coldRoutes(mux)
	if d.cfg.Admin.Pprof {
		admin.Pprof(mux, d.cfg.Admin.TokenFile)
	}
	return mux
}

func (d *daemon) status() Status {
	return Status{
		Node:         d.cfg.Node.Name,
		Version:      version,
		Uptime:       time.Since(d.started).Round(time.Second).String(),
		Routing:      d.cfg.Failover.Routing,
		Active:       d.selector.Active(),
		LeaderActive: d.leaderActive(),
		Health:       d.health.Snapshot(),
		Proxy:        d.proxy.Status(),
		Registrar:    d.bindings.Snapshot(),
		Media:        d.mediaSnapshot(),
		Cold:         d.coldStatus(),
		Cluster:      d.clusterStatus(),
		Trunks:       d.trunkStatus(),
	}
}

func (d *daemon) trunkStatus() []trunk.Status {
	if d.trunks == nil {
		return nil
	}
	return d.trunks.Status()
}

func (d *daemon) mediaSnapshot() []media.SessionStatus {
	if d.relay == nil {
		return nil
	}
	return d.relay.Snapshot()
}
