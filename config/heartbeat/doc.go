// Package heartbeat converts a Heartbeat + DRBD pair's configuration
// (ha.cf, authkeys, haresources, drbd.conf) into hapbx's files: the
// proxy's hapbx.yaml and, for a cold standby, the PBX node's agent file.
//
// It maps what hapbx has an equivalent for (nodes, the VIP of the
// IPaddr/IPaddr2 resource, the resource group drbddisk / Filesystem /
// service, auto_failback, keepalive/deadtime/warntime/initdead, ping,
// stonith and stonith_host as fence commands) and lists every directive it
// does not map with its file and line, so nothing is dropped silently.
// Secrets are never copied: authkeys' key and stonith parameters become
// secret files the operator creates (Result.Secrets names them).
//
// It does not touch the system: Import reads the files it is given and
// returns the generated text; writing it is the caller's job. It does not
// rewrite drbd.conf (DRBD keeps its own configuration) and does not
// validate the result (config.Parse and config.ParseAgent do).
package heartbeat
