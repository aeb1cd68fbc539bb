package registrar

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

const zoiperReq = `
REGISTER sip:pbx.example.com;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 192.168.1.23:39012;branch=z9hG4bK-524287-1---1c1b8e7b2c8e1d0e;rport
Max-Forwards: 70
Contact: <sip:201@192.168.1.23:39012;rinstance=5b3c1a8d7e2f9a01;transport=UDP>
To: <sip:201@PBX.example.com;transport=UDP>
From: <sip:201@pbx.example.com;transport=UDP>;tag=6c1d6a2b
Call-ID: ZGQ5MmE3YzY4YjFhNDBlMDNhZmI2ZGZjNjcxMDc2ZTI
CSeq: 2 REGISTER
Expires: 60
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE
User-Agent: Zoiper rv2.10.20.5
Authorization: Digest username="201",realm="asterisk",nonce="1a2b3c4d",uri="sip:pbx.example.com;transport=UDP",response="0f1e2d3c4b5a69788796a5b4c3d2e1f0",algorithm=MD5
Allow-Events: presence, kpml, talk
Content-Length: 0

`

// chan_sip answers with both the Expires header and the expires param.
const zoiperRes = `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.168.1.23:39012;branch=z9hG4bK-524287-1---1c1b8e7b2c8e1d0e;received=203.0.113.7;rport=39012
From: <sip:201@pbx.example.com;transport=UDP>;tag=6c1d6a2b
To: <sip:201@pbx.example.com;transport=UDP>;tag=as5e2f1b7c
Call-ID: ZGQ5MmE3YzY4YjFhNDBlMDNhZmI2ZGZjNjcxMDc2ZTI
CSeq: 2 REGISTER
Server: Asterisk PBX 20.5.0
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH, MESSAGE
Supported: replaces, timer
Expires: 60
Contact: <sip:201@192.168.1.23:39012;rinstance=5b3c1a8d7e2f9a01;transport=UDP>;expires=60
Date: Wed, 25 Nov 2026 00:40:00 GMT
Content-Length: 0

`

const xliteReq = `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.15:5060;branch=z9hG4bK-d8754z-2c3a1b9e8f7d6c5b-1---d8754z-;rport
Max-Forwards: 70
Contact: <sip:202@10.0.0.15:5060;rinstance=0b7d2f4f8a1c3e55>
To: "202"<sip:202@pbx.example.com>
From: "202"<sip:202@pbx.example.com>;tag=3f1c2a9b
Call-ID: NjM0ZDNhYjE4ZWE0ZjQ3YjM2NjFjYjY1ZTg1NWQ0MjQ.
CSeq: 1 REGISTER
Expires: 3600
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO
User-Agent: X-Lite release 4.9.8 stamp 84253
Content-Length: 0

`

// pjsip lists every binding of the AOR with an expires param, no header;
// it granted 1800 s of the 3600 asked and knows a second device.
const xliteRes = `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 10.0.0.15:5060;rport=5060;received=198.51.100.4;branch=z9hG4bK-d8754z-2c3a1b9e8f7d6c5b-1---d8754z-
Call-ID: NjM0ZDNhYjE4ZWE0ZjQ3YjM2NjFjYjY1ZTg1NWQ0MjQ.
From: "202" <sip:202@pbx.example.com>;tag=3f1c2a9b
To: "202" <sip:202@pbx.example.com>;tag=z9hG4bK-d8754z-2c3a1b9e8f7d6c5b-1---d8754z-
CSeq: 1 REGISTER
Date: Wed, 25 Nov 2026 00:40:00 GMT
Contact: <sip:202@10.0.0.15:5060;rinstance=0b7d2f4f8a1c3e55>;expires=1799
Contact: <sip:202@10.0.0.99:5062>;expires=300
Server: Asterisk PBX 20.5.0
Content-Length:  0

`

