package admin

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// RequireToken lets a request through to next only with the bearer token
// held in tokenFile, read on each request so it can be rotated. No file
// configured: 403; a file that cannot be used (missing, empty, readable by
// group or others): 503; a missing or wrong token: 401. Refusals are JSON
// {"error": "..."}.
func RequireToken(tokenFile string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tokenFile == "" {
			refuse(w, http.StatusForbidden, "admin.token_file is not set: calls that need the token are disabled")
			return
		}
		want, err := secretfile.Read(tokenFile)
		tok := strings.TrimSpace(string(want))
		if err != nil || tok == "" {
			refuse(w, http.StatusServiceUnavailable, "admin.token_file unusable")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hapbx-admin"`)
			refuse(w, http.StatusUnauthorized, "unauthorized")
			return
		}
		next(w, r)
	}
}

func refuse(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}
