// Package app assembles hapbx's components into the commands of the hapbx
// binary: it parses flags, loads the configuration, builds each component
// with its logger and metrics registry, serves the admin HTTP interface and
// handles signals. It holds no SIP, health or storage logic of its own.
//
// Commands: run (the proxy; with cold.enabled it also runs the cold standby
// coordinator), agent (a PBX node's storage agent with the health package's
// SIP OPTIONS + AMI FullyBooted readiness check), status, standby and
// takeover (through the proxy's admin API: GET /api/v1/status, POST
// /api/v1/cold/standby and /api/v1/cold/takeover with the bearer token of
// admin.token_file; over HTTPS trusting exactly admin.tls.cert when set),
// check-config, import-heartbeat (writes the files config/heartbeat
// generates from a Heartbeat pair's) and version. The admin interface's
// access rules (token, TLS, pprof) are package admin's; its routes are
// wired here.
package app
