package heartbeat

import "text/template"

// notes is the header both files share: secrets to create, what was not
// imported and what to decide.
const notes = `{{define "notes"}}#
# Secret files to create before the first start (Heartbeat's secrets are
# not copied; check-config fails until they exist):
{{- range .Secrets}}{{if or (and $.ForAgent .Agent) (and (not $.ForAgent) .Proxy)}}
#   {{.Path}}: {{.What}}
{{- end}}{{end}}
{{- if .Skipped}}
#
# Not imported (no equivalent, or not needed; each with its place):
{{- range .Skipped}}
#   {{.String}}
{{- end}}
{{- end}}
{{- if .Todo}}
#
# To check by hand:
{{- range .Todo}}
#   - {{.}}
{{- end}}
{{- end}}
{{end}}`

var proxyTemplate = template.Must(template.New("hapbx.yaml").Funcs(funcs).Parse(notes + `# hapbx.yaml for {{.Self}}: the proxy (hapbx run, hapbx.service), written by
# hapbx import-heartbeat from {{.Sources}}.
# Install it as /etc/hapbx/hapbx.yaml on {{.Self}} (the other node gets its own:
# run the import there, or with -node {{.Peer}}) and check it with
# hapbx check-config -c /etc/hapbx/hapbx.yaml. Keys not written here keep
# their defaults, annotated in hapbx.example.yaml (/usr/share/doc/hapbx/examples).
# Each comment names the Heartbeat line a value comes from. Asterisk's SIP
# port moves to 5080 (hapbx takes 5060): see MIGRATION.md's step by step
# (/usr/share/doc/hapbx/examples/classic-pair) for the cut-over.
{{template "notes" .}}
node:
  name: {{q .Self}}              # {{.SelfAt}}

sip:
  # hapbx takes SIP port 5060 on every address, so it receives on the VIP
  # the moment the VIP arrives. Asterisk moves to {{with index .Backends 0}}{{.SIP}}{{end}} and the like
  # (sip.conf bindport / pjsip.conf transport bind).
  listen: ["udp://0.0.0.0:5060", "tcp://0.0.0.0:5060"]
  advertise: {{.VIP.Addr}}       # the VIP, {{.VIPAt}}
  dialog_secret_file: {{q .DialogKey}}

# The nodes, the preferred one first ({{.GroupAt}} names {{.Preferred}}).
{{- if .Cold}} In
# cold standby only the node holding DRBD Primary runs Asterisk: the
# other one is "down" in health, as expected.
{{- end}}
backends:
{{- range .Backends}}
  - name: {{q .Name}}
    address: {{.SIP}}   # {{.AddrAt}}
    transport: udp
    # Add an AMI user (manager.conf) to see a hung Asterisk too:
    # ami: {address: ..., username: hapbx, secret_file: /etc/hapbx/ami.secret}
{{- if $.Cold}}
    agent:
      url: {{.AgentURL}}   # the node's hapbx agent (hapbx-agent.yaml)
      token_file: {{q $.AgentToken}}
      fence:
{{- if .Fence.Command}}
        command: {{q .Fence.Command}}   # {{.Fence.At}}
{{- else}}
        # Heartbeat had no stonith for {{.Name}}. Without a command hapbx waits
        # until the standby's DRBD shows it disconnected, plus safety_delay:
        # a power fence (IPMI, PDU) is what makes automatic promotion safe.
        command: ""
{{- end}}
        timeout: 30s
        safety_delay: 5s
{{- end}}
{{- end}}

# One Asterisk at a time, as Heartbeat ran it.
routing: active-standby
{{- if .FailbackAt}}
# {{.FailbackAt}}: new calls move back to {{.Preferred}} once it is healthy
# again (true) or stay (false).{{if and .Cold .Failback}} In cold standby a failback stops and
# starts Asterisk (calls on it end), as Heartbeat's did.{{end}}
{{- else}}
# ha.cf has no auto_failback: Heartbeat's default was legacy, imported as off.
{{- end}}
failback: {{.Failback}}

# Backend probes: hapbx's defaults, faster than Heartbeat.
{{- with .Timing.keepalive}}
# {{.At}} ` + "`{{.Text}}`" + `: Heartbeat heard from the other host that often; hapbx
# probes Asterisk itself with SIP OPTIONS every interval.
{{- end}}
{{- with .Timing.deadtime}}
# {{.At}} ` + "`{{.Text}}`" + `: a node was dead after that much silence, and only
# when the whole host was; a hung Asterisk never. hapbx: down after fall x
# interval, about 1 s, dead or hung.
{{- end}}
{{- with .Timing.warntime}}
# {{.At}} ` + "`{{.Text}}`" + `: the warning is hapbx's "suspect" state (a failed
# probe; then probes every suspect_interval), logged and counted in
# hapbx_health_transitions_total.
{{- end}}
health:
  interval: 500ms
  suspect_interval: 100ms
  timeout: 400ms
  rise: 2
  fall: 2

# The proxy pair: what ha.cf, authkeys and the IPaddr resource did. Both
# proxies and a witness vote (raft); the leader holds the VIP, a holder that
# loses its quorum drops it first, so two never hold it.
cluster:
{{- if .TransportText}}
  # Heartbeat talked over {{.TransportText}}.
  # hapbx: memberlist on UDP+TCP 7946, raft on TCP 7947, on every node's
  # address below (put them on the dedicated link if you had one).
{{- end}}
  bind: 0.0.0.0:7946
  peers:                       # ha.cf's node lines plus the witness; identical on every voter
{{- range .Peers}}
    - {name: {{q .Name}}, gossip: {{q .Gossip}}, raft: {{q .Raft}}}   # {{.Note}}
{{- end}}
{{- if .WitnessUnset}}
  # TO DO: 192.0.2.20 is a placeholder (never routed): put the witness's address.
{{- end}}
  # authkeys{{if .AuthAt}} ({{.AuthAt}}{{if .AuthMethod}}, {{.AuthMethod}}{{end}}){{end}}: a new key, not Heartbeat's.
  secret_file: {{q .ClusterKey}}
  priority: {{.Priority}}                # {{.Preferred}} (100) is preferred for the VIP, as haresources said
  failback: {{.Failback}}               # {{if .FailbackAt}}{{.FailbackAt}}{{else}}no auto_failback{{end}}: hand the VIP back to {{.Preferred}}
{{- if .Pings}}
  # {{.PingText}}{{if .Ipfail}} with ipfail ({{.Ipfail.At}}){{end}}: a proxy that reaches none
  # of these must not hold the VIP. A TCP connect, not ICMP: a refused
  # connection counts as reached, so any port the router answers will do.
  ping_targets: {{list .Pings}}
{{- end}}
  # Failure detection between the proxies: hapbx's defaults, faster than
  # Heartbeat{{with .Timing.deadtime}} ({{.At}} ` + "`{{.Text}}`" + `){{end}}: a dead VIP holder is replaced
  # in about 0.3 s.{{with .Timing.initdead}} {{.At}} ` + "`{{.Text}}`" + `: nothing to wait for at
  # boot: raft keeps its state in cluster.data_dir and peers are joined as
  # they come up.{{end}}
  timing:
    heartbeat_timeout: 250ms
    election_timeout: 250ms
    leader_lease: 200ms
    probe_interval: 200ms
  vip:                         # {{.VIPAt}}
    address: {{.VIP}}
    interface: {{q .Nic}}
{{- range .VIPGuess}}
    # TO DO: IPaddr did not say {{.}}: check it.
{{- end}}
{{- if .Cold}}

# Cold standby: haresources' {{if .DRBDAt}}drbddisk::{{.DRBDName}}{{end}}{{if .FS}} Filesystem::{{.FS.Device}}::{{.FS.MountPoint}}{{end}} and the
# service, driven by the VIP holder through the nodes' agents: stop (or fence)
# the old node, then DRBD Primary, mount, service on the new one.
cold:
  enabled: true
  initial_start: true          # nothing running anywhere: start on {{.Preferred}}
{{- end}}

admin:
  # Metrics (Prometheus), /healthz, /api/v1/status; on the node's own address
  # so both proxies are scraped. Firewall it to the monitoring host.
  listen: {{.AdminListen}}
  token_file: {{q .AdminToken}}

log:
  # {{if .LoggingText}}{{.LoggingText}}: {{end}}hapbx logs to journald (journalctl -u hapbx).
  level: {{if .Debug}}debug{{else}}info{{end}}
  format: json
`))

