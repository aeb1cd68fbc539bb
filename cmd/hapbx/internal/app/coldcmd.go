package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hapbx/hapbx/admin"
	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/storage"
)

// opFlags parses -c FILE, --json and at most one positional node name, and
// loads FILE (agentFile: a PBX node's). A code other than 0 is the exit code
// (-1: help was asked for, exit 0).
func opFlags(cmd string, args []string, stderr io.Writer) (path string, cfg config.File, agentFile, asJSON bool, node string, code int) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	p := fs.String("c", "/etc/hapbx/hapbx.yaml", "configuration file (the proxy's, or a PBX node's agent file)")
	j := fs.Bool("json", false, "print JSON")
	// Accept the node before or after the flags.
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", cfg, false, false, "", -1
			}
			return "", cfg, false, false, "", 2
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "hapbx %s: at most one node name, got %q\n", cmd, pos)
		return "", cfg, false, false, "", 2
	}
	if len(pos) == 1 {
		node = pos[0]
	}
	cfg, agentFile, err := loadAny(*p)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return "", cfg, false, false, "", 1
	}
	return *p, cfg, agentFile, *j, node, 0
}

// localURL turns a listen address into a URL this host can reach.
func localURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
		}
		listen = net.JoinHostPort(host, port)
	}
	return "http://" + listen
}

// adminClient is how the CLI reaches the admin API its file describes,
// and the API's base URL: HTTPS trusting exactly admin.tls.cert when
// admin.tls is set.
func adminClient(a config.Admin) (*http.Client, string, error) {
	base := localURL(a.Listen)
	if a.TLS.Cert == "" {
		return http.DefaultClient, base, nil
	}
	tc, err := admin.ClientTLS(a.TLS.Cert)
	if err != nil {
		return nil, "", err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, "https://" + strings.TrimPrefix(base, "http://"), nil
}

func loadAny(path string) (config.File, bool, error) {
	data, err := config.ReadFile(path)
	if err != nil {
		return config.File{}, false, err
	}
	if config.IsAgentFile(data) {
		f, err := config.ParseAgent(path, data)
		return f, true, err
	}
	if config.IsWitnessFile(data) {
		f, err := config.ParseWitness(path, data)
		return f, false, err
	}
	f, err := config.Parse(path, data)
	return f, false, err
}

// statusCmd is `hapbx status`: each node's role, health, DRBD role, disk
// and peer, mount and service, from the proxy's admin API (or, with a PBX
// node's file, from its agent).
func statusCmd(args []string, stdout, stderr io.Writer) int {
	path, cfg, agentFile, asJSON, _, code := opFlags("status", args, stderr)
	if code != 0 {
		return max(code, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if agentFile {
		if cfg.Agent.Listen == "" {
			fmt.Fprintf(stderr, "%s: agent.listen is empty: no API to ask\n", path)
			return 1
		}
		st, err := storage.Client{BaseURL: localURL(cfg.Agent.Listen)}.Status(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "hapbx status:", err)
			return 1
		}
		if asJSON {
			return printJSON(stdout, st)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, statusHeader)
		fmt.Fprintln(tw, nodeRow(cfg.Node.Name, "-", roleOf(st, true, false), st, ""))
		tw.Flush()
		return 0
	}
	if cfg.Admin.Listen == "" {
		fmt.Fprintf(stderr, "%s: admin.listen is empty: no API to ask\n", path)
		return 1
	}
	client, base, err := adminClient(cfg.Admin)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return 1
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/status", nil)
	res, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "hapbx status:", err)
		return 1
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if res.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "hapbx status: HTTP %d: %s\n", res.StatusCode, body)
		return 1
	}
	if asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintln(stderr, "hapbx status: bad answer:", err)
		return 1
	}
	printStatus(stdout, st)
	return 0
}

const statusHeader = "NODE\tHEALTH\tROLE\tGROUP\tDRBD\tDISK\tPEER\tMOUNT\tSERVICE\tNOTE"

