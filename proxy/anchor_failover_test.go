package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/media"
)

func parseRequest(t *testing.T, method, fromTag, toTag string) *sip.Request {
	t.Helper()
	to := "<sip:202@example.com>"
	if toTag != "" {
		to += ";tag=" + toTag
	}
	msg := fmt.Sprintf("%s sip:202@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bK%s%s\nFrom: <sip:201@example.com>;tag=%s\nTo: %s\nCall-ID: failover-call@test\nCSeq: 1 %s\nMax-Forwards: 70\nContent-Length: 0\n\n",
		method, fromTag, toTag, fromTag, to, method)
	m, err := sip.NewParser().ParseSIP([]byte(strings.ReplaceAll(msg, "\n", "\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	return m.(*sip.Request)
}

func anchorRelay(t *testing.T, addr string) *media.Relay {
	t.Helper()
	cfg := media.DefaultConfig()
	cfg.Enabled, cfg.Address, cfg.Ports, cfg.Workers = true, addr, "32750-32767", 1
	r, err := media.New(cfg, zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

// TestRequestLegAfterFailover: the twin proxy never saw the initial INVITE,
// so its own callers map lacks the call; it must still tell the callee's
// re-INVITE (leg B) from the caller's, from the caller tag the relay session
// was replicated with.
func TestRequestLegAfterFailover(t *testing.T) {
	holder, standby := anchorRelay(t, "127.0.0.1"), anchorRelay(t, "127.0.0.7")
	p1, p2 := &Proxy{}, &Proxy{}
	WithMediaAnchor(holder)(p1)
	WithMediaAnchor(standby)(p2)

	invite := parseRequest(t, "INVITE", "caller", "")
	if leg, ok := p1.requestLeg(invite); !ok || leg != media.LegA {
		t.Fatalf("initial INVITE: leg %v %v", leg, ok)
	}
	sdp := []byte("v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\n")
	if _, err := holder.Anchor("failover-call@test", media.LegA, sdp); err != nil {
		t.Fatal(err)
	}
	rec, ok := holder.Record("failover-call@test")
	if !ok || rec.CallerTag != "caller" {
		t.Fatalf("holder record: %+v %v", rec, ok)
	}
	if err := standby.Import(rec); err != nil {
		t.Fatal(err)
	}

	// After the failover the callee puts the call on hold.
	if leg, ok := p2.requestLeg(parseRequest(t, "INVITE", "callee", "caller")); !ok || leg != media.LegB {
		t.Fatalf("callee's re-INVITE on the twin: leg %v anchored %v, want b true", leg, ok)
	}
	if leg, ok := p2.requestLeg(parseRequest(t, "UPDATE", "caller", "callee")); !ok || leg != media.LegA {
		t.Fatalf("caller's UPDATE on the twin: leg %v anchored %v, want a true", leg, ok)
	}
	// A call neither proxy anchored stays alone.
	other := parseRequest(t, "INVITE", "x", "y")
	other.RemoveHeader("Call-ID")
	cid := sip.CallIDHeader("unknown@test")
	other.AppendHeader(&cid)
	if _, ok := p2.requestLeg(other); ok {
		t.Fatal("a call no relay knows was treated as anchored")
	}
}
