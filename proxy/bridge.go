package proxy

import (
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
)

// BridgeHeader is what the shipped dialplan adds to the outgoing leg of a
// two-party call: the Call-ID of the incoming leg it bridges to. Only a
// backend's initial INVITE may carry it; hapbx removes it from every
// request, so no phone sees it and no phone can forge a link.
const BridgeHeader = "X-Hapbx-Bridge"

type bridging struct {
	links     *linkTable     // the two legs a backend bridges
	takeovers *takeoverTable // calls kept up after their backend died (takeover.go)
	replica   *DialogReplica // dialogs and links sent to the twin (replicate.go)
	// amiPending: bridges a backend's manager reported before hapbx had
	// confirmed both their dialogs (amibridge.go).
	amiPending *ttlSet
}

// newBridging sets up p's bridging; p.dialogs must exist.
func newBridging(p *Proxy, cfg Config, reg prometheus.Registerer) bridging {
	b := bridging{links: newLinkTable(cfg.MaxDialogs, cfg.DialogTTL, reg), takeovers: newTakeoverTable(reg), replica: newDialogReplica(p),
		amiPending: newTTLSet(amiPendingFor, cfg.MaxDialogs)}
	p.dialogs.changed = func(d *dialog, released bool) {
		if !released {
			p.bridgePending(d) // first: the record then carries the link
		}
		b.replica.changed(d, released)
	}
	return b
}

// linkTable maps each leg of a bridged call to the other's Call-ID. It is
// bounded like the dialogs (sip.max_dialogs) and a link lives as long as
// a dialog does (sip.dialog_ttl, renewed by in-dialog requests).
type linkTable struct {
	pairs *ttlSet // Call-ID -> the other leg's Call-ID, both directions
	full  prometheus.Counter
}

func newLinkTable(max int, ttl time.Duration, reg prometheus.Registerer) *linkTable {
	t := &linkTable{
		pairs: newTTLSet(ttl, 2*max),
		full: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hapbx_proxy_bridge_links_untracked_total",
			Help: "Bridged calls whose two legs were not linked because sip.max_dialogs links were kept: their calls end with BYEs when their backend dies.",
		}),
	}
	reg.MustRegister(t.full)
	return t
}

// link records that the backend bridges call out to call in. Either
// call's former link goes: a call is bridged with one other at a time.
func (t *linkTable) link(out, in string) {
	if other, ok := t.pairs.get(out); ok && other == in {
		if back, ok := t.pairs.get(in); ok && back == out {
			return
		}
	}
	t.drop(out)
	t.drop(in)
	if !t.pairs.put(out, in) || !t.pairs.put(in, out) {
		t.pairs.del(out)
		t.full.Inc()
	}
}

// partner is the Call-ID linked to callID.
func (t *linkTable) partner(callID string) (string, bool) { return t.pairs.get(callID) }

// touch renews callID's link: its call is still up.
func (t *linkTable) touch(callID string) {
	if t == nil {
		return
	}
	if other, ok := t.pairs.get(callID); ok {
		t.pairs.put(callID, other)
		t.pairs.put(other, callID)
	}
}

// drop forgets callID's link (its call ended).
func (t *linkTable) drop(callID string) {
	if t == nil {
		return
	}
	if other, ok := t.pairs.get(callID); ok {
		if back, ok := t.pairs.get(other); ok && back == callID {
			t.pairs.del(other)
		}
	}
	t.pairs.del(callID)
}

// takeBridgeHeader removes BridgeHeader from req and, on a backend's
// initial INVITE, links req's call to the Call-ID it names.
func (p *Proxy) takeBridgeHeader(req *sip.Request) {
	h := req.GetHeader(BridgeHeader)
	if h == nil {
		return
	}
	in := strings.TrimSpace(h.Value())
	for req.GetHeader(BridgeHeader) != nil {
		req.RemoveHeader(BridgeHeader)
	}
	if p.links == nil || !req.IsInvite() || inDialog(req) || in == "" || len(in) > 256 || p.fromBackend(req) == "" {
		return
	}
	if out := req.CallID().Value(); out != in {
		p.links.link(out, in)
	}
}