func roleOf(st storage.Status, reachable, holder bool) string {
	switch {
	case !reachable:
		return "unreachable"
	case holder || st.State == storage.StateStarted:
		return "active"
	}
	return "standby"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nodeRow(name, healthState, role string, st storage.Status, note string) string {
	peer := "-"
	if st.PeerRole != "" || st.Connection != "" {
		peer = dash(st.PeerRole) + "/" + dash(st.Connection)
	}
	if st.SplitBrain {
		note = strings.TrimSpace("SPLIT BRAIN: " + st.SplitBrainReason + " " + note)
	}
	return strings.Join([]string{name, healthState, role, dash(st.State), dash(st.DRBDRole), dash(st.Disk), peer, dash(st.Mounted), dash(st.Service), dash(note)}, "\t")
}

func printStatus(w io.Writer, st Status) {
	fmt.Fprintf(w, "proxy %s  routing %s  active backend %s\n", st.Node, st.Routing, dash(st.Active))
	if c := st.Cluster; c != nil {
		holders := strings.Join(c.VIPHolders, ",")
		if len(c.VIPHolders) > 1 {
			holders += " (MORE THAN ONE: a VIP removal is failing, see the logs)"
		}
		fmt.Fprintf(w, "cluster: VIP %s held by %s (here: %v)  raft leader %s  quorum %v  raft %s\n",
			dash(c.VIP), dash(holders), c.VIPHeld, dash(c.Leader), c.Quorum, c.RaftState)
		if st.LeaderActive != "" && st.LeaderActive != st.Active {
			fmt.Fprintf(w, "active backend decided by the VIP holder: %s (this proxy's own view: %s)\n", st.LeaderActive, dash(st.Active))
		}
		var ms []string
		for _, m := range c.Members {
			if m.Role == cluster.RoleService.String() {
				ms = append(ms, m.Name+"(agent)="+m.State)
				continue
			}
			ms = append(ms, m.Name+"="+m.State)
		}
		fmt.Fprintf(w, "members: %s\n", strings.Join(ms, " "))
	} else {
		fmt.Fprintln(w, "cluster: none (single proxy)")
	}
	fmt.Fprintf(w, "registrations: %d bindings, %d AORs  dialogs: %d  media sessions: %d\n",
		st.Registrar.Bindings, st.Registrar.AORs, st.Proxy.Dialogs, len(st.Media))
	for _, t := range st.Trunks {
		fmt.Fprintln(w, trunkLine(t))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if st.Cold == nil {
		fmt.Fprintln(w, "failover mode: hot")
		fmt.Fprintln(tw, "NODE\tHEALTH\tREASON")
		for _, h := range st.Health {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", h.Name, h.State, h.Reason)
		}
		tw.Flush()
		return
	}
	c := st.Cold
	fmt.Fprintf(w, "failover mode: cold  holder %s  phase %s  leader %v\n", dash(c.Holder), c.Phase, c.Leader)
	if c.Blocked != "" {
		fmt.Fprintf(w, "BLOCKED: %s\n", c.Blocked)
	}
	fmt.Fprintln(tw, statusHeader)
	for _, n := range c.Nodes {
		ag := n.Agent
		if !n.Reachable {
			// The last known state of an unreachable node would mislead.
			ag = storage.Status{State: "?", DRBDRole: "?", Disk: "?", Mounted: "?", Service: "?"}
		}
		fmt.Fprintln(tw, nodeRow(n.Name, n.Health, roleOf(n.Agent, n.Reachable, n.Name == c.Holder && n.Reachable), ag, n.Error))
	}
	tw.Flush()
	if l := c.Last; l != nil {
		fmt.Fprintf(w, "last move: %s -> %s (%s) at %s", dash(l.From), dash(l.To), l.Reason, l.DownAt.Format(time.RFC3339))
		if !l.StartedAt.IsZero() {
			fmt.Fprintf(w, ": started after %s (service %s, hapbx %s)", l.StartedAt.Sub(l.DownAt).Round(time.Millisecond), l.ServiceReady.Round(time.Millisecond), l.Overhead.Round(time.Millisecond))
		}
		if l.Fenced {
			fmt.Fprint(w, ", old node fenced")
		}
		if l.Error != "" {
			fmt.Fprintf(w, ", error: %s", l.Error)
		}
		fmt.Fprintln(w)
	}
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}

// moveCmd is `hapbx standby [NODE]` (give the group up: from NODE or the
// holder, to the next node) and `hapbx takeover NODE` (move it to NODE;
// with a PBX node's file, NODE defaults to its node.name). Both go
// through the proxy's admin API with the token of admin.token_file, since
// only the leader proxy moves groups.
func moveCmd(cmd string, args []string, stdout, stderr io.Writer) int {
	path, cfg, agentFile, asJSON, node, code := opFlags(cmd, args, stderr)
	if code != 0 {
		return max(code, 0)
	}
	if agentFile {
		fmt.Fprintf(stderr, "hapbx %s: %s is a PBX node's file; run it with the proxy's file (only the leader proxy moves the group)\n", cmd, path)
		return 2
	}
	if cmd == "takeover" && node == "" {
		var names []string
		for _, b := range cfg.Backends {
			names = append(names, b.Name)
		}
		fmt.Fprintf(stderr, "hapbx takeover: name the PBX node to take the resource group (one of %s)\n", strings.Join(names, ", "))
		return 2
	}
	if cfg.Admin.Listen == "" || cfg.Admin.TokenFile == "" {
		fmt.Fprintf(stderr, "%s: admin.listen and admin.token_file must be set for hapbx %s\n", path, cmd)
		return 1
	}
	tok, err := secretfile.Read(cfg.Admin.TokenFile)
	if err != nil {
		fmt.Fprintln(stderr, "hapbx", cmd+":", err)
		return 1
	}
	client, base, err := adminClient(cfg.Admin)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return 1
	}
	body, _ := json.Marshal(moveRequest{Node: node})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/cold/"+cmd, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Content-Type", "application/json")
	res, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "hapbx", cmd+":", err)
		return 1
	}
	defer res.Body.Close()
	var mr moveResponse
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err := json.Unmarshal(raw, &mr); err != nil {
		fmt.Fprintf(stderr, "hapbx %s: HTTP %d: %s\n", cmd, res.StatusCode, raw)
		return 1
	}
	if asJSON {
		printJSON(stdout, mr)
	} else {
		printMove(stdout, mr.Report)
	}
	if res.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "hapbx %s: %s\n", cmd, mr.Error)
		return 1
	}
	return 0
}

func printMove(w io.Writer, r failover.MoveReport) {
	fmt.Fprintf(w, "%s -> %s: %s", dash(r.From), dash(r.To), r.Reason)
	if !r.StartedAt.IsZero() {
		fmt.Fprintf(w, "; started after %s (service %s)", r.StartedAt.Sub(r.DownAt).Round(time.Millisecond), r.ServiceReady.Round(time.Millisecond))
	}
	if !r.UpAt.IsZero() {
		fmt.Fprintf(w, "; routed after %s", r.UpAt.Sub(r.DownAt).Round(time.Millisecond))
	}
	fmt.Fprintln(w)
}
