package app

import (
	"fmt"
	"io"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/proxy"
)

// State channels carried between the proxies.
const (
	chanRegistrar = "registrar"
	chanMedia     = "media"
	chanDialogs   = "dialogs"
	keyActive     = "active_backend"
)

// setupCluster joins the proxy pair when cluster.peers is set: memberlist
// membership, raft leadership (the VIP holder), and the replication of
// registrations and media sessions. Without it this proxy is alone and
// always the leader.
func (d *daemon) setupCluster() error {
	if !d.cfg.ClusterEnabled() {
		return nil
	}
	c, err := cluster.New(d.cfg.ClusterConfig(), cluster.RoleProxy, d.log.Named("cluster"), d.reg, cluster.WithEvents(d.events))
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	// A new VIP holder makes its own active-backend decision the one all
	// proxies read (the previous holder's may be stale or missing).
	c.RepublishOnTakeover(keyActive, func() []byte {
		if a := d.selector.Active(); a != "" {
			return []byte(a)
		}
		return nil
	})
	d.cluster = c
	return nil
}

// leaderActive is the active backend as the VIP holder last published it
// ("" without a cluster or before any decision).
func (d *daemon) leaderActive() string {
	if d.cluster == nil {
		return ""
	}
	b, _ := d.cluster.Get(keyActive)
	return string(b)
}

// isLeader is true on the VIP holder, or on a proxy without a cluster.
func (d *daemon) isLeader() bool {
	return d.cluster == nil || d.cluster.IsLeader()
}

// replicate registers the registrar and the media relay as state channels;
// call before the cluster runs.
func (d *daemon) replicate() error {
	if d.cluster == nil {
		return nil
	}
	if err := d.cluster.RegisterState(chanRegistrar, d.bindings); err != nil {
		return err
	}
	if d.relay != nil {
		return d.cluster.RegisterState(chanMedia, d.relay)
	}
	return nil
}

// The proxy's dialogs and links go to the twin as a state channel.
var _ cluster.StateSource = (*proxy.DialogReplica)(nil)

// replicateDialogs registers the proxy's confirmed dialogs and the links
// between bridged legs as a state channel, so the twin hangs up (or keeps
// up) the calls of a backend that dies after a proxy failover; call once
// the proxy exists, before the cluster runs.
func (d *daemon) replicateDialogs() error {
	if d.cluster == nil {
		return nil
	}
	return d.cluster.RegisterState(chanDialogs, d.proxy.DialogReplica())
}

// publishActive makes the leader's active-backend decision known to all.
func (d *daemon) publishActive(name string) {
	if d.cluster == nil || !d.cluster.IsLeader() {
		return
	}
	if err := d.cluster.Publish(keyActive, []byte(name)); err != nil {
		d.log.Debug("active backend not published", zap.Error(err))
	}
}

func (d *daemon) clusterStatus() *cluster.Status {
	if d.cluster == nil {
		return nil
	}
	st := d.cluster.Status()
	return &st
}

// releaseVIP is `hapbx release-vip -c FILE`: the clean-up systemd runs after
// hapbx exits (ExecStopPost), crashes included. A SIGKILLed hapbx cannot
// remove the VIP itself, and a host that keeps it answers ARP for it while
// the twin holds it.
func releaseVIP(path string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if !cfg.ClusterEnabled() || cfg.Cluster.VIP.Address == "" {
		fmt.Fprintf(stdout, "%s: no VIP configured\n", path)
		return 0
	}
	v, err := cluster.NewVIP(cfg.Cluster.VIP, zap.NewNop())
	if err != nil {
		fmt.Fprintln(stderr, "release-vip:", err)
		return 1
	}
	held, err := v.Held()
	if err != nil {
		fmt.Fprintln(stderr, "release-vip:", err)
		return 1
	}
	if !held {
		fmt.Fprintf(stdout, "VIP %s not on %s\n", cfg.Cluster.VIP.Address, cfg.Cluster.VIP.Interface)
		return 0
	}
	if err := v.Release(); err != nil {
		fmt.Fprintln(stderr, "release-vip:", err)
		return 1
	}
	fmt.Fprintf(stdout, "VIP %s removed from %s\n", cfg.Cluster.VIP.Address, cfg.Cluster.VIP.Interface)
	return 0
}
