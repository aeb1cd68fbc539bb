package registrar

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// canonical is a registrar's replicated state as comparable bytes.
func canonical(t *testing.T, r *Registrar) string {
	t.Helper()
	var encs [][]byte
	for _, rec := range r.Records() {
		b, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, b)
	}
	slices.SortFunc(encs, bytes.Compare)
	return string(bytes.Join(encs, []byte("\n")))
}

// randomRecords draws records over few keys, few clock values and few
// nodes so that conflicts, equal versions and tombstones are frequent.
func randomRecords(rng *rand.Rand, n int) []Record {
	out := make([]Record, 0, n)
	for range n {
		aor := fmt.Sprintf("sip:%d@pbx.example.com", 200+rng.Intn(3))
		contact := fmt.Sprintf("sip:%d@10.0.0.%d:5060", 200+rng.Intn(3), 1+rng.Intn(3))
		rec := Record{
			Binding: Binding{
				AOR:     aor,
				Contact: contact,
				Expires: t0.Add(time.Duration(rng.Intn(600)-60) * time.Second), // some already expired
				Updated: t0,
			},
			Deleted: rng.Intn(3) == 0,
			Version: Version{Time: t0.UnixNano() + int64(rng.Intn(5)), Node: []string{"a", "b", "c"}[rng.Intn(3)]},
		}
		if !rec.Deleted {
			rec.Binding.Source = Source{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.Intn(4))}), 5060), Transport: "udp"}
			rec.Binding.CallID = fmt.Sprintf("cid-%d", rng.Intn(3))
			rec.Binding.CSeq = uint32(rng.Intn(10))
			rec.Binding.Q = 1
		}
		out = append(out, rec)
	}
	return out
}

func TestMergeConvergesProperty(t *testing.T) {
	rng := rand.New(rand.NewSource(20261125))
	for round := range 200 {
		recs := randomRecords(rng, 1+rng.Intn(40))

		ref, _, _ := newTest(t, "", nil)
		if _, err := ref.Merge(recs); err != nil {
			t.Fatal(err)
		}
		ref.Purge()
		wantPurged := canonical(t, ref)

		for variant := range 4 {
			// A permutation with duplicates, delivered in random chunks.
			in := slices.Clone(recs)
			for range rng.Intn(len(recs) + 1) {
				in = append(in, recs[rng.Intn(len(recs))])
			}
			rng.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
			r, _, _ := newTest(t, "", nil)
			for len(in) > 0 {
				k := 1 + rng.Intn(len(in))
				if _, err := r.Merge(in[:k]); err != nil {
					t.Fatal(err)
				}
				in = in[k:]
				if rng.Intn(4) == 0 {
					r.Purge() // purging midway must not change the outcome
				}
			}
			r.Purge()
			if got := canonical(t, r); got != wantPurged {
				t.Fatalf("round %d variant %d: state differs after purge\n got: %s\nwant: %s", round, variant, got, wantPurged)
			}
			// Idempotent: the whole set again changes nothing.
			if n, _ := r.Merge(recs); n != 0 {
				t.Fatalf("round %d variant %d: re-merge took %d records", round, variant, n)
			}
		}
	}
}

func TestMergeWithoutPurgeOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for round := range 200 {
		recs := randomRecords(rng, 1+rng.Intn(30))
		a, _, _ := newTest(t, "", nil)
		b, _, _ := newTest(t, "", nil)
		rev := slices.Clone(recs)
		slices.Reverse(rev)
		a.Merge(recs)
		for _, rec := range rev { // one at a time, reversed
			b.Merge([]Record{rec})
		}
		if ca, cb := canonical(t, a), canonical(t, b); ca != cb {
			t.Fatalf("round %d: forward and reversed merges differ\n%s\n--\n%s", round, ca, cb)
		}
		// Counters agree with the content.
		na, _ := a.Count()
		nb, _ := b.Count()
		if na != nb {
			t.Fatalf("round %d: counts %d vs %d", round, na, nb)
		}
	}
}

