package storage

import (
	"fmt"
	"sort"
	"strings"
)

// DRBD role, disk and connection names as drbd-utils 9 prints them.
const (
	RolePrimary   = "Primary"
	RoleSecondary = "Secondary"
	RoleUnknown   = "Unknown"

	DiskUpToDate = "UpToDate"
	DiskUnknown  = "DUnknown"

	ConnConnected  = "Connected"
	ConnStandAlone = "StandAlone"
)

// DRBDState is what this node knows about one DRBD resource, from
// `drbdadm status` or followed through `drbdsetup events2`.
type DRBDState struct {
	// Resource is the resource name.
	Resource string `json:"resource"`
	// Role is the local role: Primary, Secondary or Unknown.
	Role string `json:"role"`
	// Disk is the local disk state; with several volumes, the first one not
	// UpToDate (so "UpToDate" means all volumes are).
	Disk string `json:"disk"`
	// Peers is every configured peer connection, sorted by name.
	Peers []PeerState `json:"peers"`
}

// PeerState is one DRBD connection to a peer node.
type PeerState struct {
	// Name is the connection name (the peer's host name in drbd.conf).
	Name string `json:"name"`
	// NodeID is the peer-node-id when known, else -1.
	NodeID int `json:"node_id"`
	// Connection is Connected, Connecting, StandAlone, ...; drbdadm status
	// omits it when Connected.
	Connection string `json:"connection"`
	// Role is the peer's role, Unknown while not connected.
	Role string `json:"role"`
	// Replication is Established, SyncSource, ... ("Off" when unknown).
	Replication string `json:"replication"`
	// PeerDisk is the peer's disk state (worst volume), DUnknown while not
	// connected.
	PeerDisk string `json:"peer_disk"`
}

// PeerPrimary reports whether any peer is known to be Primary.
func (s DRBDState) PeerPrimary() bool {
	for _, p := range s.Peers {
		if p.Role == RolePrimary {
			return true
		}
	}
	return false
}

// AllPeersConnected reports whether every peer connection is Connected
// (false when there is no peer at all).
func (s DRBDState) AllPeersConnected() bool {
	if len(s.Peers) == 0 {
		return false
	}
	for _, p := range s.Peers {
		if p.Connection != ConnConnected {
			return false
		}
	}
	return true
}

// PeersUpToDate reports whether every peer's disk is UpToDate (false when
// there is no peer at all).
func (s DRBDState) PeersUpToDate() bool {
	if len(s.Peers) == 0 {
		return false
	}
	for _, p := range s.Peers {
		if p.PeerDisk != DiskUpToDate {
			return false
		}
	}
	return true
}

// Peer returns the first peer, or a zero PeerState with Unknown fields.
func (s DRBDState) Peer() PeerState {
	if len(s.Peers) > 0 {
		return s.Peers[0]
	}
	return PeerState{NodeID: -1, Role: RoleUnknown, PeerDisk: DiskUnknown}
}

// worse returns the worse of two disk states: UpToDate only when both are.
func worse(cur, next string) string {
	if cur == "" || cur == DiskUpToDate {
		return next
	}
	return cur
}

func fields(s string) map[string]string {
	m := map[string]string{}
	for _, tok := range strings.Fields(s) {
		k, v, ok := strings.Cut(tok, ":")
		if ok && k != "" {
			m[k] = v
		}
	}
	return m
}

// ParseStatus parses the output of `drbdadm status RES` (drbd-utils 9):
//
//	r0 role:Primary
//	  disk:UpToDate
//	  peer role:Secondary
//	    replication:Established peer-disk:UpToDate
//
// It also accepts multi-volume output (`volume:N disk:...`), extra
// key:value tokens (open:, suspended:, node-id:, congested:) and peers that
// are not connected (`peer connection:Connecting`). Only the resource
// named res is returned; an empty res takes the first one.
func ParseStatus(out, res string) (DRBDState, error) {
	var (
		st      DRBDState
		found   bool
		inRes   bool
		curPeer = -1
	)
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " \t"))
		first, rest, _ := strings.Cut(trimmed, " ")
		switch {
		case indent == 0:
			inRes = false
			if strings.Contains(first, ":") {
				continue // not a resource header
			}
			if found || (res != "" && first != res) {
				continue
			}
			found, inRes = true, true
			st = DRBDState{Resource: first, Role: RoleUnknown}
			if r := fields(rest)["role"]; r != "" {
				st.Role = r
			}
			curPeer = -1
		case !inRes:
			continue
		case !strings.Contains(first, ":"):
			// A peer line: "<name> [node-id:N] [connection:X] [role:Y] ...".
			f := fields(rest)
			p := PeerState{Name: first, NodeID: -1, Connection: ConnConnected, Role: RoleUnknown, Replication: "Off", PeerDisk: DiskUnknown}
			if c, ok := f["connection"]; ok {
				p.Connection = c
			}
			if r, ok := f["role"]; ok {
				p.Role = r
			}
			if id, ok := f["node-id"]; ok {
				fmt.Sscanf(id, "%d", &p.NodeID)
			}
			st.Peers = append(st.Peers, p)
			curPeer = len(st.Peers) - 1
		default:
			f := fields(trimmed)
			if d, ok := f["disk"]; ok && (curPeer < 0 || indent <= 2) {
				st.Disk = worse(st.Disk, d)
				curPeer = -1
				continue
			}
			if curPeer < 0 {
				continue
			}
			p := &st.Peers[curPeer]
			if r, ok := f["replication"]; ok {
				p.Replication = r
			}
			if d, ok := f["peer-disk"]; ok {
				if p.PeerDisk == DiskUnknown {
					p.PeerDisk = d
				} else {
					p.PeerDisk = worse(p.PeerDisk, d)
				}
			}
		}
	}
	if !found {
		if res == "" {
			return DRBDState{}, fmt.Errorf("drbd status: no resource in output %q", clip(out))
		}
		return DRBDState{}, fmt.Errorf("drbd status: resource %q not in output %q", res, clip(out))
	}
	if st.Disk == "" {
		st.Disk = DiskUnknown
	}
	sort.SliceStable(st.Peers, func(i, j int) bool { return st.Peers[i].Name < st.Peers[j].Name })
	return st, nil
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// Event is one line of `drbdsetup events2`, e.g.
//
//	change connection name:r0 peer-node-id:1 conn-name:peer connection:Connected role:Secondary
//	call helper name:r0 peer-node-id:1 conn-name:peer volume:0 helper:split-brain
type Event struct {
	// Verb is exists, create, change, destroy, call or response.
	Verb string
	// Object is resource, connection, device, peer-device, path, helper or
	// "-" (the "exists -" line that ends the initial dump).
	Object string
	// Fields are the key:value tokens.
	Fields map[string]string
}

