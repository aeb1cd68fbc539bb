package trunk

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
)

// The set answers what the proxy will ask: the trunk of a source, its
// hosts, its credentials and backends; Run keeps the keepalive going and
// Status shows it.
func TestSet(t *testing.T) {
	uas := testkit.StartOptionsUAS(t, "127.0.0.1", 0, 200, "udp")
	send, port := sipStack(t)
	cfgs := []Config{
		Config{Name: "a", Hosts: []string{uas.Addr()}, User: "4930123", CredentialsFile: "x", Backends: []string{"asterisk2"}}.WithDefaults(),
		Config{Name: "b", Hosts: []string{"192.0.2.10"}, ACL: []string{"192.0.2.0/24", "127.0.0.0/8"}}.WithDefaults(),
	}
	reg := prometheus.NewRegistry()
	sc := SetConfig{Contact: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), Registration: DefaultRegistrationConfig()}
	s, err := NewSet(cfgs, map[string]string{"a": "s3cret"}, sc, nil, send, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]string{"127.0.0.1": "a", "127.0.0.2": "b", "192.0.2.10": "b", "198.51.100.1": ""} {
		if got, _ := s.Match(netip.MustParseAddr(src)); got != want {
			t.Errorf("Match(%s) = %q, want %q", src, got, want)
		}
	}
	if u, p, ok := s.Credentials("a"); !ok || u != "4930123" || p != "s3cret" {
		t.Errorf("Credentials(a) = %q %q %v", u, p, ok)
	}
	if _, _, ok := s.Credentials("b"); ok {
		t.Error("Credentials(b): b has none")
	}
	if got := s.Backends("a"); !slices.Equal(got, []string{"asterisk2"}) {
		t.Errorf("Backends(a) = %v", got)
	}
	if _, err := s.Targets(context.Background(), "zzz"); !errors.Is(err, ErrUnknown) {
		t.Errorf("Targets(zzz): %v", err)
	}
	if s.Registration("a") != nil {
		t.Error("a does not register")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testkit.Eventually(t, eventWait, "trunk a's host probed up", func() bool {
		st := s.Status()
		return len(st) == 2 && st[0].Name == "a" && st[0].Hosts["udp:"+uas.Addr()]
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := NewSet(cfgs, nil, sc, nil, send, zaptest.NewLogger(t), reg); err == nil {
		t.Error("a second set on one registry: metrics registered twice, no error")
	}
}
