// Package lab runs hapbx's network-namespace lab: the real `hapbx` binary as two
// proxies sharing a VIP, a witness, two PBX backends (SIPp playing Asterisk, or a
// real asterisk when one is given) and SIPp phones, each in its own namespace on
// one bridge. It backs `make demo` (cmd/hapbx-lab demo), `make e2e` and the
// end-to-end tests of issue 5 in this package.
//
// Topology (all names start with "hlab"; 10.214.0.0/24 exists only inside the
// namespaces and is routed nowhere):
//
//	hlab-sw       bridge hlabbr0; one veth hlabs-<host> per host
//	hlab-proxy1   10.214.0.1   hapbx run (priority 100, or 200 with failback)
//	hlab-proxy2   10.214.0.2   hapbx run
//	hlab-witness  10.214.0.3   hapbx witness
//	hlab-pbx1     10.214.0.11  backend pbx1 (preferred)
//	hlab-pbx2     10.214.0.12  backend pbx2 (hot standby)
//	hlab-phones   10.214.0.50  SIPp phones and callers, the OPTIONS prober
//	VIP           10.214.0.100/24 on hlab0 of the raft leader
//
// Every process is started with `ip netns exec NS ...` in its own process group.
// Close (also on SIGINT/SIGTERM/SIGHUP when Options.Signals is set, and on any
// error in New) SIGKILLs them and deletes every hlab* namespace; New first removes
// whatever an interrupted earlier run left (PreClean). Admin interfaces listen on
// 127.0.0.1:9060 inside each namespace and are read through sockets opened in
// that namespace (InNS); the VIP is read with netlink in each namespace.
//
// A SIGKILLed proxy's VIP is removed from its interface right after the kill, as
// the systemd unit's ExecStopPost does (on a dead host nothing answers for it).
//
// What it does not do: cold standby (DRBD, `hapbx agent`) — the backends are hot
// standby; TCP/TLS transports; IPv6.
package lab
