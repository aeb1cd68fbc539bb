package registrar

import "testing"

// TestStateChannel: what a registrar sends through StateChanges and its
// StateSnapshot, applied on peers as bytes, give them the same bindings;
// bytes that are not a record are skipped, the rest still applied.
func TestStateChannel(t *testing.T) {
	a, _, _ := newTest(t, "", nil)
	live, _, _ := newTest(t, "", nil)
	joined, _, _ := newTest(t, "", nil)
	a.StateChanges(func(b []byte) error {
		live.ApplyState([][]byte{[]byte("not a record"), b})
		return nil
	}, nil)
	for i, user := range []string{"1001", "1002"} {
		req, res := register(t, user, "sip:"+user+"@10.0.0.1:5060", "c"+user, i+1, 600)
		if _, err := a.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
			t.Fatal(err)
		}
	}
	joined.ApplyState(a.StateSnapshot())
	want := canonical(t, a)
	if n, _ := a.Count(); n != 2 {
		t.Fatalf("origin has %d bindings, want 2", n)
	}
	if got := canonical(t, live); got != want {
		t.Fatalf("peer fed by StateChanges differs from the origin")
	}
	if got := canonical(t, joined); got != want {
		t.Fatalf("peer fed by StateSnapshot differs from the origin")
	}
}
