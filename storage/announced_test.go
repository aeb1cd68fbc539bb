package storage

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// TestAnnouncedClientResolves: the backend's agent is reached at the URL of
// the alive member announcing that backend, looked up on every call; with
// none, the call fails with ErrAgentNotJoined (the node is unreachable).
func TestAnnouncedClientResolves(t *testing.T) {
	serve := func(name string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != PathStatus {
				http.NotFound(w, r)
				return
			}
			_ = json.NewEncoder(w).Encode(Status{State: name})
		}))
		t.Cleanup(s.Close)
		return s
	}
	s1, s2 := serve("one"), serve("two")
	var mu sync.Mutex
	var members []Announced
	set := func(m ...Announced) { mu.Lock(); members = m; mu.Unlock() }
	a := NewAnnouncedClient("asterisk1", Client{Token: "t"},
		func() []Announced { mu.Lock(); defer mu.Unlock(); return members }, zap.NewNop())
	ctx := context.Background()
	check := func(want string) {
		t.Helper()
		st, err := a.Status(ctx)
		switch {
		case want == "" && !errors.Is(err, ErrAgentNotJoined):
			t.Fatalf("Status with %+v: %v, want ErrAgentNotJoined", members, err)
		case want != "" && (err != nil || st.State != want):
			t.Fatalf("Status with %+v: %q %v, want the agent %q", members, st.State, err, want)
		}
	}
	check("")
	set(Announced{Name: "pbx1", Backend: "asterisk2", API: s1.URL, Alive: true},
		Announced{Name: "pbx2", Backend: "asterisk1", API: s1.URL, Alive: false})
	check("")
	set(Announced{Name: "pbx2", Backend: "asterisk1", API: s1.URL, Alive: true})
	check("one")
	// The agent came back elsewhere: followed at the next call.
	set(Announced{Name: "pbx2", Backend: "asterisk1", API: s2.URL, Alive: true})
	check("two")
	// Two agents claim the backend (a configuration error): the first by name wins.
	set(Announced{Name: "a", Backend: "asterisk1", API: s1.URL, Alive: true},
		Announced{Name: "b", Backend: "asterisk1", API: s2.URL, Alive: true})
	check("one")
	set()
	if _, err := a.Stop(ctx); !errors.Is(err, ErrAgentNotJoined) {
		t.Fatalf("Stop without the agent: %v", err)
	}
	if _, err := a.Start(ctx, StartOptions{}); !errors.Is(err, ErrAgentNotJoined) {
		t.Fatalf("Start without the agent: %v", err)
	}
}
