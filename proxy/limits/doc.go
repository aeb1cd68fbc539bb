// Package limits keeps hapbx inside its means under load and abuse.
//
// What it does:
//   - Budget samples the process (runtime/metrics and /proc/net/snmp) on a
//     ticker and answers two questions at the cost of an atomic load:
//     Shedding (the memory hapbx will reach before its next collection is
//     near the memory budget: refuse new work) and Strained (hapbx itself was short of memory, CPU or UDP
//     receive buffer lately: a backend's silence may be hapbx's own fault),
//     and, when asked (TuneGC), sets GOGC from the live state: 400 while
//     it is small, down to 100 as it grows, so that the garbage between
//     collections stays about an eighth of the budget;
//   - Guard is the per-source flood guard, after Kamailio's pike: requests
//     per source address over a sliding window; a source past the rate is
//     answered once and then ignored for a cool-down, with one log line
//     when it is blocked and one, with the number dropped, when it is
//     released. Its table is bounded.
//
// What it does not: set the Go soft memory limit (the wiring does, with
// debug.SetMemoryLimit and Config.Memory, and calls TuneGC unless GOGC is
// in the environment), answer or drop requests, or
// decide who is exempt (package proxy does, at its door, by source).
//
// Config keys (section `limits`): memory (512MiB), max_transactions
// (10000, used by package proxy), flood.rate (2000; 0 is off),
// flood.window (2s), flood.cooldown (30s), flood.max_sources (50000).
//
// Metrics: hapbx_limits_memory_budget_bytes, hapbx_limits_memory_in_use_bytes,
// hapbx_limits_memory_peak_bytes,
// hapbx_limits_shedding, hapbx_limits_strained_total{cause} (sched, rcvbuf),
// hapbx_limits_gc_percent,
// hapbx_limits_flood_blocked_total, hapbx_limits_flood_dropped_total,
// hapbx_limits_flood_table_full_total, hapbx_limits_flood_sources,
// hapbx_limits_flood_blocked_sources.
package limits
