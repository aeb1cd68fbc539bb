package storage

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// API paths of the control handler.
const (
	PathStart  = "/agent/v1/start"
	PathStop   = "/agent/v1/stop"
	PathStatus = "/agent/v1/status"
	// PathClearSplitBrain is the operator's acknowledgement of a resolved
	// split brain (see Agent.ClearSplitBrain).
	PathClearSplitBrain = "/agent/v1/clear-split-brain"
)

// Result is the JSON body of start and stop responses.
type Result struct {
	Report Report `json:"report"`
	Error  string `json:"error,omitempty"`
	// Code names the sentinel error, for clients that branch on it:
	// peer_primary, disk_not_uptodate, split_brain, fence_failed,
	// step_failed, or "" (success or another error).
	Code   string `json:"code,omitempty"`
	Status Status `json:"status"`
}

var codes = []struct {
	err  error
	code string
	http int
}{
	{ErrPeerPrimary, "peer_primary", http.StatusConflict},
	{ErrDiskNotUpToDate, "disk_not_uptodate", http.StatusConflict},
	{ErrSplitBrain, "split_brain", http.StatusConflict},
	{ErrFenceFailed, "fence_failed", http.StatusConflict},
	{ErrStepFailed, "step_failed", http.StatusInternalServerError},
}

// Handler serves the control API:
//
//	POST /agent/v1/start   body (optional)                 -> Result
//	    {"force":bool, "peer_down":{"node":str, "how":"stopped"|"fenced"|"disconnected", "safety_delay_ns":int}}
//	POST /agent/v1/stop                                     -> Result
//	GET  /agent/v1/status                                   -> Status
//	POST /agent/v1/clear-split-brain                        -> Status
//
// POSTs need `Authorization: Bearer <token>` with the token from
// cfg.TokenFile (read on each request, so it can be rotated). Start and stop
// run to completion even if the client goes away: a half-done group is
// worse than a late answer.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("POST "+PathStart, a.authorized(func(w http.ResponseWriter, r *http.Request) {
		var opts StartOptions
		if r.ContentLength != 0 {
			err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&opts)
			if err != nil && !errors.Is(err, io.EOF) {
				writeJSON(w, http.StatusBadRequest, Result{Error: fmt.Sprintf("bad start body: %v", err)})
				return
			}
		}
		if opts.PeerDown != nil {
			if err := opts.PeerDown.Validate(); err != nil {
				writeJSON(w, http.StatusBadRequest, Result{Error: fmt.Sprintf("bad start body: %v", err)})
				return
			}
		}
		rep, err := a.Start(context.WithoutCancel(r.Context()), opts)
		a.writeResult(w, rep, err)
	}))
	mux.HandleFunc("POST "+PathStop, a.authorized(func(w http.ResponseWriter, r *http.Request) {
		rep, err := a.Stop(context.WithoutCancel(r.Context()))
		a.writeResult(w, rep, err)
	}))
	mux.HandleFunc("POST "+PathClearSplitBrain, a.authorized(func(w http.ResponseWriter, r *http.Request) {
		a.ClearSplitBrain()
		writeJSON(w, http.StatusOK, a.Status())
	}))
	return mux
}

func (a *Agent) writeResult(w http.ResponseWriter, rep Report, err error) {
	res := Result{Report: rep, Status: a.Status()}
	code := http.StatusOK
	if err != nil {
		res.Error = err.Error()
		code = http.StatusInternalServerError
		for _, c := range codes {
			if errors.Is(err, c.err) {
				res.Code, code = c.code, c.http
				break
			}
		}
	}
	writeJSON(w, code, res)
}

func (a *Agent) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want, err := secretfile.Read(a.cfg.TokenFile)
		tok := strings.TrimSpace(string(want))
		if err != nil || tok == "" {
			// Fail closed: no token configured means no control.
			writeJSON(w, http.StatusServiceUnavailable, Result{Error: fmt.Sprintf("token file %q unusable", a.cfg.TokenFile)})
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hapbx-agent"`)
			writeJSON(w, http.StatusUnauthorized, Result{Error: ErrUnauthorized.Error()})
			return
		}
		next(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
