// Package proxy is hapbx's transaction-stateful SIP proxy (RFC 3261 §16) in
// front of the Asterisk backends, built on github.com/emiago/sipgo.
//
// What it does:
//   - listens on UDP, TCP and TLS (config `sip.listen`); marks the top Via
//     with received/rport (RFC 3581) so replies reach phones behind NAT;
//   - validates requests (400 for missing Via/From/To/Call-ID/CSeq or a
//     CSeq method that does not match; sanity.go: RFC 4475's broken
//     messages get 400/420/505/416 and are never forwarded; a request
//     sipgo cannot parse is answered 400 when its top Via can be read,
//     sanity_unparsable.go; an RFC 2543 request, whose Via has no
//     RFC 3261 branch, is matched to its transaction as RFC 3261 §17.2.3
//     says, rfc2543.go), decrements Max-Forwards (483 at 0;
//     an OPTIONS at 0 is answered 200), detects loops with a hash in its own
//     Via branch (482), derives the rest of that branch from the request
//     received, the target and the attempt, keyed with the dialog secret
//     (branch.go, RFC 3261 §16.11), so that the twin forwards a phone's
//     retransmission with the branch the dead proxy gave it (a
//     retransmission for the backend, not a merged request answered 482),
//     pops its own Route headers and Record-Routes every
//     dialog-creating request with `sip.advertise` (two entries when the
//     transport changes, RFC 5658), so every in-dialog request passes it;
//   - answers OPTIONS addressed to itself (keepalives of trunks and phones);
//   - admits requests at a door (door.go, WithDoor) before any state is
//     made: a source past the flood guard's rate (backends and Door.Exempt
//     excepted) gets 503 once and is then ignored for a cool-down; while
//     the memory budget nears or max_transactions requests are pending, new
//     INVITE, REGISTER, SUBSCRIBE and MESSAGE get 503 with Retry-After. Over
//     UDP this runs in the transport's read filter, on the datagram's bytes;
//     over TCP/TLS first thing in handle; a retransmission of a request let
//     in is never shed; a backend's failure is not held against it when
//     hapbx was strained at any moment since the request was sent;
//   - keeps finished transactions 5 s after a 2xx and 10 s after a
//     non-INVITE's final, not sipgo's 32 s (retention.go,
//     ShortenRetention): under load they were most of its memory;
//   - trusts by source address (trust.go): a backend's requests go where
//     they name; anyone else's reach the backends only: an initial request
//     with a Route to another host gets 403, an in-dialog request is
//     forwarded only with the token hapbx wrote into its own Record-Route
//     (token.go: HMAC over Call-ID, caller's tag and backend, keyed with
//     `sip.dialog_secret_file`, shared by both proxies of a pair) and only
//     to that token's backend; refusals are counted, never forwarded;
//   - routes the providers' trunks (trunks.go, WithTrunks): a request from
//     a trunk's ACL goes to the trunk's backends marked X-Hapbx-Trunk (a
//     header only hapbx writes; removed from everyone else; not counted by
//     the flood guard); a backend's initial request naming a trunk in it
//     goes to the provider's hosts in order (hop_timeout and transport
//     failures fail over, as for backends), and the provider's 401/407 is
//     answered with the trunk's credentials (the request sent again with
//     CSeq plus one and a branch derived from the challenged one, so the
//     twin sends the same and forwards the provider's answer to it as a
//     stray after a VIP move; the ACK of its 2xx raised to match, responses
//     upstream carrying the caller's CSeq), never relayed; the provider
//     sees `sip.advertise` (the VIP), never a backend, in Via,
//     Record-Route and Contact: a backend's Contact in its requests to a
//     provider (in-dialog ones, re-INVITE and UPDATE included, by a next
//     hop in a trunk's ACL, also when named by DNS: A/AAAA, else SRV, as
//     sipgo resolves it to send) and its 1xx/2xx to a provider's requests becomes hapbx's
//     address with the original in a URI parameter signed with the dialog
//     secret (contact.go, as Kamailio's add_contact_alias), given back to
//     the provider's in-dialog requests to it (also by the twin); an
//     alias the pair did not make for that Call-ID is refused;
//   - sends a new request from a phone or trunk to the backends a Router
//     names, in order: a backend that stays silent for `sip.hop_timeout`
//     (Asterisk answers 100 Trying at once), fails at the transport, or
//     answers 408/503 is skipped for the next one inside the same server
//     transaction, unless a provisional beyond 100 was already relayed or
//     the caller cancelled; with none left the caller gets 503 with
//     Retry-After. The one backend the router offers (a cold standby's
//     PBX) is waited for past hop_timeout, up to no_backend_wait, while
//     it stays routable, as for in-dialog requests; one given up as down
//     is tried again by the hold if it comes back. A backend declared
//     down after only a 100 Trying is given up the same way (the 100 has
//     stopped Timer B), and so is one declared down while the call rings
//     (after its 180/183): a dead PBX sends no final response, so the call
//     goes on to the next backend (or the hold) and the caller hears the
//     new backend's answer under another To-tag, as from a forking proxy,
//     instead of ringing until Timer C. A call a backend places (to a
//     phone or provider) is cancelled once that backend is declared down
//     while it rings (hapbx_proxy_placer_down_cancels_total): the dead PBX
//     would never end it. A 408/503 or silence always marks the backend suspect
//     (an immediate probe), unless hapbx itself was strained or the send
//     failed for a reason of this host (door.go: excused, counted). A request re-sent after a 401/407 challenge goes
//     to the backend that issued the challenge (it holds the nonce) while
//     that backend is routable. hop_timeout applies to every new request,
//     not only INVITE: Asterisk answers REGISTER, OPTIONS and the rest at
//     once too, and a backend that does not is treated as failing;
//   - sends its 100 Trying to an INVITE once the INVITE is with a next hop
//     (the next hop's first provisional), after 200 ms without one, or at
//     once when it holds the INVITE (trying.go, RFC 3261 §17.2.1): until
//     then the caller retransmits, and the twin of a proxy that died gets
//     the retransmission (TakeOverTrying: sipgo's own timer is off);
//   - holds a new request that finds no healthy backend for up to
//     `sip.no_backend_wait` (100 Trying first), so calls placed during a
//     cold failover are set up late rather than refused; the caller's
//     CANCEL, a drain or the deadline end the wait; nothing is held while
//     the door sheds new work, nor while hapbx is strained when a backend
//     that failed the request is still routable (its failure was excused:
//     no other comes up); a request whose backends are down is held even
//     while strained (a cold failover's burst strains hapbx itself);
//   - runs Timer C (`sip.timer_c`, RFC 3261 §16.8) on every proxied INVITE
//     and fork: from the send, reset by provisionals, it cancels a call that rings too
//     long; a CANCEL answered by no final response within 64*T1 ends the
//     caller's transaction with 408;
//   - forwards in-dialog requests by their Route / Request-URI; an in-dialog
//     request to a backend waits while the backend is merely slow and gets
//     408 only once health has declared it down (RFC 3261 §15.1.1: the
//     phone's call is over either way);
//   - locates phones for requests from a backend (a Locator, implemented by
//     package registrar): an AOR on the proxy's own host (Asterisk dialling
//     PJSIP/201@hapbx) or a registered Contact goes to the address and
//     connection the phone's REGISTER came from, not the Contact host (often
//     private, behind NAT); an AOR with several contacts is forked in
//     parallel with RFC 3261 §16.7 response choice and CANCEL of the other
//     branches (on a 2xx or a 6xx); unknown AOR 404, no live binding 480.
//     Forwarding, retrying and forking share one response context
//     (respond.go): Timer C, CANCEL, drain, best response;
//   - stores a binding when a backend accepts a REGISTER (a
//     BindingRecorder), and answers a REGISTER refresh from the store
//     when no backend can take it (503 with Retry-After for anything else);
//     tells the phone only what the recorder keeps: a REGISTER whose new
//     bindings it could not keep (Fits, asked before any backend sees it,
//     or Store on the 2xx) gets 503 with Retry-After instead of the 2xx,
//     and the 2xx relayed states the expiries the recorder honours;
//   - tracks confirmed dialogs per backend, both calls placed by phones and
//     calls a backend placed to registered phones (bounded: max_dialogs,
//     dialog_ttl) and, told that a backend is down (HangUpBackend), sends
//     each of its calls' phones a BYE;
//   - keeps two-party calls up when their backend dies (bridge.go,
//     takeover.go): a backend's initial INVITE carrying X-Hapbx-Bridge
//     (the shipped dialplan puts the incoming leg's Call-ID there) links
//     its call to that one; the header is removed from every request, so
//     only a backend can link and no phone sees it; the backend's manager
//     reports its bridges too (Bridged, Unbridged: package health's
//     BridgeSink, amibridge.go), and a bridge of two calls hapbx confirmed
//     through that backend replaces either call's link, so after a blind
//     or attended transfer or a re-bridge the link names the two calls
//     actually bridged, and a broken bridge's link goes (a bridge reported
//     before a leg's 2xx waits up to 32 s for it; bounded by max_dialogs);
//     links are bounded by
//     max_dialogs and live as long as their dialogs (dialog_ttl, renewed by
//     in-dialog requests, dropped on BYE). When HangUpBackend finds both
//     dialogs of a link, and the MediaAnchor can join calls (media.Relay:
//     both legs anchored, same codec), the two phones' media are joined in
//     the relay instead of the BYEs, and hapbx answers for the dead PBX in
//     both dialogs: a BYE is answered 200 and passed on to the other phone
//     (both relay sessions released); a re-INVITE or UPDATE is answered
//     from the relay (same relay port and codec, direction mirrored: hold
//     and resume), 488 when the offer drops the codec; OPTIONS and INFO
//     get 200, other methods 501; Session-Expires (RFC 4028) is echoed with
//     the phone as refresher (unless it names hapbx); a phone that is the
//     refresher and stops ends the call with BYEs to both, and where the
//     dead backend was the refresher hapbx refreshes the phone itself (an
//     UPDATE at half the interval; refused: BYEs). Calls without a link,
//     with a codec mismatch or un-anchored media get the BYEs as before;
//   - replicates its confirmed dialogs and their links to the twin proxy
//     (replicate.go, DialogReplica: a state channel of package cluster):
//     a record on confirm, on a change of the backend's CSeq or of the
//     session interval (a joined call's too), a released record on BYE, on
//     hang-up and when a joined call ends; records carry a version and
//     released ones leave a tombstone for a minute, so duplicates and
//     reordering do no harm. Only the VIP holder hangs up or keeps up the
//     calls of a dead backend, and only it answers for a joined call; a
//     standby notes the death and, should it take the VIP later
//     (DialogReplica.Run), acts then on the dialogs confirmed before it:
//     a call set up through a proxy that has since died still gets its BYE
//     or is kept up, and a call the dead holder had joined is joined again
//     (its dialogs, naming the other leg, stay replicated until it ends;
//     the relay's records carry the legs' SDP). A proxy that loses the VIP
//     alive parks its joined calls, sending the phones nothing (timers
//     stopped; the dialogs kept as a standby keeps them, the relay's join
//     kept); the twin's records update them, its released records end them
//     and release the join (also of a call joined here: no BYE from this
//     proxy), so taking the VIP back joins again only the calls still up;
//   - anchors media when given a MediaAnchor (package media): the SDP of
//     every request and response is rewritten through the relay, the legs
//     told apart by the caller's From tag; a new call with no relay ports
//     left gets 503, an SDP the relay cannot parse passes un-anchored; a
//     re-INVITE or UPDATE of an anchored call whose SDP the relay cannot
//     take gets 488 and the call keeps its anchored media
//     (hapbx_media_updates_refused_total);
//   - relays CANCEL downstream once a provisional was seen, absorbs
//     hop-by-hop ACKs of non-2xx finals, forwards 2xx ACKs statelessly end
//     to end, and relays 2xx retransmissions of INVITE (RFC 6026)
//     statelessly upstream; forwards statelessly a final response that matches no
//     transaction (§16.7 step 1, stray.go: the twin's, after a failover;
//     2xx retransmissions after Timer M) when its top Via is the pair's
//     own, its branch proving it, from its first retransmission on (the
//     first copy may cross the caller's own retransmission, which takes the
//     stateful way), and drops any other, every provisional and every 487
//     (hapbx answers the caller's CANCEL itself); its SDP is anchored
//     when the relay has the call's session. Deviation from §16.10, owed to sipgo's
//     transaction layer: the caller's CANCEL is answered 200 and its INVITE
//     487 by sipgo at once, not by relaying the callee's 487; a 2xx that
//     crosses the CANCEL is still relayed to the caller (statelessly), who
//     must ACK and BYE it as RFC 3261 requires of a UAC;
//   - takes messages of any size a phone sends, up to max_message_size
//     (64 KB) over UDP, TCP and TLS (LiftTransportLimits: sipgo's UDP
//     limits are process-wide, lifted once by the wiring). A request that
//     grows past 1300 bytes for a UDP next hop goes over TCP when the
//     backend listens on TCP (`backends[].tcp`, RFC 3261 §18.1.1) and so
//     does the proxy, otherwise as one UDP datagram, as Kamailio and
//     Asterisk send it; one too large even for that gets 513 (size.go). A
//     message's size never makes the caller get 503 nor a backend suspect;
//   - bounds the TCP and TLS connections it accepts (conns.go): at most
//     `sip.tcp.max_connections` in all and `max_per_source` from one IP
//     address (closed at accept, counted); a message, or a TLS handshake,
//     must arrive whole within `read_timeout` of its first byte; a
//     connection silent for `idle_timeout` is closed unless a tracked
//     dialog reaches its phone over it. idle_timeout outlasts the longest
//     registration (config checks it against registrar.max_expires), so a
//     registered phone's connection, over which it receives its calls,
//     stays open between its refreshes; the stream is framed by
//     Content-Length and each message goes through the same intake as a
//     UDP datagram; a message whose Content-Length is missing, repeated or
//     not a number is answered 400 and the connection closed;
//   - once Run's context ends answers new initial requests 503 while
//     transactions in flight finish, for at most `sip.drain_timeout`; those
//     still pending (all at once on Abort) then get 503 and their
//     downstream INVITEs a CANCEL.
//
// What it does not: authenticate (Asterisk challenges; the proxy passes the
// challenge through), probe backends (package health; a FailureReporter is
// told of failed requests), pick the active backend (package failover
// supplies the Router), keep the bindings (package registrar) or relay RTP
// (package media).
//
// Config keys (section `sip`): listen, advertise, tls.cert, tls.key,
// hop_timeout (500ms), retry_after (5s), no_backend_wait (3s),
// drain_timeout (5s), timer_c (3m1s), max_message_size (65535),
// max_dialogs (100000), dialog_ttl (12h), dialog_secret_file,
// tcp.read_timeout (10s), tcp.idle_timeout (65m), tcp.max_connections
// (1024), tcp.max_per_source (128).
// Listeners bind with IP_FREEBIND, so a listener on the VIP binds before the
// cluster adds the address.
//
// Metrics (a method outside the known set is labelled "other", a status
// code outside 100-699 "other": no label value comes from the network):
// hapbx_proxy_requests_total{method},
// hapbx_proxy_responses_total{method,code},
// hapbx_proxy_transactions_in_flight,
// hapbx_proxy_forward_latency_seconds{method},
// hapbx_proxy_backend_selected_total{backend},
// hapbx_proxy_retries_total{backend,reason},
// hapbx_proxy_malformed_total{reason} (parse, oversize, no_transaction_key,
// missing_<header>, cseq_method, and sanity.go's content_length,
// duplicate_header, sip_version, proxy_require, ruri_headers, uri_scheme,
// method_case, round_trip, sanity_mark), hapbx_proxy_register_store_answers_total,
// hapbx_proxy_forks_total, hapbx_proxy_held_requests_total,
// hapbx_proxy_timer_c_total, hapbx_proxy_dialogs,
// hapbx_proxy_dialogs_untracked_total, hapbx_dialogs_terminated_total{reason},
// hapbx_proxy_bridge_links_untracked_total, hapbx_proxy_joined_calls,
// hapbx_proxy_calls_joined_total, hapbx_proxy_calls_join_refused_total{reason}
// (codec, media), hapbx_proxy_joined_calls_ended_total{reason} (bye,
// session_expired), hapbx_proxy_joined_bye_seconds,
// hapbx_proxy_refused_total{reason} (preloaded_route, no_dialog_token,
// foreign_hop, bad_dialog_token, trunk_not_backend, bad_contact_alias),
// hapbx_proxy_large_requests_total{how} (tcp, udp, refused),
// hapbx_proxy_connections, hapbx_proxy_connections_refused_total{reason}
// (max_connections, max_per_source),
// hapbx_proxy_connections_closed_total{reason} (read_timeout,
// idle_timeout, tls_handshake, unframed, too_large),
// hapbx_proxy_shed_total{reason} (memory, transactions, flood),
// hapbx_proxy_failures_excused_total{reason} (strained, local_error),
// hapbx_proxy_stray_responses_total{outcome} (forwarded, held, dropped,
// failed).
package proxy
