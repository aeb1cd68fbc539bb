package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// RFC 2543 transactions. A request whose top Via has no branch with the
// magic cookie comes from an RFC 2543 client, and RFC 3261 §17.2.3 matches
// its transaction by Request-URI, From tag, Call-ID, CSeq, top Via (and To
// tag). sipgo keys such a request by the From tag and refuses it (400)
// without one, or when it cannot read it (a tag with LWS around '=', RFC
// 4475 wsinv; RFC 2543 had no From tag, inv2543). So intake (the UDP read
// filter, or the TCP/TLS connection wrapper for a framed message) gives the
// top Via a synthetic branch, first among its parameters: the
// cookie, "-2543", a mark from the dialog-token secret, and an HMAC of the
// §17.2.3 fields, so that the INVITE, its retransmissions and its CANCEL
// carry the same branch and land in one sipgo transaction. The To tag is
// left out: an ACK's To tag is the response's. An ACK gets the INVITE's
// branch only when hapbx answered that INVITE with a non-2xx (non2xx), so
// the transaction absorbs it; the ACK of a 2xx gets one of its own and is
// forwarded as any 2xx ACK. (Over TCP and TLS sipgo ends an INVITE server
// transaction with its final response: the ACK of a non-2xx reaches
// decide, which drops it by the same branch.) The synthetic branch never
// reaches the client: every UDP datagram hapbx sends leaves through
// restoreVia, and everything written on an accepted TCP or TLS connection
// through guardedConn.Write, which take it out again (it also covers what
// sipgo answers by itself, the 200 to a CANCEL). Towards a TCP or TLS
// backend the client's Via keeps it; the backend echoes it and hapbx takes
// it out before the response reaches the client. In-dialog
// requests of a caller without From tag (RFC 2543 had none) still meet the
// dialog-token check (token.go), which binds a token to a non-empty tag:
// they get 403.

// branch2543Len is the length of the HMAC part of a synthetic branch.
const branch2543Len = 16

// branch2543Prefix is the part of every synthetic branch that names it as
// one: unpredictable from outside, so no client can have its own branch
// taken out of the responses it gets.
func branch2543Prefix(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("rfc2543 branch"))
	return sip.RFC3261BranchMagicCookie + "-2543" + hex.EncodeToString(m.Sum(nil))[:8] + "-"
}

// give2543Branch returns data with a synthetic branch in its top Via when
// it is a request from an RFC 2543 client (d.rfc2543 says it may be),
// else data.
func (p *Proxy) give2543Branch(data []byte, d datagram) []byte {
	parser := sip.NewParser()
	parser.MaxMessageLength = p.cfg.MaxMessageSize
	msg, err := parser.ParseSIP(data)
	if err != nil {
		return data
	}
	req, ok := msg.(*sip.Request)
	if !ok || req.Via() == nil || req.CallID() == nil || req.CSeq() == nil {
		return data
	}
	if b, _ := req.Via().Params.Get("branch"); strings.HasPrefix(b, sip.RFC3261BranchMagicCookie) && len(b) > len(sip.RFC3261BranchMagicCookie) {
		return data // the raw look was wrong: sipgo sees the cookie
	}
	branch := p.branch2543(req, "")
	if req.IsCancel() {
		// The INVITE it cancels ends non-2xx (487): its ACK goes to its
		// transaction, even when it comes before hapbx has settled.
		p.non2xx.put(branch, "")
	}
	if req.IsAck() && !p.non2xx.has(branch) {
		to := ""
		if req.To() != nil {
			to, _ = req.To().Params.Get("tag")
		}
		branch = p.branch2543(req, "ACK;"+to)
	}
	vs, ve := d.viaAt, d.viaEnd
	if vs < 0 {
		return data
	}
	value := data[vs:ve]
	var at int
	insert := []byte(";branch=" + branch)
	switch orig, has := req.Via().Params.Get("branch"); {
	case !has:
		// before its first parameter, or at the end of the first value
		if j := bytes.IndexAny(value, ";,"); j >= 0 {
			at = vs + j
		} else {
			at = vs + len(bytes.TrimRight(value, " \t\r\n"))
		}
	case orig != "":
		// sipgo keeps one value per parameter name: the branch it read
		// is prefixed, and restoreVia takes the prefix out again.
		j := bytes.Index(value, []byte("branch="+orig))
		if j < 0 {
			return data
		}
		at, insert = vs+j+len("branch="), []byte(branch)
	default:
		return data // an empty branch: left to sipgo
	}
	out := make([]byte, 0, len(data)+len(insert))
	out = append(out, data[:at]...)
	out = append(out, insert...)
	return append(out, data[at:]...)
}

// branch2543 is the synthetic branch of req's RFC 3261 §17.2.3 fields
// (and extra).
func (p *Proxy) branch2543(req *sip.Request, extra string) string {
	m := hmac.New(sha256.New, p.secret)
	from := ""
	if req.From() != nil {
		from, _ = req.From().Params.Get("tag")
	}
	for _, f := range []string{req.Recipient.String(), from, req.CallID().Value(), strconv.FormatUint(uint64(req.CSeq().SeqNo), 10), req.Via().Value(), extra} {
		m.Write([]byte(f))
		m.Write([]byte{0})
	}
	return p.rfc2543 + hex.EncodeToString(m.Sum(nil))[:branch2543Len]
}

// restoreVia is a SIP UDP socket whose outgoing datagrams lose the
// synthetic branches give2543Branch added: ";branch=" and the synthetic
// part go, unless the client's own branch follows (then only the synthetic
// part goes).
type restoreVia struct {
	net.PacketConn
	mark []byte // ";branch=" + branch2543Prefix
}

func (c restoreVia) WriteTo(b []byte, addr net.Addr) (int, error) {
	if _, err := c.PacketConn.WriteTo(withoutSyntheticBranch(b, c.mark), addr); err != nil {
		return 0, err
	}
	return len(b), nil // sipgo checks that all it wrote went
}

// withoutSyntheticBranch returns b without the synthetic branches
// starting with mark (";branch=" + branch2543Prefix): b itself (no copy)
// when there is none. ";branch=" and the synthetic part go, unless the
// client's own branch follows (then only the synthetic part goes).
func withoutSyntheticBranch(b, mark []byte) []byte {
	if !bytes.Contains(b, mark) {
		return b
	}
	out := make([]byte, 0, len(b))
	for rest := b; ; {
		i := bytes.Index(rest, mark)
		if i < 0 {
			return append(out, rest...)
		}
		out = append(out, rest[:i]...)
		rest = rest[min(len(rest), i+len(mark)+branch2543Len):]
		if len(rest) > 0 && !bytes.ContainsAny(rest[:1], "; \t\r\n,") {
			out = append(out, ";branch="...) // the client's own branch follows
		}
	}
}
