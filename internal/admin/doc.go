// Package admin holds the access rules of hapbx's admin HTTP interface:
// the bearer token of admin.token_file (RequireToken), HTTPS with
// admin.tls (ServerTLS) and the client the CLI uses to reach it
// (ClientTLS: it trusts exactly the certificate the server presents),
// the profiling handlers behind the token (Pprof), and whether an address
// reaches beyond the host (Exposed).
//
// What it does not: the API's routes and their answers (status, the cold
// standby moves) are the daemon's, wired in cmd/hapbx; the status page is
// package admin/statuspage; nor does it listen or serve.
package admin
