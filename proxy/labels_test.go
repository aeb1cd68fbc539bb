package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hapbx/hapbx/internal/testkit"
)

// doorRequest is a request from the phone to the proxy; PEER is the sender.
func doorRequest(method, ruri, toTag string) string {
	to := "<" + ruri + ">"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	return method + " " + ruri + " SIP/2.0\n" +
		"Via: SIP/2.0/UDP PEER;branch=z9hG4bK-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ";rport\n" +
		"From: <sip:201@" + phoneIP + ">;tag=door\n" +
		"To: " + to + "\n" +
		"Call-ID: door-" + method + "-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "\n" +
		"CSeq: 1 " + method + "\n" +
		"Contact: <sip:201@PEER>\n" +
		"Max-Forwards: 70\n" +
		"Content-Length: 0\n\n"
}

// series counts every series reg exposes.
func series(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

// Issue 13.4: invented methods do not grow /metrics. After a few of them
// the series are those of "other"; a hundred more add none.
func TestInventedMethodsKeepMetricsBounded(t *testing.T) {
	p := startProxy(t, nil, func(c *Config) { c.NoBackendWait = 0 })
	send := func(from, to int) {
		for i := from; i < to; i++ {
			m := "XINVENT" + strconv.Itoa(i)
			res := testkit.Exchange(t, phoneIP, p.addr, doorRequest(m, "sip:service@"+p.addr, ""), 2*time.Second)
			if !strings.HasPrefix(res, "SIP/2.0 ") {
				t.Fatalf("%s unanswered", m)
			}
		}
	}
	send(0, 5)
	before := series(t, p.reg)
	send(5, 105)
	if after := series(t, p.reg); after != before {
		t.Fatalf("/metrics grew from %d to %d series with 100 invented methods", before, after)
	}
	if n := testutil.ToFloat64(p.m.requests.WithLabelValues("other")); n != 105 {
		t.Fatalf("hapbx_proxy_requests_total{method=other} = %v, want 105", n)
	}
}

func TestLabels(t *testing.T) {
	for in, want := range map[string]string{"INVITE": "INVITE", "REGISTER": "REGISTER", "invite": "other", "FOO": "other", "": "other"} {
		if got := methodLabel(sip.RequestMethod(in)); got != want {
			t.Errorf("methodLabel(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[int]string{100: "100", 699: "699", 99: "other", 700: "other", 123456: "other", -1: "other"} {
		if got := codeLabel(in); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", in, got, want)
		}
	}
}
