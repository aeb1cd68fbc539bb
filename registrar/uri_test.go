package registrar

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func parseURI(t *testing.T, s string) *sip.Uri {
	t.Helper()
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return &u
}

// TestURIEqual holds RFC 3261 §19.1.4's own example pairs, then the
// spellings phones and chan_pjsip produce.
func TestURIEqual(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
		why  string
	}{
		// §19.1.4: equivalent.
		{"sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", true, "escaped user, host and parameter case"},
		{"sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", true, "parameter in one only"},
		{"sip:carol@chicago.com", "sip:carol@chicago.com;security=on", true, "parameter in one only"},
		{"sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on", true, "parameters in one only each"},
		{"sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com", "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com", true, "parameter order"},
		{"sip:alice@atlanta.com?subject=project%20x&priority=urgent", "sip:alice@atlanta.com?priority=urgent&subject=project%20x", true, "header order"},
		// §19.1.4: not equivalent.
		{"SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", false, "different usernames"},
		{"sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", false, "can resolve to different ports"},
		{"sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp", false, "can resolve to different transports"},
		{"sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp", false, "can resolve to different port and transports"},
		{"sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting", false, "different header component"},
		{"sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4", false, "no resolution"},
		// §19.1.4: intransitive; each pair on its own.
		{"sip:carol@chicago.com;security=off", "sip:carol@chicago.com;newparam=5", true, "parameter in one only"},
		{"sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off", false, "parameter in both differs"},
		// §19.1.4 rules without their own example.
		{"sip:alice@atlanta.com;user=phone", "sip:alice@atlanta.com", false, "user in one only"},
		{"sip:alice@atlanta.com;ttl=1", "sip:alice@atlanta.com", false, "ttl in one only"},
		{"sip:alice@atlanta.com", "sip:alice@atlanta.com;method=INVITE", false, "method in one only"},
		{"sip:alice@atlanta.com;maddr=239.255.255.1", "sip:alice@atlanta.com", false, "maddr in one only"},
		{"sip:alice@atlanta.com;maddr=239.255.255.1", "sip:alice@atlanta.com;MADDR=239.255.255.1", true, "maddr in both"},
		{"sip:alice:secret@atlanta.com", "sip:alice:Secret@atlanta.com", false, "password case-sensitive"},
		{"sip:alice@atlanta.com", "sips:alice@atlanta.com", false, "sip and sips"},
		{"sip:alice@atlanta.com?Subject=x", "sip:alice@atlanta.com?subject=x", true, "header name case"},
		{"sip:alice@atlanta.com?subject=X", "sip:alice@atlanta.com?subject=x", false, "header value"},
		// chan_pjsip rewrite_contact=yes on UDP (Asterisk 20.20.1, the trace of issue 17).
		{"sip:201@10.214.0.50:5070;transport=UDP", "sip:201@10.214.0.50:5070", true, "pjsip drops ;transport=UDP"},
		{"sip:201@10.214.0.50;transport=udp", "sip:201@10.214.0.50", true, "numeric host without port: udp"},
		{"sip:201@[2001:db8::50];transport=udp", "sip:201@[2001:db8::50]", true, "IPv6 host without port: udp"},
		{"sip:201@10.214.0.50:5070;transport=tcp", "sip:201@10.214.0.50:5070", true, "pjsip drops ;transport=tcp of a phone relayed over UDP"},
		{"sip:201@pbx.example.com;transport=tcp", "sip:201@pbx.example.com", false, "NAPTR may pick another transport"},
		{"sip:201@pbx.example.com:5060;transport=tcp", "sip:201@pbx.example.com:5060", true, "a port fixes the target"},
		{"sip:201@10.214.0.50:5070;transport=TCP", "sip:201@10.214.0.50:5070;transport=tcp", true, "transport in both"},
		{"sip:201@10.214.0.50:5070;transport=udp", "sip:201@10.214.0.50:5070;transport=tcp", false, "transport in both differs"},
		{"sips:201@10.214.0.50:5061;transport=tls", "sips:201@10.214.0.50:5061", true, "sips, tls in one only"},
		{"sip:201@10.214.0.50:5070;rinstance=5b3c;transport=UDP", "sip:201@10.214.0.50:5070;rinstance=5B3C", true, "Zoiper rinstance, value case"},
		{"sip:201@10.214.0.50:5070", "sip:201@10.214.0.51:5070", false, "host"},
		{"sip:201@10.214.0.50:5070", "sip:201@10.214.0.50:5071", false, "port"},
		{"sip:201@10.214.0.50", "sip:201@10.214.0.50:5060", false, "default port spelt out"},
	}
	for _, tc := range cases {
		a, b := parseURI(t, tc.a), parseURI(t, tc.b)
		if got := uriEqual(a, b); got != tc.want {
			t.Errorf("uriEqual(%s, %s) = %v, want %v (%s)", tc.a, tc.b, got, tc.want, tc.why)
		}
		if got := uriEqual(b, a); got != tc.want {
			t.Errorf("uriEqual(%s, %s) = %v, want %v (%s)", tc.b, tc.a, got, tc.want, tc.why)
		}
		if tc.want && contactKey(a) != contactKey(b) {
			t.Errorf("equivalent %s and %s have keys %q and %q", tc.a, tc.b, contactKey(a), contactKey(b))
		}
	}
}

