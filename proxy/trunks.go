package proxy

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// Trunks are the providers' SIP trunks (package proxy/trunk's Set, adapted
// by cmd/hapbx/internal/app).
type Trunks interface {
	// Match returns the trunk whose ACL holds src.
	Match(src netip.Addr) (name string, ok bool)
	// Targets returns trunk name's hosts in the order to try them; its
	// error wraps ErrUnknownTrunk for a name no trunk has.
	Targets(ctx context.Context, name string) ([]TrunkHost, error)
	// Authorize answers the provider's 401/407 res to req: the header to
	// add to req sent again.
	Authorize(name string, req *sip.Request, res *sip.Response) (sip.Header, error)
	// Backends returns the backends that take trunk name's incoming calls
	// (nil: all).
	Backends(name string) []string
}

// TrunkHost is one host of a provider.
type TrunkHost struct {
	Addr      netip.AddrPort
	Transport string // udp, tcp or tls
}

// WithTrunks routes the providers' calls: requests from a trunk's ACL go to
// the backends marked with TrunkHeader, and a backend's initial request
// carrying TrunkHeader goes to that trunk's hosts.
func WithTrunks(t Trunks) Option { return func(p *Proxy) { p.trunks = t } }

// TrunkHeader names a trunk: on a request to a backend, the trunk it came
// from (set by hapbx only); on a backend's initial request, the trunk to
// send it to.
const TrunkHeader = "X-Hapbx-Trunk"

// ErrUnknownTrunk is what Trunks.Targets wraps for a name no trunk has.
var ErrUnknownTrunk = errors.New("no such trunk")

// resolveTimeout bounds the lookup of a trunk's hosts for one call.
const resolveTimeout = 5 * time.Second

// fromTrunk returns the trunk a request came from, by source address.
func (p *Proxy) fromTrunk(req *sip.Request) string {
	if p.trunks == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return ""
	}
	name, _ := p.trunks.Match(ap.Addr().Unmap())
	return name
}

// trunkSource reports a source address in a trunk's ACL (the flood guard
// exempts it).
func (p *Proxy) trunkSource(a netip.Addr) bool {
	if p.trunks == nil {
		return false
	}
	_, ok := p.trunks.Match(a)
	return ok
}

// takeTrunkHeader applies the trunk rules to TrunkHeader, which only hapbx
// writes towards the backends: it removes every one req carries and
// returns the trunk a backend's initial request names (to send it there),
// or the refusal of another source's initial request naming one. An
// initial request from a trunk's address gets the header naming its trunk.
func (p *Proxy) takeTrunkHeader(req *sip.Request) (out, why string) {
	named := ""
	if h := req.GetHeader(TrunkHeader); h != nil {
		named = strings.TrimSpace(h.Value())
		for req.GetHeader(TrunkHeader) != nil {
			req.RemoveHeader(TrunkHeader)
		}
	}
	initial := !inDialog(req) && !req.IsAck() && !req.IsCancel()
	if !initial {
		return "", ""
	}
	if p.fromBackend(req) != "" {
		return named, ""
	}
	if name := p.fromTrunk(req); name != "" {
		req.AppendHeader(sip.NewHeader(TrunkHeader, name))
		return "", ""
	}
	if named != "" {
		return "", refusedTrunk
	}
	return "", ""
}

// trunkBackends keeps of names those that take trunk's incoming calls.
func (p *Proxy) trunkBackends(req *sip.Request, names []string) []string {
	name := p.fromTrunk(req)
	if name == "" {
		return names
	}
	only := p.trunks.Backends(name)
	if len(only) == 0 {
		return names
	}
	out := names[:0:0]
	for _, n := range names {
		if slices.Contains(only, n) {
			out = append(out, n)
		}
	}
	return out
}

