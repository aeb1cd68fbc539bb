// Package event is the words the components use to report what an operator
// wants to see first on the status page: a backend changing state, the
// active backend changing, the VIP and the raft leadership moving, a cold
// standby move. It holds only the Event type and the Sink interface, so
// that health, failover and cluster can report without importing whoever
// keeps the events (the bounded history of admin/statuspage, wired in
// cmd/hapbx).
//
// What it does not: keep, count or deliver events; it is no log either
// (components still log each change with zap).
package event
