package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// CheckRegistration tells one continuous registration from everything
// else a provider could see.
func TestCheckRegistration(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.Local)
	reg := func(at time.Duration, callID string, cseq int, branch, contactHost string) Traced {
		return Traced{At: t0.Add(at), Received: true, Msg: strings.ReplaceAll(fmt.Sprintf(`REGISTER sip:provider.test SIP/2.0
Via: SIP/2.0/UDP %s:5060;branch=%s
Call-ID: %s
CSeq: %d REGISTER
Contact: <sip:4930123@%s:5060>

`, VIP, branch, callID, cseq, contactHost), "\n", "\r\n")}
	}
	ok := func(at time.Duration) Traced {
		return Traced{At: t0.Add(at), Msg: "SIP/2.0 200 OK\r\nCSeq: 2 REGISTER\r\n\r\n"}
	}
	s := time.Second
	good := []Traced{reg(0, "c1", 1, "b1", VIP), reg(0, "c1", 2, "b2", VIP), ok(0), reg(5*s, "c1", 3, "b3", VIP), reg(5*s, "c1", 3, "b3", VIP), ok(5 * s)}
	for _, c := range []struct {
		name  string
		trace []Traced
		end   time.Duration
		want  string // "" : no error
	}{
		{"continuous, a retransmission", good, 9 * s, ""},
		{"expired at the end", good, 15 * s, "expired at the end"},
		{"a gap past the expiry", append(good[:3:3], reg(11*s, "c1", 3, "b3", VIP), ok(11*s)), 12 * s, "expired: 11s"},
		{"a second Call-ID", append(good[:3:3], reg(5*s, "c2", 3, "b3", VIP), ok(5*s)), 6 * s, "a second registration"},
		{"CSeq not rising", append(good[:3:3], reg(5*s, "c1", 2, "b9", VIP), ok(5*s)), 6 * s, "CSeq 2 after 2"},
		{"Contact not the VIP", append(good[:3:3], reg(5*s, "c1", 3, "b3", "10.214.0.1"), ok(5*s)), 6 * s, "is not the VIP"},
		{"nothing granted", good[:2], s, "granted no registration"},
	} {
		_, err := CheckRegistration(c.trace, t0.Add(c.end))
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
