package admin

import (
	"net/http"
	"net/http/pprof"
)

// Pprof adds Go's profiling handlers under /debug/pprof/ to mux, each
// behind the bearer token of tokenFile: a profile shows the process's
// memory (keys included) and costs CPU while it runs.
func Pprof(mux *http.ServeMux, tokenFile string) {
	guard := func(h http.HandlerFunc) http.HandlerFunc { return RequireToken(tokenFile, h) }
	mux.HandleFunc("GET /debug/pprof/", guard(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/cmdline", guard(pprof.Cmdline))
	mux.HandleFunc("GET /debug/pprof/profile", guard(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/symbol", guard(pprof.Symbol))
	mux.HandleFunc("GET /debug/pprof/trace", guard(pprof.Trace))
}