// trunkTargets are trunk's hosts as targets for req: a Request-URI naming
// hapbx (Asterisk's outbound proxy) is aimed at each host in turn.
func (p *Proxy) trunkTargets(req *sip.Request, trunk string) ([]target, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	hosts, err := p.trunks.Targets(ctx, trunk)
	if err != nil {
		return nil, err
	}
	local := p.isLocal(&req.Recipient)
	out := make([]target, 0, len(hosts))
	for _, h := range hosts {
		t := target{trunk: trunk, addr: h.Addr.String(), transport: h.Transport}
		if local {
			u := req.Recipient.Clone()
			u.Host, u.Port = h.Addr.Addr().String(), int(h.Addr.Port())
			if h.Addr.Addr().Is6() {
				u.Host = "[" + u.Host + "]"
			}
			t.ruri = u.String()
		}
		out = append(out, t)
	}
	return out, nil
}

// toTrunk forwards a backend's initial request to trunk's hosts, one after
// the other (failover), never to a backend.
func (p *Proxy) toTrunk(req *sip.Request, tx sip.ServerTransaction, trunk string) {
	targets, err := p.trunkTargets(req, trunk)
	if err != nil || len(targets) == 0 {
		p.log.Warn("trunk has no host to send to", zap.String("trunk", trunk), zap.String("call_id", callID(req)), zap.Error(err))
		if req.IsInvite() {
			p.releaseMedia(req, "no trunk host")
		}
		if errors.Is(err, ErrUnknownTrunk) {
			p.reply(tx, req, 404, "Not Found (no such trunk)")
			return
		}
		p.replyUnavailable(tx, req)
		return
	}
	p.forward(req, tx, targets, true)
}

// authorizeTrunk answers the provider's challenge res to b's request with
// the trunk's credentials: the same request again, CSeq raised by one,
// a new branch (RFC 3261 §22.2), derived from the challenged one
// (branch.go) so that the twin, forwarding the caller's retransmission
// after a VIP move, sends the provider the same, and can forward the
// provider's answer to it as a stray (stray.go). It reports false when it cannot (no
// credentials, a challenge already answered once): the caller then gets
// 403, never the challenge (Asterisk holds no provider password).
func (rc *responseContext) authorizeTrunk(b *branch, res *sip.Response) bool {
	p := rc.p
	if b.authorized || rc.over() || p.trunks == nil {
		return false
	}
	h, err := p.trunks.Authorize(b.t.trunk, b.out, res)
	if err != nil {
		p.log.Warn("trunk challenge not answered", zap.String("trunk", b.t.trunk), zap.String("call_id", callID(rc.req)), zap.Error(err))
		return false
	}
	out := b.out.Clone()
	out.RemoveHeader(h.Name())
	out.AppendHeader(h)
	out.CSeq().SeqNo++
	via := out.Via()
	challenged, _ := via.Params.Get("branch")
	via.Params.Add("branch", branchPrefix+p.authBranchFor(rc.req, challenged))
	if rc.req.IsInvite() {
		// The caller's ACK of the 2xx carries its own CSeq: raised on the
		// way (forwardAck).
		p.cseqRaised.put(rc.req.CallID().Value(), strconv.FormatUint(uint64(rc.req.CSeq().SeqNo), 10))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	clTx, err := p.wire.TransactionRequest(ctx, out, sipgo.ClientRequestOption(keepHeaders))
	cancel()
	if err != nil {
		p.log.Warn("authorized request to trunk not sent", zap.String("trunk", b.t.trunk), zap.Error(err))
		return false
	}
	nb := &branch{t: b.t, out: out, clTx: clTx, sent: time.Now(), authorized: true}
	rc.branches = append(rc.branches, nb)
	rc.live++
	rc.watch(nb)
	return true
}

// refuseChallenge turns a provider's challenge that hapbx cannot answer
// into a 403 for the caller.
func refuseChallenge(res *sip.Response) {
	res.StatusCode, res.Reason = 403, "Forbidden (the provider refused the trunk's credentials)"
	res.RemoveHeader("Proxy-Authenticate")
	res.RemoveHeader("WWW-Authenticate")
}

// raiseAckCSeq gives the ACK of a 2xx to an INVITE that hapbx sent again
// with credentials (CSeq raised) the CSeq of that INVITE.
func (p *Proxy) raiseAckCSeq(req *sip.Request) {
	cs := req.CSeq()
	if v, ok := p.cseqRaised.get(req.CallID().Value()); ok && v == strconv.FormatUint(uint64(cs.SeqNo), 10) {
		cs.SeqNo++
	}
}
