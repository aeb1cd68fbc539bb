// Package registrar is hapbx's binding cache: it keeps the phones'
// registrations so that calls from any Asterisk reach the phone, and so that
// phones stay registered while the Asterisk behind them is swapped.
//
// What it does:
//   - Save: from a REGISTER and the backend's 2xx, store one Binding per
//     Contact: AOR (sip:user@domain from To), Contact URI (from the 2xx,
//     which is authoritative), received address/transport/connection id,
//     Call-ID, CSeq, absolute expiry (Contact expires param, then Expires
//     header, capped at max_expires), User-Agent, backend and q. Expires: 0
//     and Contact: * remove; a Contact of the REGISTER missing from the 2xx
//     (URIs compared as RFC 3261 §19.1.4 says, so chan_pjsip dropping
//     ;transport=UDP is no refusal), or a binding the same backend accepted
//     earlier and no longer lists, is removed (not one stored in the last
//     32 s, the life of a REGISTER transaction: a 2xx made before it may
//     come after it, when two devices of one AOR register at once). Store does the same from the
//     source the request came on, and returns the 2xx for the phone: each
//     Contact hapbx holds states the lifetime hapbx keeps it (the
//     backend's, capped at max_expires; whole seconds, exactly as long as
//     the binding lives), and so does an Expires header if the 2xx had one.
//   - Limits: a REGISTER that would add a binding beyond max_bindings
//     (ErrFull) or give its AOR more than max_bindings_per_aor live
//     bindings (ErrAORFull) is refused whole (RFC 3261 10.3: all updates or
//     none); the new binding is refused, no held one is dropped. Renewals
//     and removals (Expires: 0, Contact: *) always pass. Fits asks the
//     same before the REGISTER reaches a backend. Any refusal, and a pair
//     Save cannot read, leaves the phone to get 503 with Retry-After. A
//     failed disk write refuses nothing: the binding is held (and
//     replicated), the write retried and counted in store_errors.
//   - Lookup (Reach for the proxy): the live bindings of an AOR in any
//     spelling, best first;
//     ErrUnknownAOR (never registered: 404) versus ErrNoBinding (registered
//     before, nothing live: 480). An AOR whose domain is local (domains plus
//     the proxy's own hosts given with WithLocalHosts, or any domain when
//     domains is empty) is keyed by its user part alone, so
//     "sip:201@<proxy address>" from Asterisk finds "sip:201@pbx.example.com".
//     The caller passes the advertised host, the listen addresses and the
//     VIPs to New with WithLocalHosts; IP addresses match in any spelling.
//     An AOR with no record stays known for 24 h. A user part that is a
//     registered Contact's user rather than an AOR's (Asterisk dialling the
//     contact it stored, e.g. baresip's "203-0x55d8c1e0") finds that binding.
//   - RefreshFromStore/RefreshResponse (AnswerRefresh for the proxy): with
//     no backend up, answer a plain refresh of a held binding (same AOR,
//     Call-ID, Contact and source, higher CSeq) with 200 and the remaining
//     expiry; anything else is ErrNotRefreshable (503 + Retry-After).
//   - Persistence in bbolt (data_dir/registrar.db): changes are queued in a
//     map keyed by binding (bounded by the number of bindings, never
//     blocking the SIP path) and written in one transaction per flush by
//     Run, which closes the store on return. Expired records are dropped at
//     load. A damaged file is logged with path and reason, counted, shown
//     in Snapshot, moved to registrar.db.corrupt-<time>, and the registrar
//     starts empty.
//   - Replication-ready: every local change is a versioned Record (hybrid
//     logical clock + node name; tombstones for removals, kept max_expires).
//     Merge is last-writer-wins per AOR and Contact over unexpired records:
//     idempotent, commutative, order-independent. Records gives the full
//     state for push/pull; OnChange hands local changes to a broadcaster.
//     StateSnapshot, ApplyState and StateChanges (replicate.go) offer the
//     same as opaque bytes: the registrar is a state channel of package
//     cluster, which it does not import.
//
// What it does not: no SIP transport, no authentication (Asterisk
// challenges), no forking or request routing (the proxy does that with the
// bindings Lookup returns), no network replication (cluster carries the
// Records), no GRUU/outbound flow tokens (RFC 5626 reg-id is kept in the
// Contact but not interpreted), no Path headers.
//
// Config (`registrar:` section):
//
//	data_dir         /var/lib/hapbx  bbolt directory; "" keeps memory only
//	min_expires      60s             TooBrief reports shorter requests (423)
//	max_expires      3600s           cap on a stored binding's lifetime; tombstone lifetime
//	default_expires  3600s           when neither 2xx nor REGISTER names one
//	purge_interval   10s             expired bindings and tombstones dropped
//	max_bindings     100000          new bindings beyond it: ErrFull (503); merges exempt
//	max_bindings_per_aor 10          live bindings of one AOR: ErrAORFull (503); merges exempt
//	domains          []              local domains; empty means every domain.
//	                                 With domains set, the proxy's own hosts
//	                                 (WithLocalHosts) are local too.
//
// Metrics:
//
//	hapbx_registrar_bindings             gauge    bindings held (until purged)
//	hapbx_registrar_aors                 gauge    AORs with at least one binding
//	hapbx_registrar_changes_total{op}    counter  add, refresh, remove, store, merge
//	hapbx_registrar_store_errors_total   counter  damaged file, bad record, failed write
//	hapbx_registrar_purged_total         counter  bindings dropped on expiry
//	hapbx_registrar_refused_total{reason} counter REGISTERs not kept: table_full,
//	                                              aor_limit, invalid, closed
package registrar