var agentTemplate = template.Must(template.New("hapbx-agent.yaml").Funcs(funcs).Parse(notes + `# hapbx-agent.yaml for {{.Self}}: the PBX node's storage agent (hapbx agent,
# hapbx-agent.service), written by hapbx import-heartbeat from {{.Sources}}.
# Install it as /etc/hapbx/agent.yaml on {{.Self}} and check it with
# hapbx check-config -c /etc/hapbx/agent.yaml. It runs haresources' group
# ({{.GroupAt}}) minus the IPaddr (the proxies hold the VIP now) when the
# VIP holder asks: DRBD Primary, mount, service; stops it in reverse.
# Disable the service at boot (systemctl disable asterisk) and take
# {{.FS.MountPoint}} out of /etc/fstab: only the agent starts them.
{{template "notes" .}}
node:
  name: {{q .Self}}              # = its backends[].name in hapbx.yaml

agent:
  listen: {{.AgentListen}}       # the proxies call it here (backends[].agent.url)
  token_file: {{q .AgentToken}}
  drbd:                        # {{.DRBDAt}}{{if .DRBDAt}} drbddisk::{{.DRBDName}}{{end}}; {{.DRBD.At}}{{with .DRBD.Protocol}} protocol {{.}}{{end}}
    resource: {{q .DRBDName}}
  filesystem:                  # {{.FS.At}}
    device: {{q .FS.Device}}
    mount_point: {{q .FS.MountPoint}}
    type: {{q .FS.Type}}
    options: {{q .FS.Options}}
  service:                     # {{.Service.From}}
{{- if .Service.Unit}}
    unit: {{q .Service.Unit}}
{{- else}}
    # Started in haresources' order, stopped in reverse, as Heartbeat did.
    unit: ""
    start_command: {{q .Service.Start}}
    stop_command: {{q .Service.Stop}}
{{- end}}
  # Asterisk answers SIP here once it moved off 5060 (hapbx's proxy has it).
  ready:
    sip: 127.0.0.1:5080
    transport: udp
  fence:
    # Before promoting while DRBD shows {{.Peer}} disconnected, this node
    # makes sure {{.Peer}} is gone.
{{- if .PeerFence.Command}}
    command: {{q .PeerFence.Command}}   # {{.PeerFence.At}}
{{- else}}
    # Heartbeat had no stonith: without a command the agent waits
    # safety_delay after the disconnection. Set a power fence (IPMI, PDU).
    command: ""
{{- end}}
    timeout: 30s
    safety_delay: 5s

log:
  level: {{if .Debug}}debug{{else}}info{{end}}
  format: json
`))