func TestTombstoneVersusLateUpdate(t *testing.T) {
	a, clkA, _ := newTest(t, "", nil)
	b, clkB, _ := newTest(t, "", nil)
	b.node = "node-b"
	var fromA []Record
	a.OnChange(func(r Record) { fromA = append(fromA, r) })

	req, res := register(t, "201", "sip:201@10.0.0.1:5060", "c1", 1, 600)
	if _, err := a.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	clkA.advance(time.Second)
	req, res = register(t, "201", "sip:201@10.0.0.1:5060", "c1", 2, 0)
	if _, err := a.Save(req, res, src("192.0.2.1:5060"), "ast1"); err != nil {
		t.Fatal(err)
	}
	if len(fromA) != 2 || fromA[0].Deleted || !fromA[1].Deleted {
		t.Fatalf("changes %+v: want binding then tombstone", fromA)
	}
	// The tombstone reaches b before the (late) binding.
	clkB.advance(2 * time.Second)
	b.Merge([]Record{fromA[1]})
	b.Merge([]Record{fromA[0]})
	if _, err := b.Lookup("201"); !errors.Is(err, ErrNoBinding) {
		t.Fatalf("late update resurrected a removed binding: %v", err)
	}
	// A new registration on b (after the tombstone) wins everywhere, even
	// though b's wall clock is not ahead of a's tombstone version.
	clkB.t = t0
	req, res = register(t, "201", "sip:201@10.0.0.1:5060", "c2", 1, 600)
	if _, err := b.Save(req, res, src("192.0.2.1:5060"), "ast2"); err != nil {
		t.Fatal(err)
	}
	if bs, err := b.Lookup("201"); err != nil || bs[0].CallID != "c2" {
		t.Fatalf("re-registration on b: %+v %v", bs, err)
	}
	a.Merge(b.Records())
	b.Merge(a.Records())
	if ca, cb := canonical(t, a), canonical(t, b); ca != cb {
		t.Fatalf("a and b differ after exchange\n%s\n--\n%s", ca, cb)
	}
	if bs, err := a.Lookup("201"); err != nil || bs[0].CallID != "c2" {
		t.Fatalf("a after exchange: %+v %v", bs, err)
	}
	// Tombstones are kept until max_expires after the removal, then dropped.
	clkA.advance(time.Hour)
	a.Purge()
	if s := a.Snapshot(); s.Tombstones != 0 {
		t.Fatalf("tombstone outlived max_expires: %+v", s)
	}
}

func TestMergeSkipsBadRecords(t *testing.T) {
	r, _, _ := newTest(t, "", nil)
	good := Record{Binding: Binding{AOR: "sip:1@x", Contact: "sip:1@h", Expires: t0.Add(time.Minute)}, Version: Version{Time: 1, Node: "a"}}
	bad := []Record{
		{Binding: Binding{AOR: "nonsense@", Contact: "sip:1@h", Expires: t0.Add(time.Minute)}, Version: Version{Time: 1, Node: "a"}},
		{Binding: Binding{AOR: "sip:1@x", Expires: t0.Add(time.Minute)}, Version: Version{Time: 1, Node: "a"}},
		{Binding: Binding{AOR: "sip:1@x", Contact: "sip:1@h", Expires: t0.Add(time.Minute)}, Version: Version{Time: 1}},
		{Binding: Binding{AOR: "sip:1@x", Contact: "sip:1@h"}, Version: Version{Time: 1, Node: "a"}},
	}
	n, err := r.Merge(append(bad, good))
	if err != nil || n != 1 {
		t.Fatalf("Merge took %d (%v), want only the good record", n, err)
	}
}

func TestRecordEncodingRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, rec := range randomRecords(rng, 50) {
		b, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeRecord(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		b2, _ := back.MarshalBinary()
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed\n%s\n%s", b, b2)
		}
	}
	if _, err := DecodeRecord([]byte(`{"f":2,"b":{"aor":"sip:1@x"}}`)); err == nil {
		t.Fatal("unknown format accepted")
	}
}
