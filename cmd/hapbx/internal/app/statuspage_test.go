package app

import (
	"testing"
	"time"

	"github.com/hapbx/hapbx/proxy/trunk"
)

func TestPageTrunksFromTrunkStatus(t *testing.T) {
	exp := time.Date(2026, 12, 5, 10, 30, 0, 0, time.UTC)
	src := pageTrunks(func() []trunk.Status {
		return []trunk.Status{
			{Name: "carrier", Hosts: map[string]bool{"udp:192.0.2.1:5060": true, "udp:192.0.2.2:5060": false},
				Registration: &trunk.State{Registered: true, Expires: exp, Host: "192.0.2.1:5060"}},
			{Name: "backup", Hosts: map[string]bool{"udp:198.51.100.1:5060": false},
				Registration: &trunk.State{LastError: "403 Forbidden"}},
			{Name: "static", Hosts: map[string]bool{}},
		}
	})
	got := src.Trunks()
	want := []struct{ name, state, provider, reason string }{
		{"carrier", "registered until 10:30:00, 1 of 2 hosts answer", "192.0.2.1:5060", ""},
		{"backup", "not registered, 0 of 1 hosts answer", "", "403 Forbidden"},
		{"static", "no registration, 0 of 0 hosts answer", "", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d trunks, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.name || g.State != w.state || g.Provider != w.provider || g.Reason != w.reason {
			t.Errorf("trunk %d: got %+v, want %+v", i, g, w)
		}
	}
}
