package app

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/registrar"
)

// State channels carried between the proxies.
const (
	chanRegistrar = "registrar"
	chanMedia     = "media"
	// chanMediaAlive carries the VIP holder's periodic keep-alives of
	// unchanged media sessions (media.KeepAlive); a peer that does not know
	// the channel drops them.
	chanMediaAlive = "media-alive"
	keyActive      = "active_backend"
)

// setupCluster joins the proxy pair when cluster.peers is set: memberlist
// membership, raft leadership (the VIP holder), and the replication of
// registrations and media sessions. Without it this proxy is alone and
// always the leader.
func (d *daemon) setupCluster() error {
	if !d.cfg.ClusterEnabled() {
		return nil
	}
	c, err := cluster.New(d.cfg.ClusterConfig(), cluster.RoleProxy, d.log.Named("cluster"), d.reg)
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

// replicate registers the state channels; call before cluster Start.
func (d *daemon) replicate() error {
	if d.cluster == nil {
		return nil
	}
	if err := d.cluster.RegisterState(chanRegistrar, registrarState{r: d.bindings, log: d.log}); err != nil {
		return err
	}
	d.bindings.OnChange(func(rec registrar.Record) {
		b, err := rec.MarshalBinary()
		if err != nil {
			return
		}
		if err := d.cluster.Broadcast(chanRegistrar, b); err != nil {
			d.log.Debug("registrar record not broadcast", zap.Error(err))
		}
	})
	if d.relay != nil {
		if err := d.cluster.RegisterState(chanMedia, mediaState{r: d.relay, log: d.log}); err != nil {
			return err
		}
		if err := d.cluster.RegisterState(chanMediaAlive, mediaAliveState{r: d.relay, log: d.log}); err != nil {
			return err
		}
	}
	return nil
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

func (d *daemon) startCluster(ctx context.Context) error {
	if d.cluster == nil {
		return nil
	}
	if err := d.cluster.Start(ctx); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if d.relay != nil {
		go refreshMedia(ctx, d.relay, d.cluster, d.isLeader, d.log)
	}
	return nil
}

// broadcaster is the part of the cluster the media replication uses.
type broadcaster interface {
	Broadcast(name string, record []byte) error
}

// refreshMedia is the VIP holder's periodic media replication: records
// sent right after Anchor carry no latched source yet, and a standby keeps a
// replica only while it hears about it. Every proxy runs it; only the
// holder broadcasts (and, by calling Refresh, adopts its replicas).
func refreshMedia(ctx context.Context, r *media.Relay, c broadcaster, isLeader func() bool, log *zap.Logger) {
	t := time.NewTicker(r.RefreshPeriod())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if isLeader() {
			refreshMediaOnce(r, c, log)
		}
	}
}

// keepAliveChunk bounds one keep-alive message (about 70 bytes a session).
const keepAliveChunk = 2000

// refreshMediaOnce broadcasts the sessions changed since the last refresh
// and keep-alives for the rest.
func refreshMediaOnce(r *media.Relay, c broadcaster, log *zap.Logger) (records, alive int) {
	changed, live := r.Refresh()
	for _, rec := range changed {
		b, err := rec.MarshalBinary()
		if err != nil {
			continue
		}
		if err := c.Broadcast(chanMedia, b); err != nil {
			log.Debug("media record not broadcast", zap.Error(err))
			return 0, 0
		}
	}
	for chunk := range slices.Chunk(live, keepAliveChunk) {
		b, err := media.KeepAlive{Sessions: chunk}.MarshalBinary()
		if err != nil {
			continue
		}
		if err := c.Broadcast(chanMediaAlive, b); err != nil {
			log.Debug("media keep-alive not broadcast", zap.Error(err))
			return len(changed), 0
		}
	}
	return len(changed), len(live)
}

func (d *daemon) clusterStatus() *cluster.Status {
	if d.cluster == nil {
		return nil
	}
	st := d.cluster.Status()
	return &st
}

// registrarState carries registrar records: a full snapshot for a proxy
// that joins, merged idempotently in any order.
type registrarState struct {
	r   *registrar.Registrar
	log *zap.Logger
}

func (s registrarState) Snapshot() [][]byte {
	recs := s.r.Records()
	out := make([][]byte, 0, len(recs))
	for _, r := range recs {
		if b, err := r.MarshalBinary(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

func (s registrarState) Apply(raw [][]byte) {
	recs := make([]registrar.Record, 0, len(raw))
	for _, b := range raw {
		r, err := registrar.DecodeRecord(b)
		if err != nil {
			s.log.Warn("bad registrar record from peer", zap.Error(err))
			continue
		}
		recs = append(recs, r)
	}
	if _, err := s.r.Merge(recs); err != nil {
		s.log.Warn("registrar merge", zap.Error(err))
	}
}

// mediaState carries relay sessions, so the twin can relay a call's media
// on the same ports the moment the VIP arrives.
type mediaState struct {
	r   *media.Relay
	log *zap.Logger
}

func (s mediaState) Snapshot() [][]byte {
	recs := s.r.Export()
	out := make([][]byte, 0, len(recs))
	for _, r := range recs {
		if b, err := r.MarshalBinary(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

func (s mediaState) Apply(raw [][]byte) {
	for _, b := range raw {
		var rec media.SessionRecord
		if err := rec.UnmarshalBinary(b); err != nil {
			s.log.Warn("bad media record from peer", zap.Error(err))
			continue
		}
		if err := s.r.Import(rec); err != nil {
			s.log.Warn("media session not imported", zap.String("call_id", rec.CallID), zap.Error(err))
		}
	}
}

// mediaAliveState carries the holder's keep-alives: each keeps the named
// replicas for another replica lifetime. Nothing to push to a joining node
// (the media channel's full sync carries the sessions).
type mediaAliveState struct {
	r   *media.Relay
	log *zap.Logger
}

func (s mediaAliveState) Snapshot() [][]byte { return nil }

func (s mediaAliveState) Apply(raw [][]byte) {
	for _, b := range raw {
		var ka media.KeepAlive
		if err := ka.UnmarshalBinary(b); err != nil {
			s.log.Warn("bad media keep-alive from peer", zap.Error(err))
			continue
		}
		if stale := s.r.KeepAlive(ka); stale > 0 {
			s.log.Debug("media keep-alive names sessions missing or outdated here", zap.Int("sessions", stale))
		}
	}
}

// replicatedRelay is the proxy's media anchor when clustered: every change
// of a session is broadcast to the twin.
type replicatedRelay struct {
	*media.Relay
	c   broadcaster
	log *zap.Logger
}

func (r replicatedRelay) Anchor(callID string, from media.Leg, body []byte) ([]byte, error) {
	out, err := r.Relay.Anchor(callID, from, body)
	if err == nil {
		if rec, ok := r.Record(callID); ok {
			r.send(rec)
		}
	}
	return out, err
}

func (r replicatedRelay) Release(callID, reason string) error {
	rel := media.ReleasedRecord(callID)
	if cur, ok := r.Record(callID); ok {
		// Outrank the session's last record even if this clock is behind the
		// previous holder's, whose versions the session carries.
		rel.Version = max(rel.Version, cur.Version+1)
	}
	err := r.Relay.Release(callID, reason)
	r.send(rel)
	return err
}

func (r replicatedRelay) send(rec media.SessionRecord) {
	b, err := rec.MarshalBinary()
	if err != nil {
		return
	}
	if err := r.c.Broadcast(chanMedia, b); err != nil {
		r.log.Debug("media record not broadcast", zap.Error(err))
	}
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
