package proxy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/hapbx/hapbx/internal/testkit"
	"github.com/hapbx/hapbx/media"
)

// The relay is the proxy's media anchor: its sentinels carry the markers the
// proxy branches on.
var (
	_ MediaAnchor      = (*media.Relay)(nil)
	_ callerTags       = (*media.Relay)(nil)
	_ NoPortsError     = media.ErrNoPorts
	_ SessionKeptError = media.ErrSessionKept
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
	testkit.Run(t, r.Run)
	return r
}

// TestFromCallerAfterFailover: the twin proxy never saw the initial INVITE,
// so its own callers map lacks the call; it must still tell the callee's
// re-INVITE (leg B) from the caller's, from the caller tag the relay session
// was replicated with.
func TestFromCallerAfterFailover(t *testing.T) {
	holder, standby := anchorRelay(t, "127.0.0.1"), anchorRelay(t, "127.0.0.7")
	p1, p2 := &Proxy{}, &Proxy{}
	WithMediaAnchor(holder)(p1)
	WithMediaAnchor(standby)(p2)

	invite := parseRequest(t, "INVITE", "caller", "")
	if caller, ok := p1.fromCaller(invite); !ok || !caller {
		t.Fatalf("initial INVITE: from caller %v %v", caller, ok)
	}
	sdp := []byte("v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\n")
	if _, err := holder.Anchor("failover-call@test", true, sdp); err != nil {
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
	if caller, ok := p2.fromCaller(parseRequest(t, "INVITE", "callee", "caller")); !ok || caller {
		t.Fatalf("callee's re-INVITE on the twin: from caller %v anchored %v, want false true", caller, ok)
	}
	if caller, ok := p2.fromCaller(parseRequest(t, "UPDATE", "caller", "callee")); !ok || !caller {
		t.Fatalf("caller's UPDATE on the twin: from caller %v anchored %v, want true true", caller, ok)
	}
	// A call neither proxy anchored stays alone.
	other := parseRequest(t, "INVITE", "x", "y")
	other.RemoveHeader("Call-ID")
	cid := sip.CallIDHeader("unknown@test")
	other.AppendHeader(&cid)
	if _, ok := p2.fromCaller(other); ok {
		t.Fatal("a call no relay knows was treated as anchored")
	}
}
