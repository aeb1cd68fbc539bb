package proxy

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSanityIntake drives sanityFilter's check and decide on the cases of
// issue 12 the RFC 4475 corpus does not hold; every refused one is counted
// under its reason.
func TestSanityIntake(t *testing.T) {
	head := "Via: SIP/2.0/UDP 127.0.2.50:5060;branch=z9hG4bK1\r\nFrom: <sip:201@example.com>;tag=1\r\nTo: <sip:202@example.com>\r\nCall-ID: c1\r\nMax-Forwards: 70\r\n"
	cases := []struct {
		name, msg, src string
		code           int    // 0: passes sanity
		why            string // malformed reason counted
		method         string // method after sanity, "" to skip
	}{
		{"smuggling: two Content-Lengths, short body", "INVITE sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 INVITE\r\nContent-Length: 0\r\nContent-Length: 60\r\n\r\nBYE sip:x SIP/2.0\r\n", phoneIP, 400, whyDuplicate, ""},
		{"Content-Length beyond the datagram", "MESSAGE sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 MESSAGE\r\nContent-Length: 99\r\n\r\nhi", phoneIP, 400, whyContentLength, ""},
		{"octets after the body are ignored", "MESSAGE sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 MESSAGE\r\nContent-Length: 2\r\n\r\nhi junk", phoneIP, 0, "", "MESSAGE"},
		{"forged mark", "MESSAGE sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 MESSAGE\r\nX-Hapbx-Sanity: content_length\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyMark, ""},
		{"two Max-Forwards", "OPTIONS sip:202@example.com SIP/2.0\r\n" + head + "Max-Forwards: 10\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyDuplicate, ""},
		{"two CSeqs", "OPTIONS sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyDuplicate, ""},
		{"SIP/7.0", "OPTIONS sip:202@example.com SIP/7.0\r\n" + head + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 505, whyVersion, ""},
		{"Proxy-Require", "OPTIONS sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 OPTIONS\r\nProxy-Require: foo, bar\r\nContent-Length: 0\r\n\r\n", phoneIP, 420, whyProxyRequire, ""},
		{"escaped headers in the Request-URI", "OPTIONS sip:202@example.com?Route=%3Csip:evil%3E SIP/2.0\r\n" + head + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyURIHeaders, ""},
		{"mixed-case method kept", "Foo sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 Foo\r\nContent-Length: 0\r\n\r\n", phoneIP, 0, "", "Foo"},
		{"lower-case invite", "invite sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 invite\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyMethodCase, ""},
		{"Via host lost once written", "OPTIONS sip:202@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.50:5060;branch=z9hG4bK1\r\nV: SIP/2.0/UDP 0:\r\nFrom: <sip:201@example.com>;tag=1\r\nTo: <sip:202@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyRoundTrip, ""},
		{"From URI without scheme", "OPTIONS sip:202@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.50:5060;branch=z9hG4bK1\r\nF: :00:A\r\nTo: <sip:202@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyRoundTrip, ""},
		{"display name ending in a backslash", "OPTIONS sip:202@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.50:5060;branch=z9hG4bK1\r\nFrom: Bob\\ <sip:201@example.com>;tag=1\r\nTo: <sip:202@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyRoundTrip, ""},
		{"Contact parameter quoted again", "OPTIONS sip:202@example.com SIP/2.0\r\n" + head + "CSeq: 1 OPTIONS\r\nContact: <sip:201@127.0.2.50>;p=\"a, b\"\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyRoundTrip, ""},
		{"Request-URI without scheme", "OPTIONS :00:A SIP/2.0\r\n" + head + "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", phoneIP, 400, whyRoundTrip, ""},
		{"IPv6 and quoted parameters written back", "OPTIONS sip:202@[2001:db8::1]:5060;transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::2]:5060;branch=z9hG4bK1;rport\r\nFrom: \"A \\\"B\\\"\" <sip:201@example.com>;tag=1\r\nTo: <sip:202@example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContact: <sip:201@[2001:db8::2]>;+sip.instance=\"<urn:uuid:1>\";q=0.5\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", phoneIP, 0, "", "OPTIONS"},
		{"tel: from a backend", "MESSAGE tel:+4930123 SIP/2.0\r\n" + head + "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n", be1IP, 416, whyURIScheme, ""},
		{"tel: from a phone goes to a backend", "MESSAGE tel:+4930123 SIP/2.0\r\n" + head + "CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n", phoneIP, 0, "", "MESSAGE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := sanityProxy(t)
			data, err := p.sanityFilter(sip.TransportReadProps{Transport: "UDP"}, []byte(tc.msg))
			if err != nil || data == nil {
				t.Fatalf("filter: %q, %v", data, err)
			}
			msg, err := sip.NewParser().ParseSIP(data)
			if err != nil {
				t.Fatalf("parse after the filter: %v\n%s", err, data)
			}
			req := msg.(*sip.Request)
			req.SetSource(tc.src + ":5060")
			req.SetTransport("UDP")
			code, reason, why, hdrs := p.sanity(req)
			if code != tc.code || why != tc.why {
				t.Fatalf("sanity = %d %q (%s), want %d (%s)", code, reason, why, tc.code, tc.why)
			}
			if code == 420 && (len(hdrs) != 1 || hdrs[0].Value() != "foo, bar") {
				t.Errorf("420 without Unsupported: foo, bar: %v", hdrs)
			}
			if tc.method != "" && string(req.Method) != tc.method {
				t.Errorf("method %q, want %q", req.Method, tc.method)
			}
			if tc.method == "MESSAGE" && strings.Contains(req.String(), "junk") {
				t.Errorf("octets after the body kept:\n%s", req)
			}
			d := p.decide(req)
			if code != 0 {
				if d.act != actReply || d.code != code {
					t.Errorf("decide = %+v, want a %d reply", d, code)
				}
				if n := testutil.ToFloat64(p.m.malformed.WithLabelValues(tc.why)); n < 1 {
					t.Errorf("malformed{%s} = %v", tc.why, n)
				}
			} else if d.act == actReply && d.code >= 400 {
				t.Errorf("decide refused a sane request: %d %s", d.code, d.reason)
			}
		})
	}
}

// TestWrittenParses checks writtenParses against what it stands for,
// parsing the whole written request, on the RFC 4475 messages, the fuzz
// corpus and the cases above.
func TestWrittenParses(t *testing.T) {
	var msgs [][]byte
	for _, glob := range []string{"testdata/rfc4475/*.dat", "testdata/fuzz/FuzzIntake/*"} {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if v, ok := bytes.CutPrefix(data, []byte("go test fuzz v1\n[]byte(")); ok {
				s, err := strconv.Unquote(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte(")")))))
				if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				data = []byte(s)
			}
			msgs = append(msgs, data)
		}
	}
	refused := 0
	for _, data := range msgs {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			continue
		}
		req, ok := msg.(*sip.Request)
		if !ok {
			continue
		}
		_, err = sip.ParseMessage([]byte(req.String()))
		if got := writtenParses(req); got != (err == nil) {
			t.Errorf("writtenParses = %v, parse of the written request: %v\n%s", got, err, req)
		}
		if err != nil {
			refused++
		}
	}
	if refused < 2 {
		t.Errorf("%d messages of the corpus do not parse once written, want the fuzz corpus's 2 at least", refused)
	}
}

func sanityProxy(t testing.TB) *Proxy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []string{"udp://" + proxyIP + ":5060"}
	cfg.Advertise = proxyIP
	p, err := New(cfg, []Backend{{Name: "a", Address: be1IP + ":5060", Transport: "udp"}}, NewStaticRouter([]string{"a"}, true), testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUnparsableAnswered sends what sipgo cannot parse through the UDP
// read filter: a request whose top Via can be read is rebuilt and answered
// (400, or 416 for a Request-URI scheme sipgo cannot read) with the lines
// that address it; anything else is dropped and counted.
func TestUnparsableAnswered(t *testing.T) {
	via := "Via: SIP/2.0/UDP 127.0.2.50:5070;branch=z9hG4bKu1\r\n"
	rest := "From: <sip:201@example.com>;tag=1\r\nTo: <sip:202@example.com>\r\nCall-ID: u1\r\nCSeq: 1 OPTIONS\r\n"
	cases := []struct {
		name, msg string
		code      int // 0: dropped
	}{
		{"request line with two spaces", "OPTIONS  sip:202@example.com SIP/2.0\r\n" + via + rest + "\r\n", 400},
		{"Request-URI in brackets", "OPTIONS <sip:202@example.com> SIP/2.0\r\n" + via + rest + "\r\n", 400},
		{"scheme with a dot", "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\r\n" + via + rest + "\r\n", 416},
		{"CSeq beyond 2^31", "OPTIONS sip:202@example.com SIP/2.0\r\n" + via + strings.Replace(rest, "CSeq: 1", "CSeq: 36893488147419103232", 1) + "\r\n", 400},
		{"unbalanced quote in To", "OPTIONS sip:202@example.com SIP/2.0\r\n" + via + strings.Replace(rest, "To: <", "To: \"Mr. J <", 1) + "\r\n", 400},
		{"header line without colon", "OPTIONS sip:202@example.com SIP/2.0\r\n" + via + rest + "Foobar roobar\r\n\r\n", 400},
		{"no end of headers", "OPTIONS sip:202@example.com SIP/2.0\r\n" + via + rest, 400},
		{"broken top Via", "OPTIONS sip:202@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.50;;,;,,\r\n" + rest + "\r\n", 0},
		{"no Via", "OPTIONS sip:202@example.com\r\n" + rest + "\r\n", 0},
		{"an ACK", "ACK <sip:202@example.com> SIP/2.0\r\n" + via + strings.Replace(rest, "OPTIONS", "ACK", 1) + "\r\n", 0},
		{"a response", "SIP/2.0 4294967301 Big\r\n" + via + rest + "\r\n", -1}, // left to sipgo
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := sanityProxy(t)
			data := []byte(tc.msg)
			if _, err := sip.ParseMessage(data); err == nil {
				t.Fatal("sipgo parses it: not a case")
			}
			out, err := p.sanityFilter(sip.TransportReadProps{Transport: "UDP"}, data)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.code == -1:
				if string(out) != tc.msg {
					t.Fatalf("filter changed a response:\n%s", out)
				}
				return
			case tc.code == 0:
				if out != nil {
					t.Fatalf("filter handed on\n%s", out)
				}
				if n := testutil.ToFloat64(p.m.malformed.WithLabelValues(whyParse)); n != 1 {
					t.Errorf("malformed{parse} = %v, want 1", n)
				}
				return
			}
			msg, err := sip.ParseMessage(out)
			if err != nil {
				t.Fatalf("the rebuilt request does not parse: %v\n%s", err, out)
			}
			req := msg.(*sip.Request)
			req.SetTransport("UDP")
			req.SetSource(phoneIP + ":5070")
			d := p.decide(req)
			if d.act != actReply || d.code != tc.code {
				t.Fatalf("decide = %+v, want a %d reply", d, tc.code)
			}
			if b, _ := req.Via().Params.Get("branch"); b != "z9hG4bKu1" || req.CallID() == nil || req.CallID().Value() != "u1" {
				t.Errorf("the answer would not be matched: Via %v, Call-ID %v", req.Via(), req.CallID())
			}
		})
	}
}

