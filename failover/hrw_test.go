package failover

import (
	"hash/fnv"
	"strconv"
	"testing"

	"github.com/hapbx/hapbx/health"
)

// hrwScoreFNV is hrwScore as written before it was unrolled (hash/fnv):
// both proxies of a pair, of whatever version, must send a Call-ID to the
// same backend.
func hrwScoreFNV(key, backend string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(backend))
	return splitmixFinish(h.Sum64())
}

func TestHRWScoreIsFNV(t *testing.T) {
	keys := []string{"", "a", "kF3m9QxW2pL8vR4tY7uI1oA5sD6gH0jZ", "1-2345@10.0.0.1", "\x00\xff"}
	for i := range 200 {
		keys = append(keys, strconv.Itoa(i*7919)+"-call@10.0.0."+strconv.Itoa(i%250))
	}
	for _, k := range keys {
		for _, b := range []string{"", "asterisk1", "asterisk2", "pbx-with-a-long-name"} {
			if got, want := hrwScore(k, b), hrwScoreFNV(k, b); got != want {
				t.Fatalf("hrwScore(%q, %q) = %x, want %x", k, b, got, want)
			}
		}
	}
}

func TestHRWOrderManyBackends(t *testing.T) {
	var names []string
	for i := range 12 { // more than hrwOrder's stack array
		names = append(names, "pbx"+strconv.Itoa(i))
	}
	hrwOrder("call-1", names)
	for i := 1; i < len(names); i++ {
		if hrwScore("call-1", names[i-1]) < hrwScore("call-1", names[i]) {
			t.Fatalf("not in descending score order: %v", names)
		}
	}
}

func TestChangedWakesOnEveryChange(t *testing.T) {
	s, err := New(Config{Routing: RoutingBalance, Failback: true}, []string{"a", "b"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}
	c := s.Changed()
	if closed(c) {
		t.Fatal("closed before any change")
	}
	s.Apply(health.Change{Name: "a", To: U})
	if !closed(c) {
		t.Fatal("not closed by a health change")
	}
	c = s.Changed()
	if closed(c) {
		t.Fatal("the next one is closed before the next change")
	}
	if err := s.SetBackends([]string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	if !closed(c) {
		t.Fatal("not closed by a reload")
	}
}

func BenchmarkCandidates(b *testing.B) {
	for _, routing := range []string{RoutingActiveStandby, RoutingBalance} {
		b.Run(routing, func(b *testing.B) {
			s, err := New(Config{Routing: routing, Failback: true}, []string{"asterisk1", "asterisk2"}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			s.Apply(health.Change{Name: "asterisk1", To: U})
			s.Apply(health.Change{Name: "asterisk2", To: U})
			b.ReportAllocs()
			for b.Loop() {
				s.Candidates("kF3m9QxW2pL8vR4tY7uI1oA5sD6gH0jZ@192.168.1.23")
			}
		})
	}
}