const baresipReq = `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/TCP 10.0.0.20:45123;branch=z9hG4bK5a7c9e1b3d;rport;alias
Contact: <sip:203-0x55d8c1e0@10.0.0.20:45123;transport=tcp>;+sip.instance="<urn:uuid:3c1a9e2b-7f3d-4c5e-9a1b-2d3e4f5a6b7c>";reg-id=1;expires=600;q=0.7
Max-Forwards: 70
To: <sip:203@pbx.example.com>
From: <sip:203@pbx.example.com>;tag=8e2a4c6f1b3d5e7a
Call-ID: 6f1c7d1e2a3b4c5d
CSeq: 34301 REGISTER
User-Agent: baresip v1.0.0 (x86_64/linux)
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER
Supported: outbound,path,replaces,norefersub
Content-Length: 0

`

// A 2xx that lists nothing (non-compliant) and has an Expires header.
const baresipResNoContact = `
SIP/2.0 200 OK
Via: SIP/2.0/TCP 10.0.0.20:45123;branch=z9hG4bK5a7c9e1b3d;rport=45123;received=10.0.0.20;alias
From: <sip:203@pbx.example.com>;tag=8e2a4c6f1b3d5e7a
To: <sip:203@pbx.example.com>;tag=as77
Call-ID: 6f1c7d1e2a3b4c5d
CSeq: 34301 REGISTER
Expires: 300
Content-Length: 0

`

const multiReq = `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKmulti;rport
From: <sip:204@pbx.example.com>;tag=m1
To: <sip:204@pbx.example.com>
Call-ID: multi-1
CSeq: 7 REGISTER
Contact: <sip:204@192.0.2.30:5060>;expires=120, <sip:204@192.0.2.30:5070;transport=udp>;q=0.5
m: <sip:204@192.0.2.31:5060>;expires=0
Expires: 900
Content-Length: 0

`

const multiRes = `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.30:5060;branch=z9hG4bKmulti;rport=5060
From: <sip:204@pbx.example.com>;tag=m1
To: <sip:204@pbx.example.com>;tag=t1
Call-ID: multi-1
CSeq: 7 REGISTER
Contact: <sip:204@192.0.2.30:5060>;expires=120,<sip:204@192.0.2.30:5070;transport=UDP>;expires=900
Content-Length: 0

`

const starReq = `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.23:39012;branch=z9hG4bKstar;rport
From: <sip:201@pbx.example.com>;tag=s1
To: <sip:201@pbx.example.com>
Call-ID: ZGQ5MmE3YzY4YjFhNDBlMDNhZmI2ZGZjNjcxMDc2ZTI
CSeq: 9 REGISTER
Contact: *
Expires: 0
Content-Length: 0

`

const starRes = `
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.168.1.23:39012;branch=z9hG4bKstar;rport=39012
From: <sip:201@pbx.example.com>;tag=s1
To: <sip:201@pbx.example.com>;tag=t9
Call-ID: ZGQ5MmE3YzY4YjFhNDBlMDNhZmI2ZGZjNjcxMDc2ZTI
CSeq: 9 REGISTER
Content-Length: 0

`

const queryReq = `
REGISTER sip:pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.23:39012;branch=z9hG4bKq;rport
From: <sip:201@pbx.example.com>;tag=q1
To: <sip:201@pbx.example.com>
Call-ID: query-1
CSeq: 1 REGISTER
Content-Length: 0

`

var queryRes = strings.ReplaceAll(starRes, "Call-ID: ZGQ5MmE3YzY4YjFhNDBlMDNhZmI2ZGZjNjcxMDc2ZTI", "Call-ID: query-1")

