package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/internal/admin"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/storage"
)

// setupCold builds the cold standby coordinator when cold.enabled. Agents
// are reached at backends[].agent.url when set, else at the URL the
// backend's agent announces in the cluster; only the VIP holder acts
// (every proxy when not clustered). Call after setupCluster.
func (d *daemon) setupCold() error {
	if !d.cfg.Cold.Enabled {
		return nil
	}
	nodes, err := d.coldNodes(d.cfg.Backends)
	if err != nil {
		return err
	}
	c, err := failover.NewCoordinator(d.cfg.Cold, nodes, d.log.Named("cold"), d.reg, failover.WithLeader(d.isLeader), failover.WithColdHealth(d.health), failover.WithColdEvents(d.events))
	if err != nil {
		return fmt.Errorf("cold: %w", err)
	}
	d.cold = c
	return nil
}

// coldNodes builds the coordinator's nodes from the backends' agent:
// settings (token files read now).
func (d *daemon) coldNodes(backends []config.Backend) ([]failover.ColdNode, error) {
	nodes := make([]failover.ColdNode, len(backends))
	for i, b := range backends {
		tok, err := secretfile.Read(b.Agent.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("backends[%d].agent.token_file: %w", i, err)
		}
		// No overall client timeout: a group start may take minutes; the
		// coordinator bounds each call with its context.
		client := storage.Client{BaseURL: b.Agent.URL, Token: strings.TrimSpace(string(tok)), HTTP: &http.Client{}}
		var agent failover.Agent = client
		if b.Agent.URL == "" {
			if d.cluster == nil {
				return nil, fmt.Errorf("backends[%d].agent.url: must be set without a cluster", i)
			}
			agent = storage.NewAnnouncedClient(b.Name, client, d.announcedAgents, d.log.Named("cold"))
		}
		n := failover.ColdNode{
			Name:         b.Name,
			Agent:        agent,
			FenceTimeout: b.Agent.Fence.Timeout,
			SafetyDelay:  b.Agent.Fence.SafetyDelay,
		}
		if b.Agent.Fence.Command != "" {
			n.Fence = storage.CommandFencer{Command: b.Agent.Fence.Command, Timeout: b.Agent.Fence.Timeout}
		}
		nodes[i] = n
	}
	return nodes, nil
}

// announcedAgents lists the storage agents that joined the cluster.
func (d *daemon) announcedAgents() []storage.Announced {
	var out []storage.Announced
	for _, a := range d.cluster.Services() {
		out = append(out, storage.Announced(a))
	}
	return out
}

func (d *daemon) coldStatus() *failover.ColdStatus {
	if d.cold == nil {
		return nil
	}
	st := d.cold.Status()
	return &st
}

// moveRequest is the body of POST /api/v1/cold/standby and /takeover.
type moveRequest struct {
	// Node: for standby, the node to give the group up (default: the
	// holder); for takeover, the node to take it (required).
	Node string `json:"node"`
}

// moveResponse is their answer.
type moveResponse struct {
	Report failover.MoveReport `json:"report"`
	Error  string              `json:"error,omitempty"`
}

// coldRoutes adds the manual switchover endpoints (Heartbeat's hb_standby
// and hb_takeover). They need the bearer token of admin.token_file; with
// none configured they are refused.
func (d *daemon) coldRoutes(mux *http.ServeMux) {
	handle := func(takeover bool) http.HandlerFunc {
		return admin.RequireToken(d.cfg.Admin.TokenFile, func(w http.ResponseWriter, r *http.Request) {
			var req moveRequest
			if r.ContentLength != 0 {
				if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
					writeJSON(w, http.StatusBadRequest, moveResponse{Error: "bad body: " + err.Error()})
					return
				}
			}
			if d.cold == nil {
				writeJSON(w, http.StatusConflict, moveResponse{Error: "cold standby is not enabled (cold.enabled)"})
				return
			}
			to := ""
			switch {
			case takeover && req.Node == "":
				writeJSON(w, http.StatusBadRequest, moveResponse{Error: "takeover: node is required"})
				return
			case takeover:
				to = req.Node
			case req.Node != "" && req.Node != d.cold.Holder():
				writeJSON(w, http.StatusOK, moveResponse{Report: failover.MoveReport{From: req.Node, Manual: true, Reason: "does not hold the group; nothing to do"}})
				return
			}
			d.log.Warn("operator switchover", zap.Bool("takeover", takeover), zap.String("node", req.Node))
			rep, err := d.cold.Switchover(context.WithoutCancel(r.Context()), to)
			code := http.StatusOK
			res := moveResponse{Report: rep}
			if err != nil {
				res.Error = err.Error()
				code = http.StatusConflict
				if errors.Is(err, failover.ErrUnknownNode) {
					code = http.StatusNotFound
				}
			}
			writeJSON(w, code, res)
		})
	}
	mux.HandleFunc("POST /api/v1/cold/standby", handle(false))
	mux.HandleFunc("POST /api/v1/cold/takeover", handle(true))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// waitTimeout bounds the CLI's wait for a switchover.
const waitTimeout = 10 * time.Minute