// TestSaveRewrittenContact replays issue 17's trace: Asterisk 20.20.1
// chan_pjsip with rewrite_contact=yes answers a Contact carrying
// ;transport=UDP with the same URI without it. The binding is kept (not
// taken for a refused Contact), stored as the 2xx spelt it, and the phone's
// next REGISTER in its own spelling refreshes that same binding.
func TestSaveRewrittenContact(t *testing.T) {
	const (
		sent     = "sip:201@10.214.0.50:5070;transport=UDP"
		answered = "sip:201@10.214.0.50:5070"
	)
	phone := src("10.214.0.50:5070")
	for _, tc := range []struct {
		name, sent, answered string
		kept                 bool
	}{
		{"pjsip drops transport=UDP", sent, answered, true},
		{"no port, no transport", "sip:201@10.214.0.50", "sip:201@10.214.0.50", true},
		{"tcp answered without transport", "sip:201@10.214.0.50:5070;transport=tcp", answered, true},
		{"other port is another URI", sent, "sip:201@10.214.0.50:5071", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, clk, _ := newTest(t, "", nil)
			req, _ := register(t, "201", tc.sent, "cid-1", 1, 300)
			_, res := register(t, "201", tc.answered, "cid-1", 1, 299)
			bs, err := r.Save(req, res, phone, "ast1")
			if err != nil {
				t.Fatal(err)
			}
			if !tc.kept {
				if len(bs) != 0 {
					t.Fatalf("bindings %+v: the 2xx did not list the Contact, want none", bs)
				}
				return
			}
			if len(bs) != 1 || bs[0].Contact != tc.answered || !bs[0].Expires.Equal(t0.Add(299*time.Second)) {
				t.Fatalf("bindings %+v: want one, %s, 299 s", bs, tc.answered)
			}
			clk.advance(100 * time.Second)
			req, _ = register(t, "201", tc.sent, "cid-1", 2, 300)
			if bs, err = r.RefreshFromStore(req, phone); err != nil || len(bs) != 1 {
				t.Fatalf("refresh in the phone's spelling: %v, %+v", err, bs)
			}
			req, _ = register(t, "201", tc.sent, "cid-1", 3, 300)
			_, res = register(t, "201", tc.answered, "cid-1", 3, 299)
			if bs, err = r.Save(req, res, phone, "ast1"); err != nil || len(bs) != 1 || bs[0].Contact != tc.answered {
				t.Fatalf("second Save: %v, %+v: want the one binding", err, bs)
			}
		})
	}
}
