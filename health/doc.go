// Package health watches the Asterisk backends and says, for each, whether
// it is up, suspect, down or still unknown.
//
// What it does:
//
//   - Active SIP check: an OPTIONS on a socket of its own per probe (no
//     transaction layer), started every interval without waiting for the
//     previous probe to end, each with its own timeout (longer than the
//     interval: an answer slower than the interval still counts). Verdicts
//     apply in the order the probes were sent; a timeout that ends after a
//     newer probe was answered is dropped. On UDP the socket is connected,
//     so the ICMP port-unreachable that follows a killed Asterisk counts as
//     a failure at once instead of after the timeout. Any final answer in
//     alive_codes counts as good (by default 200-499: Asterisk answers 404
//     to an OPTIONS without a user part).
//   - Active AMI check (backends with AMI settings): one persistent manager
//     session (AMIClient) that logs in, waits for Event: FullyBooted and
//     pings every ami_interval; an unanswered ping ends the session, which is
//     re-opened with bounded exponential backoff. The check is good while
//     the session is logged in, fully booted and answering.
//   - Bridges (FollowBridges, amibridges.go): the same session follows which
//     two SIP calls the backend bridges, from BridgeEnter, BridgeLeave and
//     BridgeDestroy (each channel's Call-ID in its ChanVariable
//     HAPBX_CALLID, set by the shipped dialplan and put there by
//     manager.conf's channelvars), and tells a BridgeSink (the proxy's
//     links, joined in cmd) when a bridge of exactly two SIP channels
//     appears, changes (a transfer, a re-bridge) or breaks. At each login it
//     learns the bridges already up with BridgeList and BridgeInfo (no
//     write permission needed). Per backend at most the bound FollowBridges
//     is given (sip.max_dialogs) is kept; the tables go with the session
//     (what the sink was told stays there: a dead Asterisk's bridges are
//     what its takeover needs).
//   - Passive check: Checker.Suspect, called by the proxy when a forwarded
//     request timed out, drew a 503 or hit a transport error.
//   - State machine per backend, on the verdict of all required checks:
//     unknown/down -> up after rise good probes; up -> suspect at the first
//     bad probe (or a Suspect call); suspect -> up on the next good probe;
//     anything -> down after fall consecutive bad probes. A suspect backend
//     is probed every suspect_interval. With the defaults a killed backend
//     (ICMP port-unreachable) is down 50-150 ms after the kill, a silent one
//     (frozen process, host powered off: no answer, no ICMP) at most
//     fall*interval + timeout = 450 ms after its last answer, while one
//     answer in time, up to 250 ms late, keeps it up. A Suspect call counts
//     as one bad probe but never, alone, makes a backend down.
//   - Changes go to subscribers (Subscribe), to a zap log line with the
//     reason, to metrics, and to an event.Sink (WithEvents: the status
//     page's last events). Snapshot feeds /api/v1/status.
//   - With WithLocalLoad, a SIP probe left unanswered while hapbx itself
//     is strained (package limits) counts neither way, for up to 10 s in a
//     row: hapbx's own overload never makes a backend suspect or down; a
//     refusal or a bad answer still counts, and so does silence after that.
//   - Heard (the proxy's LifeReporter): a SIP probe left unanswered while
//     the backend answered requests hapbx forwarded to it (anything but
//     100, 408, 503) counts neither way: it is busy, not dead (a
//     cold-started Asterisk taking the burst of held calls); a killed,
//     frozen or powered-off backend answers nothing and is detected as
//     before.
//
// What it does not do: pick the active backend (package failover), read
// secret files (the caller passes the AMI secret), or retry requests.
//
// Configuration (section health:):
//
//	interval: 100ms          # between the starts of two SIP probes of one backend
//	suspect_interval: 50ms   # the same while a backend is suspect
//	timeout: 250ms           # per SIP probe: how long its OPTIONS waits for the answer
//	rise: 2                  # consecutive good probes to become up
//	fall: 2                  # consecutive bad probes to become down
//	ami_interval: 500ms      # AMI Ping period
//	ami_timeout: 400ms       # AMI connect, banner, login, Ping answer
//	alive_codes: [200-499]   # "404", "2xx" or "200-499" items
//	require: [sip, ami]      # a backend without AMI settings needs sip only:
//	                         # warned once when it is added, status ami "not configured"
//	ami_backoff_max: 2s      # AMI reconnect backoff: 100ms doubling up to this
//
// Metrics:
//
//	hapbx_backend_up{backend}                               1 while up or suspect, else 0
//	hapbx_health_probe_duration_seconds{backend,kind}       kind sip (every OPTIONS probe) or ami (every Ping)
//	hapbx_health_transitions_total{backend,from,to}
//	hapbx_health_probes_excused_total                       unanswered probes not counted (hapbx strained)
//	hapbx_health_probes_busy_total                          unanswered probes not counted (backend answering calls)
//	hapbx_health_ami_bridges_untracked_total{backend}       bridges not followed: the bound was reached
//
// Test helpers, for tests only: health/amitest (an AMI server) and
// internal/testkit (SIPp answering OPTIONS).
package health
