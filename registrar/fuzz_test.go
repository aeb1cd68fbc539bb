package registrar

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func crlf(s string) []byte {
	return []byte(strings.ReplaceAll(strings.TrimLeft(s, "\n"), "\n", "\r\n"))
}

// FuzzExtract feeds sipgo-parsed REGISTER/2xx pairs through extraction,
// Save, Lookup and RefreshFromStore: nothing may panic, and whatever is
// stored must be well formed.
func FuzzExtract(f *testing.F) {
	pairs := [][2]string{
		{zoiperReq, zoiperRes}, {xliteReq, xliteRes}, {baresipReq, baresipResNoContact},
		{multiReq, multiRes}, {starReq, starRes}, {queryReq, queryRes},
	}
	for _, p := range pairs {
		f.Add(crlf(p[0]), crlf(p[1]))
	}
	cfg := DefaultConfig()
	cfg.DataDir = ""
	cfg.MaxBindings = 1000
	r, err := newAt(cfg, t0, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, reqData, resData []byte) {
		m1, err := sip.ParseMessage(reqData)
		if err != nil {
			return
		}
		m2, err := sip.ParseMessage(resData)
		if err != nil {
			return
		}
		req, ok1 := m1.(*sip.Request)
		res, ok2 := m2.(*sip.Response)
		if !ok1 || !ok2 {
			return
		}
		s := src("198.51.100.9:5060")
		u, err := extract(&cfg, req, res, s, "ast1", t0)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("extract error %v is not ErrInvalid", err)
			}
			return
		}
		for _, b := range u.set {
			if b.Contact == "" || !b.Expires.After(t0) || b.Expires.Sub(t0) > cfg.MaxExpires {
				t.Fatalf("bad binding %+v", b)
			}
			if _, ok := r.tab.key(b.AOR); !ok {
				t.Fatalf("stored AOR %q has no key", b.AOR)
			}
		}
		bs, err := r.Save(req, res, s, "ast1")
		if err != nil && !errors.Is(err, ErrFull) {
			t.Fatalf("Save after a good extract: %v", err)
		}
		for _, b := range bs {
			if _, err := r.Lookup(b.AOR); err != nil {
				t.Fatalf("Lookup(%q) after Save returned it: %v", b.AOR, err)
			}
			if b.Contact == "" {
				t.Fatal("empty contact stored")
			}
		}
		if bs, err := r.RefreshFromStore(req, s); err == nil {
			_ = RefreshResponse(req, bs, t0).String()
		} else if !errors.Is(err, ErrNotRefreshable) {
			t.Fatalf("RefreshFromStore: %v", err)
		}
		if r.Purge() < 0 {
			t.Fatal("negative purge")
		}
	})
}

// FuzzDecodeRecord: records arrive from peers and from disk.
func FuzzDecodeRecord(f *testing.F) {
	good := Record{
		Binding: Binding{AOR: "sip:201@pbx.example.com", Contact: "sip:201@10.0.0.1:5060", Source: src("192.0.2.1:5060"),
			CallID: "c", CSeq: 3, Expires: t0.Add(time.Hour), Updated: t0, Q: 1},
		Version: Version{Time: t0.UnixNano(), Node: "a"},
	}
	b, _ := good.MarshalBinary()
	f.Add(b)
	tomb := good
	tomb.Deleted = true
	b, _ = tomb.MarshalBinary()
	f.Add(b)
	f.Add([]byte(`{"f":1}`))
	f.Add([]byte(`garbage`))
	r, err := newAt(Config{MinExpires: time.Second, MaxExpires: time.Hour, DefaultExpires: time.Hour,
		PurgeInterval: time.Second, MaxBindings: 100, MaxBindingsPerAOR: 10}, t0, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := DecodeRecord(data)
		if err != nil {
			return
		}
		enc, err := rec.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := DecodeRecord(enc); err != nil {
			t.Fatalf("re-decode of %s: %v", enc, err)
		}
		if _, err := r.Merge([]Record{rec}); err != nil {
			t.Fatal(err)
		}
		_, _ = r.Lookup(rec.Binding.AOR)
	})
}
