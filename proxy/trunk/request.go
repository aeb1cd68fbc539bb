package trunk

import (
	"strings"

	"github.com/emiago/sipgo/sip"
)

// newRequest builds a request of hapbx's own to target t: the headers
// every request needs (RFC 3261 §8.1.1) but Via, which the Sender adds.
func newRequest(method sip.RequestMethod, ruri, from, to sip.Uri, fromTag, callID string, cseq uint32, t Target) *sip.Request {
	req := sip.NewRequest(method, ruri)
	fh := &sip.FromHeader{Address: from, Params: sip.NewParams()}
	fh.Params.Add("tag", fromTag)
	cid := sip.CallIDHeader(callID)
	maxFwd := sip.MaxForwardsHeader(70)
	req.AppendHeader(fh)
	req.AppendHeader(&sip.ToHeader{Address: to, Params: sip.NewParams()})
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	req.AppendHeader(&maxFwd)
	req.SetBody(nil)
	req.SetDestination(t.Addr.String())
	req.SetTransport(strings.ToUpper(t.Transport))
	return req
}
