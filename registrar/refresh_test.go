package registrar

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func TestRefreshFromStore(t *testing.T) {
	const contact = "sip:201@192.168.1.23:39012;rinstance=5b3c1a8d7e2f9a01;transport=UDP"
	phone := src("203.0.113.7:39012")
	type tc struct {
		name    string
		user    string
		contact string
		callID  string
		cseq    int
		expires int
		from    Source
		advance time.Duration
		ok      bool
	}
	cases := []tc{
		{name: "plain refresh", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 600, from: phone, ok: true},
		{name: "contact params in other order and case", user: "201",
			contact: "sip:201@192.168.1.23:39012;transport=udp;rinstance=5B3C1A8D7E2F9A01", callID: "cid-1", cseq: 11, expires: 600, from: phone, ok: true},
		{name: "wrong Call-ID", user: "201", contact: contact, callID: "cid-2", cseq: 11, expires: 600, from: phone},
		{name: "other source port", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 600, from: src("203.0.113.7:39013")},
		{name: "other source address", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 600, from: src("203.0.113.8:39012")},
		{name: "other transport", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 600,
			from: Source{Addr: phone.Addr, Transport: "tcp"}},
		{name: "same CSeq (retransmission)", user: "201", contact: contact, callID: "cid-1", cseq: 10, expires: 600, from: phone},
		{name: "lower CSeq", user: "201", contact: contact, callID: "cid-1", cseq: 9, expires: 600, from: phone},
		{name: "other contact", user: "201", contact: "sip:201@192.168.1.23:40000", callID: "cid-1", cseq: 11, expires: 600, from: phone},
		{name: "other AOR", user: "202", contact: contact, callID: "cid-1", cseq: 11, expires: 600, from: phone},
		{name: "removal needs a backend", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 0, from: phone},
		{name: "expired binding", user: "201", contact: contact, callID: "cid-1", cseq: 11, expires: 600, from: phone, advance: 301 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, clk, reg := newTest(t, "", nil)
			var got []Record
			r.OnChange(func(rec Record) { got = append(got, rec) })
			req, res := register(t, "201", contact, "cid-1", 10, 300)
			if _, err := r.Save(req, res, phone, "ast1"); err != nil {
				t.Fatal(err)
			}
			clk.advance(100*time.Second + c.advance)
			req, _ = register(t, c.user, c.contact, c.callID, c.cseq, c.expires)
			bs, err := r.RefreshFromStore(req, c.from)
			if !c.ok {
				if !errors.Is(err, ErrNotRefreshable) {
					t.Fatalf("err %v, want ErrNotRefreshable", err)
				}
				if len(got) != 1 {
					t.Fatalf("a refused refresh emitted changes: %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("RefreshFromStore: %v", err)
			}
			if len(bs) != 1 || bs[0].CSeq != uint32(c.cseq) || !bs[0].Expires.Equal(t0.Add(300*time.Second)) {
				t.Fatalf("bindings %+v: want CSeq %d and the expiry unchanged", bs, c.cseq)
			}
			if len(got) != 2 || got[1].Binding.CSeq != uint32(c.cseq) {
				t.Fatalf("changes %+v: want the CSeq update broadcast", got)
			}
			if v := metricValue(t, reg, "hapbx_registrar_changes_total", "op", "store"); v != 1 {
				t.Fatalf("changes{store} = %v", v)
			}
			// The same request again is a retransmission now: refused.
			if _, err := r.RefreshFromStore(req, c.from); !errors.Is(err, ErrNotRefreshable) {
				t.Fatalf("replay: %v", err)
			}

			res = RefreshResponse(req, bs, clk.now())
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			text := res.String()
			parsed, err := sip.ParseMessage([]byte(text))
			if err != nil {
				t.Fatalf("own 200 does not parse: %v\n%s", err, text)
			}
			cts := contacts(parsed)
			if len(cts) != 1 || cts[0].Address.String() != contact {
				t.Fatalf("200 contacts %v:\n%s", cts, text)
			}
			if e, _ := cts[0].Params.Get("expires"); e != "200" {
				t.Fatalf("200 expires=%q, want remaining 200:\n%s", e, text)
			}
			if !strings.Contains(text, "Date: Wed, 25 Nov 2026 01:01:40 GMT") || parsed.CallID().Value() != c.callID {
				t.Fatalf("200 lacks Date or Call-ID:\n%s", text)
			}
		})
	}
}
