package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
	"strings"
	"sync"

	"github.com/emiago/sipgo/sip"
)

// The branch of the proxy's own Via (RFC 3261 §16.6 step 8) is
// branchPrefix + loop hash + "." + n + m, all derived from the request
// received, never drawn at random, and keyed with the dialog secret that
// both proxies of a pair share:
//   - n (branchNonceLen hex) covers the received request's top Via, the
//     target and the attempt (how many times this server transaction has
//     already sent the request to that target): a retransmission the phone
//     sends to the twin after a failover goes to the backend with the branch
//     the dead proxy gave it, so the backend sees a retransmission (RFC 3261
//     §17.2.3), not a merged request (§8.2.2.2: 482), and its responses
//     match the twin's client transaction; the way a stateless proxy must
//     make its branches (§16.11);
//   - m (branchMACLen hex) covers the loop hash, n and the Via below ours:
//     a response that reaches a proxy with no transaction for it (its twin
//     died) carries both, so the proxy knows the branch for one of the pair's
//     and the Via below, where it will send the response, for the one it was
//     made for (stray.go). Nobody without the secret can make hapbx send a
//     response anywhere.
//
// The request hapbx sends again with a trunk's credentials (trunks.go) has
// branchPrefix + loop hash + "." + authMark + n + m: n derived from the
// branch the provider challenged, m covering authMark + n. The twin that
// forwards the caller's retransmission gets the same challenge for the same
// branch and answers it with the same branch, a retransmission for the
// provider; and the mark, which the MAC covers, tells a stray response to
// it (its CSeq raised by one) from the others.

// authMark starts the nonce of a branch sent again with credentials.
const authMark = "c"

const (
	branchNonceLen = 8
	branchMACLen   = 16
)

// branchFor is the branch (after branchPrefix) of the request that
// forwards in to t, the attempt-th send to t in in's server transaction.
func (p *Proxy) branchFor(in *sip.Request, t target, attempt int) string {
	lh := loopHash(in)
	below := viaKey(in.Via())
	n := p.branchMAC("hapbx-branch-n-v1", lh, below, t.addr, t.transport, t.ruri, strconv.Itoa(attempt))[:branchNonceLen]
	return lh + "." + n + p.branchMAC("hapbx-branch-m-v1", lh, n, below)[:branchMACLen]
}

// authBranchFor is the branch (after branchPrefix) of the request that
// answers the challenge to in forwarded with branch challenged (whole).
func (p *Proxy) authBranchFor(in *sip.Request, challenged string) string {
	lh := loopHash(in)
	below := viaKey(in.Via())
	n := authMark + p.branchMAC("hapbx-branch-auth-v1", lh, below, challenged)[:branchNonceLen]
	return lh + "." + n + p.branchMAC("hapbx-branch-m-v1", lh, n, below)[:branchMACLen]
}

// ownBranch reports whether branch, found in a Via of one of the pair's
// proxies, was made by a proxy holding the dialog secret for a request
// whose Via below it is below, and whether it was the one sent again with
// a trunk's credentials (its CSeq raised by one).
func (p *Proxy) ownBranch(branch string, below *sip.ViaHeader) (ours, authorized bool) {
	rest, ok := strings.CutPrefix(branch, branchPrefix)
	if !ok || below == nil {
		return false, false
	}
	lh, nm, ok := strings.Cut(rest, ".")
	if !ok {
		return false, false
	}
	nlen := branchNonceLen
	if len(nm) == len(authMark)+branchNonceLen+branchMACLen && strings.HasPrefix(nm, authMark) {
		nlen += len(authMark)
	}
	if len(nm) != nlen+branchMACLen {
		return false, false
	}
	n, m := nm[:nlen], nm[nlen:]
	want := p.branchMAC("hapbx-branch-m-v1", lh, n, viaKey(below))[:branchMACLen]
	if !hmac.Equal([]byte(m), []byte(want)) {
		return false, false
	}
	return true, nlen > branchNonceLen
}

// viaKey is what of a Via a branch depends on: the hop (sent-by, transport,
// branch) and where responses to it go (received, rport: the proxy that
// received the request added them from its source, the twin adds the same).
func viaKey(v *sip.ViaHeader) string {
	if v == nil {
		return ""
	}
	b, _ := v.Params.Get("branch")
	rcv, _ := v.Params.Get("received")
	rport, _ := v.Params.Get("rport")
	var port [20]byte
	return strings.Join([]string{strings.ToUpper(v.Transport), strings.ToLower(v.Host), string(strconv.AppendInt(port[:0], int64(v.Port), 10)), b, rcv, rport}, "\x00")
}

// macPool keeps HMAC-SHA256 states keyed with the proxy's secret and
// buffers for their input: every call forwarded computes several MACs
// (branches, dialog tokens), and a new HMAC each time was a tenth of a
// call's allocations. The key is the pool's, set once (newMACPool): a
// pooled state keeps the key it was made with.
type macPool struct{ pool sync.Pool }

// newMACPool makes the pool of states keyed with secret.
func newMACPool(secret []byte) *macPool {
	return &macPool{pool: sync.Pool{New: func() any {
		return &pooledMAC{h: hmac.New(sha256.New, secret), buf: make([]byte, 0, 256)}
	}}}
}

type pooledMAC struct {
	h   hash.Hash
	buf []byte
}

// sum appends to dst the HMAC-SHA256 of parts, each followed by a zero
// byte.
func (mp *macPool) sum(dst []byte, parts ...string) []byte {
	m := mp.pool.Get().(*pooledMAC)
	buf := m.buf[:0]
	for _, s := range parts {
		buf = append(buf, s...)
		buf = append(buf, 0)
	}
	m.h.Reset()
	m.h.Write(buf)
	dst = m.h.Sum(dst)
	if cap(buf) <= 4096 { // one long input must not stay pooled
		m.buf = buf[:0]
		mp.pool.Put(m)
	}
	return dst
}

// branchMAC is the hex HMAC-SHA256 of parts, each followed by a zero byte.
func (p *Proxy) branchMAC(parts ...string) string {
	var sum [sha256.Size]byte
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], p.macs.sum(sum[:0], parts...))
	return string(out[:])
}