func TestExtract(t *testing.T) {
	type want struct {
		aor       string
		set       map[string]time.Duration // contact -> lifetime
		q         map[string]float32
		remove    []string
		removeAll bool
		query     bool
		ua        string
		cseq      uint32
		err       error
	}
	cfg := DefaultConfig()
	cases := []struct {
		name     string
		req, res string
		mod      func(*Config)
		want     want
	}{
		{
			name: "zoiper chan_sip header and param",
			req:  zoiperReq, res: zoiperRes,
			want: want{
				aor: "sip:201@pbx.example.com",
				set: map[string]time.Duration{"sip:201@192.168.1.23:39012;rinstance=5b3c1a8d7e2f9a01;transport=UDP": 60 * time.Second},
				ua:  "Zoiper rv2.10.20.5", cseq: 2,
			},
		},
		{
			name: "x-lite pjsip param wins over request, unknown extra contact ignored",
			req:  xliteReq, res: xliteRes,
			want: want{
				aor: "sip:202@pbx.example.com",
				set: map[string]time.Duration{"sip:202@10.0.0.15:5060;rinstance=0b7d2f4f8a1c3e55": 1799 * time.Second},
				ua:  "X-Lite release 4.9.8 stamp 84253", cseq: 1,
			},
		},
		{
			name: "baresip tcp, 2xx without contacts: 2xx Expires header, q kept",
			req:  baresipReq, res: baresipResNoContact,
			want: want{
				aor: "sip:203@pbx.example.com",
				set: map[string]time.Duration{"sip:203-0x55d8c1e0@10.0.0.20:45123;transport=tcp": 300 * time.Second},
				q:   map[string]float32{"sip:203-0x55d8c1e0@10.0.0.20:45123;transport=tcp": 0.7},
				ua:  "baresip v1.0.0 (x86_64/linux)", cseq: 34301,
			},
		},
		{
			name: "multiple contacts: comma list and compact m, unlisted and expires=0 removed",
			req:  multiReq, res: multiRes,
			want: want{
				aor: "sip:204@pbx.example.com",
				set: map[string]time.Duration{
					"sip:204@192.0.2.30:5060":               120 * time.Second,
					"sip:204@192.0.2.30:5070;transport=UDP": 900 * time.Second,
				},
				q:      map[string]float32{"sip:204@192.0.2.30:5060": 1, "sip:204@192.0.2.30:5070;transport=UDP": 0.5},
				remove: []string{"sip:204@192.0.2.31:5060"},
				cseq:   7,
			},
		},
		{
			name: "contact star",
			req:  starReq, res: starRes,
			want: want{aor: "sip:201@pbx.example.com", removeAll: true},
		},
		{
			name: "query changes nothing",
			req:  queryReq, res: queryRes,
			want: want{aor: "sip:201@pbx.example.com", query: true},
		},
		{
			name: "max_expires caps the backend's grant",
			req:  xliteReq, res: xliteRes,
			mod: func(c *Config) { c.MaxExpires = 600 * time.Second; c.DefaultExpires = 600 * time.Second },
			want: want{
				aor: "sip:202@pbx.example.com",
				set: map[string]time.Duration{"sip:202@10.0.0.15:5060;rinstance=0b7d2f4f8a1c3e55": 600 * time.Second},
				ua:  "X-Lite release 4.9.8 stamp 84253", cseq: 1,
			},
		},
		{
			name: "star without Expires 0 is invalid",
			req:  strings.ReplaceAll(starReq, "Expires: 0", "Expires: 60"), res: starRes,
			want: want{err: ErrInvalid},
		},
		{
			name: "not a 2xx",
			req:  zoiperReq, res: strings.ReplaceAll(zoiperRes, "200 OK", "401 Unauthorized"),
			want: want{err: ErrInvalid},
		},
		{
			name: "not a REGISTER",
			req:  strings.ReplaceAll(zoiperReq, "REGISTER sip:", "OPTIONS sip:"), res: zoiperRes,
			want: want{err: ErrInvalid},
		},
		{
			name: "response of another registration",
			req:  zoiperReq, res: strings.ReplaceAll(zoiperRes, "Call-ID: ZGQ5", "Call-ID: XXQ5"),
			want: want{err: ErrInvalid},
		},
		{
			name: "To without user",
			req:  strings.ReplaceAll(zoiperReq, "To: <sip:201@PBX.example.com;transport=UDP>", "To: <sip:pbx.example.com>"), res: zoiperRes,
			want: want{err: ErrInvalid},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			if tc.mod != nil {
				tc.mod(&c)
			}
			u, err := extract(&c, reqOf(t, tc.req), resOf(t, tc.res), src("203.0.113.7:39012"), "ast1", t0)
			if tc.want.err != nil {
				if !errors.Is(err, tc.want.err) {
					t.Fatalf("err = %v, want %v", err, tc.want.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("extract: %v", err)
			}
			if u.aor != tc.want.aor || u.removeAll != tc.want.removeAll || u.isQuery != tc.want.query {
				t.Fatalf("aor/removeAll/query = %q/%v/%v, want %q/%v/%v", u.aor, u.removeAll, u.isQuery,
					tc.want.aor, tc.want.removeAll, tc.want.query)
			}
			if len(u.set) != len(tc.want.set) {
				t.Fatalf("set %d bindings %+v, want %d", len(u.set), u.set, len(tc.want.set))
			}
			for _, b := range u.set {
				d, ok := tc.want.set[b.Contact]
				if !ok {
					t.Fatalf("unexpected contact %q", b.Contact)
				}
				if got := b.Expires.Sub(t0); got != d {
					t.Errorf("%s lifetime %s, want %s", b.Contact, got, d)
				}
				if q, ok := tc.want.q[b.Contact]; ok && b.Q != q {
					t.Errorf("%s q %v, want %v", b.Contact, b.Q, q)
				}
				if b.AOR != tc.want.aor || b.Backend != "ast1" || b.CSeq != tc.want.cseq || b.UserAgent != tc.want.ua {
					t.Errorf("binding %+v: wrong aor/backend/cseq/ua", b)
				}
				if b.Source != src("203.0.113.7:39012") || b.CallID == "" {
					t.Errorf("binding %+v: wrong source or call-id", b)
				}
			}
			if !slices.Equal(u.remove, tc.want.remove) {
				t.Errorf("remove %q, want %q", u.remove, tc.want.remove)
			}
		})
	}
}

func TestSplitAORAndKey(t *testing.T) {
	any := newTable(nil, []string{"192.0.2.10"})
	own := newTable([]string{"pbx.example.com", "192.0.2.1"}, nil)
	cases := []struct {
		in             string
		anyKey, ownKey string
		ok             bool
	}{
		{"sip:201@pbx.example.com", "201", "201", true},
		{"sips:201@PBX.Example.com:5061;transport=tls", "201", "201", true},
		{"<sip:201@192.0.2.1:5060;transport=udp>", "201", "201", true},
		{"sip:201;phone-context=x@other.org", "201", "201@other.org", true},
		{"SIP:alice@Other.org", "alice", "alice@other.org", true},
		{"sip:201@[2001:db8::1]:5060", "201", "201@[2001:db8::1]", true},
		{"201", "201", "201", true},
		{"sip:pbx.example.com", "", "", false},
		{"", "", "", false},
		{"sip:@host", "", "", false},
	}
	for _, tc := range cases {
		k1, ok1 := any.key(tc.in)
		k2, ok2 := own.key(tc.in)
		if ok1 != tc.ok || ok2 != tc.ok || k1 != tc.anyKey || k2 != tc.ownKey {
			t.Errorf("key(%q) = %q,%v / %q,%v; want %q / %q, %v", tc.in, k1, ok1, k2, ok2, tc.anyKey, tc.ownKey, tc.ok)
		}
	}
}

// The proxy's own addresses count as local domains when domains is set:
// Asterisk sends "sip:201@<proxy address>" to reach a phone.
func TestLocalHostsKey(t *testing.T) {
	tab := newTable([]string{"pbx.example.com"},
		[]string{"192.0.2.10", "[2001:DB8::0001]", "Proxy1.Example.net", "0.0.0.0", "::", "fe80::1%eth0", " "})
	cases := []struct{ in, want string }{
		{"sip:201@pbx.example.com", "201"},
		{"sip:201@192.0.2.10", "201"},
		{"sip:201@192.0.2.10:5060;transport=udp", "201"},
		{"sip:201@[2001:db8::1]:5060", "201"},
		{"sip:201@[2001:0db8:0:0::1]", "201"},
		{"sip:201@[::ffff:192.0.2.10]", "201"},
		{"sip:201@proxy1.example.NET", "201"},
		{"sip:201@[fe80::1]", "201"},
		{"sip:201@192.0.2.11", "201@192.0.2.11"},
		{"sip:201@0.0.0.0", "201@0.0.0.0"}, // unspecified: nobody's address
		{"sip:201@[::]", "201@[::]"},
		{"sip:201@Other.org", "201@other.org"},
	}
	for _, tc := range cases {
		if got, ok := tab.key(tc.in); !ok || got != tc.want {
			t.Errorf("key(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}
