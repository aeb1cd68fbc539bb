// Package statuspage is the operator's page of the admin listener (GET
// /status): one self-contained HTML page (embedded CSS, no script, no
// external asset, so it works offline) that reloads itself every few
// seconds and answers what an operator asks first: which proxy holds the
// VIP, each backend's state with its reason and since when, the cold
// standby group's place and each node's DRBD state, registrations and
// calls in progress, trunks (once hapbx has them: a marked place fed by
// the optional TrunkSource), and the last events with their times.
//
// It also keeps those last events: History is a bounded ring (the newest
// HistorySize events, in memory only, so a restarted proxy starts with
// none) that satisfies event.Sink, which the components report to.
//
// What it does not: gather the state (the daemon's Source builds each
// Snapshot from its components), decide who may see it (the daemon serves
// it like GET /api/v1/status, which shows the same facts: without the
// admin token; admin.tls and the listen address are the protection), or
// offer any action (switchovers stay behind the token in the API).
package statuspage
