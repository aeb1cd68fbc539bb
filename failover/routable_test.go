package failover

import (
	"slices"
	"testing"

	"github.com/hapbx/hapbx/health"
)

// TestRoutableAgreesWithCandidates: Routable and OnlyRoutable answer what
// Candidates lists, in every combination of states of three backends.
func TestRoutableAgreesWithCandidates(t *testing.T) {
	names := []string{"a", "b", "c"}
	states := []health.State{N, U, S, D}
	for _, routing := range []string{RoutingActiveStandby, RoutingBalance} {
		s, err := New(Config{Routing: routing, Failback: true}, names, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range len(states) * len(states) * len(states) {
			set := map[string]health.State{"a": states[i%4], "b": states[i/4%4], "c": states[i/16]}
			for _, n := range names {
				s.Apply(health.Change{Name: n, To: set[n]})
			}
			c := s.Candidates("")
			for _, n := range append(names, "unknown") {
				if got, want := s.Routable(n), slices.Contains(c, n); got != want {
					t.Errorf("%s %v: Routable(%s) = %v, Candidates %v", routing, set, n, got, c)
				}
				if got, want := s.OnlyRoutable(n), len(c) == 1 && c[0] == n; got != want {
					t.Errorf("%s %v: OnlyRoutable(%s) = %v, Candidates %v", routing, set, n, got, c)
				}
			}
		}
	}
}
