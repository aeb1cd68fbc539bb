package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/internal/testkit"
)

// Do sends a request of hapbx's own from the proxy's socket, with the
// proxy's Via, and returns the final response (SIPp answers OPTIONS with
// 200); a silent destination is ctx's error.
func TestDoFromProxySocket(t *testing.T) {
	uas := testkit.StartOptionsUAS(t, be1IP, 0, 200, "udp")
	p := startProxy(t, nil, nil)
	send := func(dest string, d time.Duration) (*sip.Request, *sip.Response, error) {
		ruri := sip.Uri{Scheme: "sip", Host: be1IP}
		req := sip.NewRequest(sip.OPTIONS, ruri)
		from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "hapbx", Host: proxyIP}, Params: sip.NewParams()}
		from.Params.Add("tag", sip.GenerateTagN(8))
		callID := sip.CallIDHeader(sip.GenerateTagN(16))
		mf := sip.MaxForwardsHeader(70)
		req.AppendHeader(from)
		req.AppendHeader(&sip.ToHeader{Address: ruri, Params: sip.NewParams()})
		req.AppendHeader(&callID)
		req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
		req.AppendHeader(&mf)
		req.SetBody(nil)
		req.SetDestination(dest)
		req.SetTransport("UDP")
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		res, err := p.Do(ctx, req)
		return req, res, err
	}
	req, res, err := send(uas.Addr(), 10*time.Second)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %v %v", res, err)
	}
	via := req.Via()
	if via.Host != proxyIP || via.Port != p.port || !strings.HasPrefix(via.Params.GetOr("branch", ""), branchPrefix) {
		t.Errorf("Via %s: want the proxy's %s", via.Value(), p.addr)
	}
	uas.Kill()
	if _, _, err := send(uas.Addr(), 300*time.Millisecond); err == nil {
		t.Error("a silent destination answered")
	}
}
