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
//	hlab-pbx1     10.214.0.11  backend pbx1 (preferred): SIPp UAS or asterisk :5060, AMI :5038, hapbx agent :7790
//	hlab-pbx2     10.214.0.12  backend pbx2 (hot standby): the same
//	hlab-phones   10.214.0.50  SIPp phones and callers, the OPTIONS prober
//	hlab-provider 10.214.0.60  a SIP trunk's provider (Options.Trunk): SIPp registrar :5060, its callers
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
// Beside each SIPp backend runs an AMI server (AMIServerMain: health/amitest's
// protocol, run as the hidden AMIServerCommand subcommand of Options.Self, the
// demo driver or this package's test binary); the proxies' backends have ami:
// settings and health requires sip and ami. Each PBX namespace also runs
// `hapbx agent` (agent.go) under `unshare --mount`: it joins the cluster with
// the lab's key and runs its resource group — DRBD through the stand-ins of
// internal/testkit/drbd (state in Dir/drbd), a tmpfs mounted in its own mount
// namespace, and SIPp plus the AMI server as its service (start_command/
// stop_command). The scenario's table ends with the agents' view.
//
// Hot standby (default Options): the lab runs both PBXs itself and the agents
// are never asked to start. Cold standby (Options.Cold, the demo's default):
// the proxies enable cold:, the leader has pbx1's agent start its group, and
// killing the active PBX (its service processes; the agent lives) is a cold
// failover to pbx2 with no failback.
//
// With a real asterisk (Options.Asterisk: $HAPBX_ASTERISK or `asterisk` on
// PATH; .ci/run installs one from ../shared/asterisk) the PBXs are
// `asterisk -f -C ...` with the operators' files of deploy/asterisk
// rendered for the lab (AsteriskConfigs: the lab's addresses, an account
// per lab phone, manager.conf's AMI account with the lab's secret, every
// other shipped file as is); chan_pjsip with pjsip.conf, or with
// Options.ChanSIP chan_sip with sip.conf (modules.conf and extensions.conf
// switched as their comments say). The proxies and agents log in to that
// AMI, and the callers' INVITEs are challenged and authenticated as
// phones' are. TestE2E and TestE2ECold run the scenario on chan_pjsip,
// TestE2EChanSIP and TestE2EColdChanSIP on chan_sip (one SIPp per phone
// there: chan_sip takes the peer's name as the digest user, and the one
// SIPp of pjsip mode shares a user among its phones);
// TestE2EAsteriskPhones checks, on both drivers, what Asterisk does
// through hapbx with Go softphones of their own credentials; all of them
// fail on an ERROR line in Asterisk's start-up log.
// TestBridgedCallSurvivesAsterisk (issue 15.6, both drivers) has SIPp
// phone 201 call SIPp phone 202 through the shipped dialplan, checks on
// pbx1's wire (an AF_PACKET capture) that Asterisk's INVITE to 202
// carries X-Hapbx-Bridge with 201's Call-ID and on the phones' that no
// phone sees it, SIGKILLs Asterisk mid-call and checks that hapbx joins
// the call: audio both ways (an nft counter per phone RTP port), hold,
// resume and a session refresh answered by hapbx, either side's BYE
// ending the other's, also for a provider's call through the trunk (on
// chan_pjsip); legs of different codecs (Asterisk transcoding) get BYEs
// instead. TestTransferredCallSurvivesAsterisk (issue 15.1, both
// drivers) has 201 call a Go phone 202 that transfers it to SIPp phone
// 203, blind (REFER) or attended (REFER with Replaces), then SIGKILLs
// Asterisk: hapbx, which followed the transfer on the AMI session, joins
// 201 and 203. Tests that rely on SIPp's
// behaviour set Options.SIPpBackends. Where no asterisk exists,
// TestE2EAsteriskStandIn runs this mode against a stand-in
// (asterisk_standin_test.go) that reads the rendered files and serves SIP
// (SIPp, challenging REGISTERs and INVITEs, rewriting Contacts as
// chan_pjsip does) and AMI from them. HLAB_KEEP=1 keeps a test's lab
// directory (configs, PBX and SIPp logs). Every SIPp traces the messages
// it sends and receives there (-trace_msg, -trace_err, -trace_calldebug,
// each file bounded); a scenario phase with failed calls prints each failed
// call's Call-ID, SIPp's errors about it, its messages and the lab logs'
// lines naming it (FailedCalls).
//
// With Options.Trunk (trunk.go) the proxies have the trunk "p1": its
// host the provider namespace's SIPp (provider_lab.xml: a registrar,
// digest, expires 10 s, and a UAS that challenges calls out with 407), its
// ACL that address; TrunkCall places the same INVITE from any host, and
// ReadTrace/CheckRegistration read what the provider saw (one
// registration: one Call-ID, CSeq rising, Contact the VIP, never expired).
// TestVIPFailoverSIGKILL kills the VIP holder while it registers;
// TestE2EAsteriskPhones has a real Asterisk run deploy/asterisk's trunk parts on both drivers: a
// provider's call reaches [from-trunk] by X-Hapbx-Trunk, the same INVITE
// from the phones' address does not, and a phone's 0-number goes out
// through [to-trunk] and hapbx, which answers the provider's 407.
//
// What it does not do: fencing commands (the agents wait a safety delay);
// a dead PBX host (only its PBX dies); TCP/TLS transports; IPv6.
package lab
