package proxy

import (
	"strings"
	"time"

	"go.uber.org/zap"
)

// amiPendingFor is how long a bridge a backend's manager reported waits for
// hapbx to confirm its two dialogs: the manager's event may come before the
// 2xx that confirms a leg reaches hapbx, and a 2xx is retransmitted for
// 64*T1 = 32 s at most.
const amiPendingFor = 32 * time.Second

// Bridged takes a backend's word, from its manager (package health's
// BridgeSink: BridgeEnter, BridgeInfo), that it bridges the calls callID1
// and callID2. When both are dialogs hapbx confirmed through that backend
// the two are linked, replacing any link either had (learnt from
// X-Hapbx-Bridge, or a bridge since broken): after a transfer or a
// re-bridge the link names the two calls actually bridged. Otherwise the
// pair waits (amiPendingFor) for the dialogs to be confirmed. The Call-IDs
// come from a configured backend's manager, not from phones; what waits is
// bounded (sip.max_dialogs entries, amiPendingFor each) and links nothing
// until both legs are dialogs hapbx confirmed through that backend.
func (p *Proxy) Bridged(backend, callID1, callID2 string) {
	if callID1 == callID2 || callID1 == "" || callID2 == "" {
		return
	}
	d1, d2 := p.dialogs.onBackend(callID1, backend), p.dialogs.onBackend(callID2, backend)
	if d1 == nil || d2 == nil {
		// One leg's 2xx may still be on its way: wait for it, keyed by
		// the leg not confirmed yet (at most max_dialogs waiting).
		v := backend + "\x00" + callID1 + "\x00" + callID2
		if d1 == nil {
			p.amiPending.put(callID1, v)
		}
		if d2 == nil {
			p.amiPending.put(callID2, v)
		}
		return
	}
	p.linkBridged(d1, d2)
}

// Unbridged takes a backend's word that the bridge of callID1 and callID2
// broke (BridgeLeave, BridgeDestroy): their link goes, unless either call
// has been linked to another since.
func (p *Proxy) Unbridged(backend, callID1, callID2 string) {
	p.amiPending.del(callID1)
	p.amiPending.del(callID2)
	if other, ok := p.links.partner(callID1); !ok || other != callID2 {
		return
	}
	if p.dialogs.onBackend(callID1, backend) == nil && p.dialogs.onBackend(callID2, backend) == nil {
		return // not this backend's calls
	}
	p.links.drop(callID1)
	p.log.Debug("bridge broken (AMI): link dropped", zap.String("backend", backend), zap.String("call_id", callID1), zap.String("other_call_id", callID2))
	p.replicateLink(callID1, callID2)
}

// bridgePending links d, just confirmed, when its backend's manager
// reported its bridge before.
func (p *Proxy) bridgePending(d *dialog) {
	if p.amiPending == nil {
		return
	}
	v, ok := p.amiPending.get(d.callID)
	if !ok {
		return
	}
	backend, rest, _ := strings.Cut(v, "\x00")
	c1, c2, _ := strings.Cut(rest, "\x00")
	if backend != d.backend {
		return
	}
	other := c1
	if other == d.callID {
		other = c2
	}
	o := p.dialogs.onBackend(other, backend)
	if o == nil {
		return // still waiting for the other leg
	}
	p.amiPending.del(d.callID)
	p.amiPending.del(other)
	// The record of d is sent by the caller after this; o's here.
	if p.setLink(d, o) && p.replica.holds() {
		p.replica.changed(o, false)
	}
}

// linkBridged links two confirmed dialogs and replicates both.
func (p *Proxy) linkBridged(d1, d2 *dialog) {
	if !p.setLink(d1, d2) {
		return
	}
	p.replicateLink(d1.callID, d2.callID)
}

// setLink links d1 and d2 (false: they already were) and replicates the
// dialogs whose former links it dropped.
func (p *Proxy) setLink(d1, d2 *dialog) bool {
	if other, ok := p.links.partner(d1.callID); ok && other == d2.callID {
		if back, ok := p.links.partner(d2.callID); ok && back == d1.callID {
			return false
		}
	}
	var former []string
	for _, c := range []string{d1.callID, d2.callID} {
		if other, ok := p.links.partner(c); ok && other != d1.callID && other != d2.callID {
			former = append(former, other)
		}
	}
	p.links.link(d1.callID, d2.callID)
	p.log.Debug("bridge learnt (AMI): calls linked", zap.String("backend", d1.backend), zap.String("call_id", d1.callID),
		zap.String("other_call_id", d2.callID), zap.Strings("unlinked", former))
	p.replicateLink(former...)
	return true
}

// replicateLink sends the records of the dialogs of callIDs, whose link
// changed, to the twin; only the VIP holder does (the twin follows the
// backend's manager itself too).
func (p *Proxy) replicateLink(callIDs ...string) {
	if !p.replica.holds() {
		return
	}
	for _, c := range callIDs {
		p.dialogs.mu.Lock()
		d := p.dialogs.byCall[c]
		p.dialogs.mu.Unlock()
		if d != nil {
			p.replica.changed(d, false)
		}
	}
}