// TestPhoneMessagesNotSuspect: what phones and Asterisk send every second
// costs the read filter no second parse.
func TestPhoneMessagesNotSuspect(t *testing.T) {
	msgs := []string{
		string(phoneInvite()),
		"REGISTER sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.23:5060;rport;branch=z9hG4bKPj1\r\nRoute: <sip:127.0.2.1;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:201@pbx.example.com>;tag=a1\r\nTo: <sip:201@pbx.example.com>\r\nCall-ID: r1\r\nCSeq: 2 REGISTER\r\nContact: <sip:201@192.168.1.23:5060;ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\"\r\nExpires: 300\r\nAuthorization: Digest username=\"201\", realm=\"asterisk\", nonce=\"1/2\", uri=\"sip:pbx.example.com\", response=\"abc\", algorithm=MD5\r\nContent-Length: 0\r\n\r\n",
		"BYE sip:201@192.168.1.23:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.11:5060;rport;branch=z9hG4bKPj2\r\nFrom: <sip:202@127.0.2.11>;tag=b2\r\nTo: \"Alice\" <sip:201@pbx.example.com>;tag=7f3c2a19\r\nCall-ID: kF3m9QxW2pL8vR4tY7uI1oA5sD6gH0jZ\r\nCSeq: 9 BYE\r\nRoute: <sip:127.0.2.1;lr;hpx=tok>\r\nMax-Forwards: 70\r\nReason: Q.850;cause=16\r\nContent-Length: 0\r\n\r\n",
	}
	for _, m := range msgs {
		if unparsableSuspect([]byte(m)) {
			t.Errorf("suspect:\n%s", m)
		}
	}
}
