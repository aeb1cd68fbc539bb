// Package trunk is hapbx's side of the SIP trunks of providers: which
// source addresses are a provider's (ACL), where the provider's servers are
// (RFC 3263), the one registration the VIP holder keeps at the provider,
// and the OPTIONS keepalive of each provider host. Set holds them all.
//
//   - ACL (acl.go): a request's source address to its trunk, by netip
//     prefix; when networks of two trunks overlap, the most specific
//     (longest) prefix wins; one prefix in two trunks is refused. Without
//     `acl`, a trunk's IP-literal hosts are its ACL.
//
//   - Resolver (resolve.go): NAPTR of the configured transport, SRV
//     (priority, then RFC 2782 weighted draw), A/AAAA; an IP address skips
//     DNS, a name with a port is looked up in A/AAAA only; answers kept for
//     their TTL (at least 1 s).
//
//   - Registration (register.go): REGISTER with the VIP as Contact, the
//     401/407 answered by digest, refreshed at half the granted expiry,
//     retried with backoff, the provider's hosts tried in order; its State
//     (Marshal/UnmarshalState) is what a twin continues from (Continue:
//     same Call-ID, next CSeq).
//
//   - Keepalive (keepalive.go): OPTIONS to every address of the hosts each
//     `keepalive`; any answer is alive (fall 2, rise 1); Trunk.Targets
//     lists the live hosts first.
//
//   - Replication (replicate.go): Set is a cluster state channel; the VIP
//     holder sends each registration's State before every REGISTER and
//     after every round, the other nodes Continue from it. Only the holder
//     registers (SetConfig.Active); every node runs the keepalives.
//
// It does not touch the proxy's request path: package proxy declares the
// interfaces it needs (proxy.Trunks: Set.Match, Set.Targets,
// Set.Authorize, Set.Backends, adapted for its types) and
// cmd/hapbx/internal/app wires them. It sends SIP through a Sender it is given (proxy.Proxy.Do, so requests leave from
// the proxy's socket with its Via). It does not decide who holds the VIP,
// nor unregister when it stops (the twin continues the registration).
//
// Configuration: the list `trunks` (Config): name, hosts, transport, acl,
// credentials_file, user, domain, register, register_interval, keepalive,
// backends.
//
// Metrics (label trunk: the configured name): hapbx_trunk_registered,
// hapbx_trunk_registration_expiry_timestamp_seconds,
// hapbx_trunk_registrations_total{result=ok|rejected|timeout},
// hapbx_trunk_hosts_up, hapbx_trunk_keepalives_total{result=ok|timeout}.
package trunk