var eventVerbs = map[string]bool{"exists": true, "create": true, "change": true, "destroy": true, "call": true, "response": true, "rename": true}

// ParseEvent parses one events2 line. An optional leading timestamp (as
// printed with --timestamps) is skipped.
func ParseEvent(line string) (Event, error) {
	toks := strings.Fields(line)
	if len(toks) > 0 && !eventVerbs[toks[0]] && len(toks[0]) > 0 && toks[0][0] >= '0' && toks[0][0] <= '9' {
		toks = toks[1:]
	}
	if len(toks) < 2 || !eventVerbs[toks[0]] {
		return Event{}, fmt.Errorf("drbd events2: unrecognised line %q", clip(line))
	}
	ev := Event{Verb: toks[0], Object: toks[1], Fields: fields(strings.Join(toks[2:], " "))}
	return ev, nil
}

// SplitBrain reports whether the event is DRBD calling its split-brain
// helper (detected split brain, whether or not auto-recovered).
func (e Event) SplitBrain() bool {
	return e.Verb == "call" && e.Object == "helper" && strings.Contains(e.Fields["helper"], "split-brain")
}

// Apply folds the event into s and returns the new state. Events for other
// resources are ignored.
func (s DRBDState) Apply(e Event) DRBDState {
	if name := e.Fields["name"]; name != "" && s.Resource != "" && name != s.Resource {
		return s
	}
	if s.Resource == "" {
		s.Resource = e.Fields["name"]
	}
	// Copy the peers so that states already handed out stay unchanged.
	s.Peers = append([]PeerState(nil), s.Peers...)
	switch e.Object {
	case "resource":
		if e.Verb == "destroy" {
			return DRBDState{Resource: s.Resource, Role: RoleUnknown, Disk: DiskUnknown}
		}
		if r, ok := e.Fields["role"]; ok {
			s.Role = r
		}
	case "device":
		if e.Verb == "destroy" {
			s.Disk = DiskUnknown
		} else if d, ok := e.Fields["disk"]; ok {
			// Volumes are folded into one value; a multi-volume resource
			// re-reads drbdadm status for an exact figure.
			s.Disk = d
		}
	case "connection", "peer-device":
		_, hasName := e.Fields["conn-name"]
		_, hasID := e.Fields["peer-node-id"]
		if !hasName && !hasID {
			return s // no way to tell which peer: ignore rather than guess
		}
		i := s.peerIndex(e.Fields)
		if e.Verb == "destroy" && e.Object == "connection" {
			if i >= 0 {
				s.Peers = append(s.Peers[:i], s.Peers[i+1:]...)
			}
			return s
		}
		if i < 0 {
			p := PeerState{Name: e.Fields["conn-name"], NodeID: -1, Connection: "Unknown", Role: RoleUnknown, Replication: "Off", PeerDisk: DiskUnknown}
			if id, ok := e.Fields["peer-node-id"]; ok {
				fmt.Sscanf(id, "%d", &p.NodeID)
			}
			s.Peers = append(s.Peers, p)
			sort.SliceStable(s.Peers, func(a, b int) bool { return s.Peers[a].Name < s.Peers[b].Name })
			if i = s.peerIndex(e.Fields); i < 0 {
				return s // unreachable: the peer was just added
			}
		}
		p := &s.Peers[i]
		if c, ok := e.Fields["connection"]; ok {
			p.Connection = c
			if c != ConnConnected {
				// A peer we are not connected to has no known role:
				// never keep a stale "Secondary" that would allow promotion
				// while it might have become Primary.
				p.Role, p.PeerDisk, p.Replication = RoleUnknown, DiskUnknown, "Off"
			}
		}
		if r, ok := e.Fields["role"]; ok {
			p.Role = r
		}
		if r, ok := e.Fields["replication"]; ok {
			p.Replication = r
		}
		if d, ok := e.Fields["peer-disk"]; ok {
			p.PeerDisk = d
		}
	}
	return s
}

func (s DRBDState) peerIndex(f map[string]string) int {
	for i, p := range s.Peers {
		if n, ok := f["conn-name"]; ok && n == p.Name {
			return i
		}
		if id, ok := f["peer-node-id"]; ok && p.NodeID >= 0 && id == fmt.Sprint(p.NodeID) {
			return i
		}
	}
	return -1
}
