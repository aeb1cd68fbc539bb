package app

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/storage"
)

// TestClusterAgentResolves: the backend's agent is reached at the URL of
// the alive member announcing that backend, looked up on every call; with
// none, the call fails with errAgentNotJoined (the node is unreachable).
func TestClusterAgentResolves(t *testing.T) {
	serve := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != storage.PathStatus {
				http.NotFound(w, r)
				return
			}
			_ = json.NewEncoder(w).Encode(storage.Status{State: name})
		}))
		t.Cleanup(s.Close)
		return s
	}
	s1, s2 := serve("one"), serve("two")
	var mu sync.Mutex
	var members []cluster.AgentInfo
	set := func(m ...cluster.AgentInfo) { mu.Lock(); members = m; mu.Unlock() }
	a := &clusterAgent{backend: "asterisk1", client: storage.Client{Token: "t"}, log: zap.NewNop(),
		agents: func() []cluster.AgentInfo { mu.Lock(); defer mu.Unlock(); return members }}
	ctx := context.Background()
	check := func(want string) {
		t.Helper()
		st, err := a.Status(ctx)
		switch {
		case want == "" && !errors.Is(err, errAgentNotJoined):
			t.Fatalf("Status with %+v: %v, want errAgentNotJoined", members, err)
		case want != "" && (err != nil || st.State != want):
			t.Fatalf("Status with %+v: %q %v, want the agent %q", members, st.State, err, want)
		}
	}
	check("")
	set(cluster.AgentInfo{Name: "pbx1", Backend: "asterisk2", API: s1.URL, Alive: true},
		cluster.AgentInfo{Name: "pbx2", Backend: "asterisk1", API: s1.URL, Alive: false})
	check("")
	set(cluster.AgentInfo{Name: "pbx2", Backend: "asterisk1", API: s1.URL, Alive: true})
	check("one")
	// The agent came back elsewhere: followed at the next call.
	set(cluster.AgentInfo{Name: "pbx2", Backend: "asterisk1", API: s2.URL, Alive: true})
	check("two")
	// Two agents claim the backend (a configuration error): the first by name wins.
	set(cluster.AgentInfo{Name: "a", Backend: "asterisk1", API: s1.URL, Alive: true},
		cluster.AgentInfo{Name: "b", Backend: "asterisk1", API: s2.URL, Alive: true})
	check("one")
	set()
	if _, err := a.Stop(ctx); !errors.Is(err, errAgentNotJoined) {
		t.Fatalf("Stop without the agent: %v", err)
	}
	if _, err := a.Start(ctx, storage.StartOptions{}); !errors.Is(err, errAgentNotJoined) {
		t.Fatalf("Start without the agent: %v", err)
	}
}
