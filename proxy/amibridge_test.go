package proxy

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

// newLinkProxy is a proxy that never listens: its dialogs and links only.
func newLinkProxy(t *testing.T, maxDialogs int) *Proxy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Advertise = proxyIP
	cfg.MaxDialogs = maxDialogs
	be := Backend{Name: "asterisk1", Address: be1IP + ":5060"}
	p, err := New(cfg, []Backend{be}, NewStaticRouter([]string{be.Name}, false), zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// confirmed adds a confirmed dialog of callID through backend, as a 2xx does.
func confirmed(p *Proxy, callID, backend string) {
	p.dialogs.addNotify(&dialog{callID: callID, fromTag: "f-" + callID, toTag: "t-" + callID, backend: backend})
}

func wantPartner(t *testing.T, p *Proxy, callID, want string) {
	t.Helper()
	got, ok := p.links.partner(callID)
	if want == "" && ok {
		t.Errorf("%s linked to %s, want no link", callID, got)
	}
	if want != "" && got != want {
		t.Errorf("%s linked to %q, want %s", callID, got, want)
	}
}

// TestAMIBridgeReplacesHeaderLink: after a transfer the backend's manager
// reports A bridged with C: the link A-B learnt from X-Hapbx-Bridge gives
// way to A-C in both directions, B keeps none; a late report of the old
// bridge's end changes nothing; the end of A-C's bridge drops it.
func TestAMIBridgeReplacesHeaderLink(t *testing.T) {
	p := newLinkProxy(t, 100)
	for _, c := range []string{"A", "B", "C"} {
		confirmed(p, c, "asterisk1")
	}
	p.links.link("B", "A") // the dialplan's mark on the INVITE to B
	p.Bridged("asterisk1", "C", "A")
	wantPartner(t, p, "A", "C")
	wantPartner(t, p, "C", "A")
	wantPartner(t, p, "B", "")
	p.Unbridged("asterisk1", "A", "B")
	wantPartner(t, p, "A", "C")
	p.Unbridged("asterisk1", "A", "C")
	wantPartner(t, p, "A", "")
	wantPartner(t, p, "C", "")
}

// TestAMIBridgeKnownDialogsOnly: a bridge links only calls hapbx confirmed
// through that backend; one reported before a leg's 2xx reached hapbx is
// linked when it does; one of another backend, or of calls never seen,
// leaves nothing behind but a bounded wait.
func TestAMIBridgeKnownDialogsOnly(t *testing.T) {
	p := newLinkProxy(t, 100)
	confirmed(p, "A", "asterisk1")
	confirmed(p, "X", "asterisk2")
	p.Bridged("asterisk1", "A", "X") // X is another backend's
	wantPartner(t, p, "A", "")
	p.Bridged("asterisk1", "A", "B") // B's 2xx still on its way
	wantPartner(t, p, "A", "")
	confirmed(p, "B", "asterisk1")
	wantPartner(t, p, "A", "B")
	wantPartner(t, p, "B", "A")
	if p.amiPending.has("B") {
		t.Errorf("A-B's bridge still waiting after both legs were confirmed")
	}
	p.Bridged("asterisk1", "never-seen-1", "never-seen-2")
	if n := p.links.pairs.len(); n != 2 {
		t.Errorf("%d link entries, want 2 (A-B only)", n)
	}
}

// TestAMIBridgePendingBounded: waiting bridges are bounded by
// sip.max_dialogs, like the links.
func TestAMIBridgePendingBounded(t *testing.T) {
	p := newLinkProxy(t, 4)
	for i := range 10 {
		p.Bridged("asterisk1", "x"+string(rune('a'+i)), "y"+string(rune('a'+i)))
	}
	if n := p.amiPending.len(); n > 4 {
		t.Errorf("%d bridges waiting, want at most sip.max_dialogs = 4", n)
	}
}

// TestLinkReplacedByHeader: a blind transfer without AMI: Asterisk dials C
// for A (X-Hapbx-Bridge names A) while A's link to B is still there; B's
// BYE then must not take A-C's link with it.
func TestLinkReplacedByHeader(t *testing.T) {
	p := newLinkProxy(t, 100)
	p.links.link("B", "A")
	p.links.link("C", "A")
	p.links.drop("B")
	wantPartner(t, p, "A", "C")
	wantPartner(t, p, "C", "A")
	wantPartner(t, p, "B", "")
}
