// Package trunk is hapbx's side of the SIP trunks of providers: which
// source addresses are a provider's (ACL), where the provider's servers are
// (RFC 3263 resolution with failover), the one registration the VIP holder
// keeps at the provider, and the OPTIONS keepalive of each provider host.
//
// It does not touch the proxy's request path: package proxy declares the
// interfaces it needs (match a source to a trunk, the next host of a trunk,
// the trunk's credentials) and cmd/hapbx/internal/app wires this package to
// them. It sends SIP through a Sender it is given (the proxy's sipgo client,
// so requests leave from the proxy's socket).
//
// Configuration: the list `trunks` (Config): name, hosts, transport, acl,
// credentials_file, user, domain, register, register_interval, keepalive,
// backends.
package trunk
