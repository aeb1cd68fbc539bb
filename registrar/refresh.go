package registrar

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// RefreshFromStore answers a REGISTER while no backend is up. It succeeds
// only for a plain refresh of bindings already held: same AOR, Call-ID and
// Contact(s), from the same source address and transport, with a higher
// CSeq, and no removal (Expires: 0, Contact: *). The stored CSeq is updated;
// the expiry is NOT extended (no backend vouched for it), so the 200 carries
// the remaining time. It returns the AOR's live bindings for RefreshResponse.
// Any other REGISTER gets ErrNotRefreshable (answer 503 with Retry-After).
func (r *Registrar) RefreshFromStore(req *sip.Request, src Source) ([]Binding, error) {
	now := r.now()
	no := func(format string, a ...any) ([]Binding, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrNotRefreshable}, a...)...)
	}
	if req == nil || req.Method != sip.REGISTER {
		return no("not a REGISTER")
	}
	to := req.To()
	if to == nil {
		return no("no To header")
	}
	aor, err := aorFromURI(&to.Address)
	if err != nil {
		return no("%v", err)
	}
	callID := ""
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	cs := req.CSeq()
	if callID == "" || cs == nil {
		return no("%s: no Call-ID or CSeq", aor)
	}
	hdr, hasHdr := headerExpires(req)
	cts := contacts(req)
	if len(cts) == 0 {
		return no("%s: no Contact (query)", aor)
	}
	src.Addr = netip.AddrPortFrom(src.Addr.Addr().Unmap(), src.Addr.Port())
	keys := make([]string, 0, len(cts))
	for _, c := range cts {
		if c.Address.Wildcard {
			return no("%s: Contact: * (removal needs a backend)", aor)
		}
		s, ok := paramExpires(c.Params)
		if !ok {
			s, ok = hdr, hasHdr
		}
		if ok && s == 0 {
			return no("%s: expires 0 (removal needs a backend)", aor)
		}
		keys = append(keys, contactKey(&c.Address))
	}
	key, _ := r.tab.key(aor)

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrClosed
	}
	e := r.tab.aors[key]
	if e == nil {
		r.mu.Unlock()
		return no("%s: no stored binding", aor)
	}
	recs := make([]Record, 0, len(keys))
	for _, k := range keys {
		i := e.find(k)
		if i < 0 || e.recs[i].rec.Deleted || !e.recs[i].rec.Binding.Expires.After(now.Add(time.Second)) {
			r.mu.Unlock()
			return no("%s: no live stored binding for contact %s", aor, k)
		}
		b := e.recs[i].rec.Binding
		switch {
		case b.CallID != callID:
			r.mu.Unlock()
			return no("%s: Call-ID %q differs from stored %q", aor, callID, b.CallID)
		case b.Source.Addr != src.Addr || !strings.EqualFold(b.Source.Transport, src.Transport):
			r.mu.Unlock()
			return no("%s: source %s/%s differs from stored %s/%s", aor, src.Addr, src.Transport, b.Source.Addr, b.Source.Transport)
		case cs.SeqNo <= b.CSeq:
			r.mu.Unlock()
			return no("%s: CSeq %d not above stored %d", aor, cs.SeqNo, b.CSeq)
		}
		b.CSeq = cs.SeqNo
		b.Source.ConnID = src.ConnID
		b.Updated = now
		recs = append(recs, Record{Binding: b, Version: Version{Time: r.clock.next(now), Node: r.node}})
	}
	taken := r.commit(recs, now, opStore)
	out := liveBindings(nil, e, now)
	r.mu.Unlock()
	r.notify(taken)
	return out, nil
}

// RefreshResponse builds the 200 OK for a REGISTER answered from the store:
// one Contact per binding with expires set to its remaining whole seconds
// (at least 1) and a Date header, as RFC 3261 10.3 step 8 asks.
func RefreshResponse(req *sip.Request, bindings []Binding, now time.Time) *sip.Response {
	res := sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
	for _, b := range bindings {
		if c := contactHeader(b.Contact, max(int64(b.Remaining(now)/time.Second), 1)); c != nil {
			res.AppendHeader(c)
		}
	}
	res.AppendHeader(sip.NewHeader("Date", now.UTC().Format(time.RFC1123[:len(time.RFC1123)-3])+"GMT"))
	return res
}

// AnswerRefresh answers a REGISTER refresh from the store (RefreshFromStore)
// with its 200 (RefreshResponse); ErrNotRefreshable when it cannot.
func (r *Registrar) AnswerRefresh(req *sip.Request) (*sip.Response, error) {
	src, err := sourceOf(req)
	if err != nil {
		return nil, err
	}
	bs, err := r.RefreshFromStore(req, src)
	if err != nil {
		return nil, err
	}
	return RefreshResponse(req, bs, r.now()), nil
}

// sourceOf is where req came from as the proxy's transport saw it: the
// received address, and for TCP/TLS the connection (sipgo keys it by that
// address).
func sourceOf(req *sip.Request) (Source, error) {
	addr, tr := req.Source(), strings.ToLower(req.Transport())
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return Source{}, fmt.Errorf("registrar: source address %q: %w", addr, err)
	}
	src := Source{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Transport: tr}
	if sip.IsReliable(tr) {
		src.ConnID = addr
	}
	return src, nil
}
