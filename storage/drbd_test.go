package storage

import (
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	cases := []struct {
		name, out, res string
		want           DRBDState
		err            string
	}{
		{
			name: "connected primary",
			out:  "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    replication:Established peer-disk:UpToDate\n\n",
			res:  "r0",
			want: DRBDState{Resource: "r0", Role: "Primary", Disk: "UpToDate", Peers: []PeerState{{Name: "peer", NodeID: -1, Connection: "Connected", Role: "Secondary", Replication: "Established", PeerDisk: "UpToDate"}}},
		},
		{
			name: "peer gone, connecting",
			out:  "r0 role:Secondary\n  disk:UpToDate\n  node-a connection:Connecting\n\n",
			res:  "r0",
			want: DRBDState{Resource: "r0", Role: "Secondary", Disk: "UpToDate", Peers: []PeerState{{Name: "node-a", NodeID: -1, Connection: "Connecting", Role: "Unknown", Replication: "Off", PeerDisk: "DUnknown"}}},
		},
		{
			name: "split brain standalone",
			out:  "r0 role:Primary\n  disk:UpToDate\n  node-b connection:StandAlone\n\n",
			res:  "r0",
			want: DRBDState{Resource: "r0", Role: "Primary", Disk: "UpToDate", Peers: []PeerState{{Name: "node-b", NodeID: -1, Connection: "StandAlone", Role: "Unknown", Replication: "Off", PeerDisk: "DUnknown"}}},
		},
		{
			name: "peer primary, syncing, second resource skipped",
			out: "lab role:Secondary\n  disk:Consistent\n  mk-a02n02 connection:Connecting\n\n" +
				"r0 role:Secondary\n  disk:Inconsistent\n  node2 role:Primary\n    replication:SyncTarget peer-disk:UpToDate done:19.40\n  node3 role:Secondary\n    peer-disk:Diskless\n\n",
			res: "r0",
			want: DRBDState{Resource: "r0", Role: "Secondary", Disk: "Inconsistent", Peers: []PeerState{
				{Name: "node2", NodeID: -1, Connection: "Connected", Role: "Primary", Replication: "SyncTarget", PeerDisk: "UpToDate"},
				{Name: "node3", NodeID: -1, Connection: "Connected", Role: "Secondary", Replication: "Off", PeerDisk: "Diskless"},
			}},
		},
		{
			name: "verbose multi-volume drbdsetup status",
			out: "r0 node-id:0 role:Primary suspended:no\n    write-ordering:flush\n  volume:0 minor:0 disk:UpToDate\n      size:4056 read:1032 written:4112\n  volume:1 minor:1 disk:Outdated\n" +
				"  tom node-id:1 connection:Connected role:Secondary congested:no\n    volume:0 replication:Established peer-disk:UpToDate resync-suspended:no\n      received:5088 sent:56\n    volume:1 replication:Established peer-disk:Inconsistent\n",
			res: "",
			want: DRBDState{Resource: "r0", Role: "Primary", Disk: "Outdated", Peers: []PeerState{
				{Name: "tom", NodeID: 1, Connection: "Connected", Role: "Secondary", Replication: "Established", PeerDisk: "Inconsistent"},
			}},
		},
		{name: "other resource only", out: "r1 role:Primary\n  disk:UpToDate\n", res: "r0", err: `resource "r0" not in output`},
		{name: "no drbd", out: "# No currently configured DRBD found.\n", res: "r0", err: "not in output"},
		{name: "empty", out: "", res: "", err: "no resource"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseStatus(c.out, c.res)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalState(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func equalState(a, b DRBDState) bool {
	if a.Resource != b.Resource || a.Role != b.Role || a.Disk != b.Disk || len(a.Peers) != len(b.Peers) {
		return false
	}
	for i := range a.Peers {
		if a.Peers[i] != b.Peers[i] {
			return false
		}
	}
	return true
}

func TestPeerChecks(t *testing.T) {
	st, _ := ParseStatus("r0 role:Secondary\n  disk:UpToDate\n  a role:Primary\n    replication:Established peer-disk:UpToDate\n", "r0")
	if !st.PeerPrimary() || !st.AllPeersConnected() {
		t.Fatalf("peer primary connected not seen: %+v", st)
	}
	st, _ = ParseStatus("r0 role:Secondary\n  disk:UpToDate\n  a connection:Connecting\n", "r0")
	if st.PeerPrimary() || st.AllPeersConnected() || !peerGone(st) {
		t.Fatalf("disconnected peer misread: %+v", st)
	}
	if (DRBDState{}).AllPeersConnected() {
		t.Fatal("no peers counted as all connected")
	}
}

// events2 lines in the drbd-utils 9 format, from a connected pair through a
// peer loss to a split brain.
var events2Lines = []string{
	"exists resource name:r0 role:Secondary suspended:no write-ordering:flush",
	"exists connection name:r0 peer-node-id:1 conn-name:peer connection:Connected role:Secondary",
	"exists device name:r0 volume:0 minor:0 disk:UpToDate client:no quorum:yes",
	"exists peer-device name:r0 peer-node-id:1 conn-name:peer volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no",
	"exists -",
	"change resource name:r0 role:Primary",
	"change connection name:r0 peer-node-id:1 conn-name:peer connection:Connecting role:Unknown",
	"2026-09-29T14:15:14.414179+08:00 change connection name:r0 peer-node-id:1 conn-name:peer connection:Connected role:Secondary",
	"change peer-device name:r0 peer-node-id:1 conn-name:peer volume:0 replication:Established peer-disk:UpToDate",
	"change connection name:r0 peer-node-id:1 conn-name:peer role:Primary",
	"call helper name:r0 peer-node-id:1 conn-name:peer volume:0 helper:split-brain",
	"response helper name:r0 peer-node-id:1 conn-name:peer volume:0 helper:split-brain status:0",
	"change connection name:r0 peer-node-id:1 conn-name:peer connection:StandAlone",
	"change device name:r1 volume:0 minor:1 disk:Failed",
}

func TestEventsFold(t *testing.T) {
	st := DRBDState{Resource: "r0", Role: RoleUnknown, Disk: DiskUnknown}
	var sb int
	check := func(i int, role, conn, peerRole, peerDisk string) {
		t.Helper()
		p := st.Peer()
		if st.Role != role || p.Connection != conn || p.Role != peerRole || p.PeerDisk != peerDisk {
			t.Fatalf("after %q: role %s conn %s peer %s/%s; want %s %s %s/%s", events2Lines[i], st.Role, p.Connection, p.Role, p.PeerDisk, role, conn, peerRole, peerDisk)
		}
	}
	for i, l := range events2Lines {
		ev, err := ParseEvent(l)
		if err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if ev.SplitBrain() {
			sb++
		}
		st = st.Apply(ev)
		switch i {
		case 4:
			check(i, "Secondary", "Connected", "Secondary", "UpToDate")
		case 5:
			check(i, "Primary", "Connected", "Secondary", "UpToDate")
		case 6:
			check(i, "Primary", "Connecting", "Unknown", "DUnknown")
		case 8:
			check(i, "Primary", "Connected", "Secondary", "UpToDate")
		case 9:
			check(i, "Primary", "Connected", "Primary", "UpToDate")
		case 12:
			check(i, "Primary", "StandAlone", "Unknown", "DUnknown")
		}
	}
	if sb != 1 {
		t.Fatalf("split-brain helper seen %d times, want 1", sb)
	}
	if st.Disk != "UpToDate" {
		t.Fatalf("event of resource r1 changed r0's disk to %s", st.Disk)
	}
	for _, bad := range []string{"", "garbage", "exists", "42"} {
		if _, err := ParseEvent(bad); err == nil {
			t.Errorf("ParseEvent(%q) accepted", bad)
		}
	}
	if ev, _ := ParseEvent("call helper name:r0 helper:fence-peer"); ev.SplitBrain() {
		t.Error("fence-peer helper taken for split brain")
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add("r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    replication:Established peer-disk:UpToDate\n", "r0")
	f.Add("r0 role:Secondary\n  disk:UpToDate\n  node-a connection:StandAlone\n", "")
	f.Add("r0 node-id:0 role:Primary\n  volume:0 disk:UpToDate\n  tom node-id:1 connection:Connected role:Secondary\n    volume:0 replication:Established peer-disk:UpToDate\n", "r0")
	f.Fuzz(func(t *testing.T, out, res string) {
		st, err := ParseStatus(out, res)
		if err != nil {
			return
		}
		if st.Resource == "" || (res != "" && st.Resource != res) || st.Role == "" || st.Disk == "" {
			t.Fatalf("incomplete state %+v from %q", st, out)
		}
		_ = st.PeerPrimary()
		_ = st.Peer()
	})
}

func FuzzParseEvent(f *testing.F) {
	for _, l := range events2Lines {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, err := ParseEvent(line)
		if err != nil {
			return
		}
		if !eventVerbs[ev.Verb] || ev.Object == "" {
			t.Fatalf("bad event %+v from %q", ev, line)
		}
		st := DRBDState{Resource: "r0"}.Apply(ev).Apply(ev)
		_ = st.PeerPrimary()
		for _, p := range st.Peers {
			if p.Connection != ConnConnected && p.Role == RolePrimary && ev.Fields["role"] != RolePrimary {
				t.Fatalf("disconnected peer kept Primary: %+v", st)
			}
		}
	})
}

func TestParseMountinfo(t *testing.T) {
	mi := "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" +
		"40 22 0:40 / /var/lib/with\\040space rw - tmpfs tmpfs rw\n" +
		"41 22 147:0 / /replica rw - ext3 /dev/drbd0 rw,errors=continue\n"
	for mp, want := range map[string]string{"/replica": "/dev/drbd0", "/replica/": "/dev/drbd0", "/var/lib/with space": "tmpfs", "/nope": "", "/": "/dev/sda1"} {
		got, err := parseMountinfo(bufioScanner(mi), mp)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", mp, got, err, want)
		}
	}
}
