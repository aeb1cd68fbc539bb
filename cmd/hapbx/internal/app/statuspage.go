package app

import (
	"fmt"
	"time"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/internal/admin/statuspage"
	"github.com/hapbx/hapbx/proxy/trunk"
)

// pageSnapshot is the status page's view of the same facts as
// GET /api/v1/status.
func (d *daemon) pageSnapshot() statuspage.Snapshot {
	st := d.status()
	s := statuspage.Snapshot{
		At:           time.Now(),
		Node:         st.Node,
		Version:      st.Version,
		Started:      d.started,
		Routing:      st.Routing,
		Active:       st.Active,
		LeaderActive: st.LeaderActive,
		Cluster:      pageCluster(st.Cluster),
		Cold:         pageCold(st.Cold),
		Registrations: statuspage.Registrations{
			Bindings: st.Registrar.Bindings, AORs: st.Registrar.AORs, StoreError: st.Registrar.Store.Error,
		},
		Calls:  statuspage.Calls{Dialogs: st.Proxy.Dialogs, MediaSessions: -1},
		Events: st.Events,
	}
	if d.relay != nil {
		s.Calls.MediaSessions = len(st.Media)
	}
	for _, h := range st.Health {
		s.Backends = append(s.Backends, statuspage.Backend{Name: h.Name, Address: h.Address, Transport: h.Transport,
			State: h.State.String(), Reason: h.Reason, Since: h.Since, SIP: h.SIP, AMI: h.AMI})
	}
	return s
}

func pageCluster(c *cluster.Status) *statuspage.Cluster {
	if c == nil {
		return nil
	}
	out := &statuspage.Cluster{VIP: c.VIP, Holders: c.VIPHolders, HeldHere: c.VIPHeld, Leader: c.Leader, Quorum: c.Quorum}
	for _, m := range c.Members {
		out.Members = append(out.Members, statuspage.Member{Name: m.Name, Role: m.Role, State: m.State, VIPHeld: m.VIPHeld})
	}
	return out
}

func pageCold(c *failover.ColdStatus) *statuspage.Cold {
	if c == nil {
		return nil
	}
	out := &statuspage.Cold{Holder: c.Holder, Phase: c.Phase, Blocked: c.Blocked}
	for _, n := range c.Nodes {
		a := n.Agent
		out.Nodes = append(out.Nodes, statuspage.ColdNode{Name: n.Name, Health: n.Health, Reachable: n.Reachable, Error: n.Error,
			Group: a.State, DRBDRole: a.DRBDRole, Disk: a.Disk, PeerRole: a.PeerRole, PeerDisk: a.PeerDisk,
			Connection: a.Connection, Mounted: a.Mounted, Service: a.Service, SplitBrain: a.SplitBrain})
	}
	if m := c.Last; m != nil {
		out.LastMove = &statuspage.Move{From: m.From, To: m.To, Manual: m.Manual, Reason: m.Reason, At: m.DownAt,
			Fenced: m.Fenced, Error: m.Error}
		if !m.StartedAt.IsZero() {
			out.LastMove.Took = m.StartedAt.Sub(m.DownAt).Round(time.Millisecond)
		}
	}
	return out
}

// pageTrunks feeds the status page's trunk list from the trunk set.
type pageTrunks func() []trunk.Status

// Trunks implements statuspage.TrunkSource.
func (f pageTrunks) Trunks() []statuspage.Trunk {
	var out []statuspage.Trunk
	for _, t := range f() {
		up := 0
		for _, ok := range t.Hosts {
			if ok {
				up++
			}
		}
		pt := statuspage.Trunk{Name: t.Name, State: fmt.Sprintf("no registration, %d of %d hosts answer", up, len(t.Hosts))}
		if r := t.Registration; r != nil {
			pt.Provider, pt.Reason = r.Host, r.LastError
			pt.State = fmt.Sprintf("not registered, %d of %d hosts answer", up, len(t.Hosts))
			if r.Registered {
				pt.State = fmt.Sprintf("registered until %s, %d of %d hosts answer", r.Expires.Format(time.TimeOnly), up, len(t.Hosts))
			}
		}
		out = append(out, pt)
	}
	return out
}
