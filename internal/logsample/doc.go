// Package logsample keeps a flood of identical log lines from flooding the
// log: zap's sampler (zapcore.NewSamplerWithOptions) writes the first few
// entries of each message and level per tick and drops the rest; this
// package counts what it dropped, per message, and writes one line per
// message with that count ("repeated log lines suppressed") at most once a
// report interval, and at Sync.
//
// What it does not: choose levels or outputs (the daemon's logger
// construction does), or sample across different messages (each message
// has its own allowance, as in zap).
package logsample
