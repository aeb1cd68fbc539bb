package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/internal/testkit"
)

// recorder collects what a DialogReplica sends.
type recorder struct {
	mu   sync.Mutex
	recs [][]byte
}

func (r *recorder) send(b []byte) error {
	r.mu.Lock()
	r.recs = append(r.recs, b)
	r.mu.Unlock()
	return nil
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs)
}

func (r *recorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.recs
	r.recs = nil
	return out
}

// TestDialogsReplicatedToTwin: calls set up through proxy 1 reach the twin
// as dialog records; proxy 1 dies, then the backend: the twin, now the VIP
// holder, sends each phone its BYE. A standby that is not the holder keeps
// the dead backend's dialogs for later (the holder sends the BYEs).
func TestDialogsReplicatedToTwin(t *testing.T) {
	testkit.RequireSIPp(t)
	const calls = 2
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", strconv.Itoa(calls))
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p1 := startProxy(t, []Backend{be}, nil)
	twin := startProxy(t, []Backend{be}, nil)
	standby := startProxy(t, []Backend{be}, nil)
	var out recorder
	p1.DialogReplica().StateChanges(out.send, func() bool { return true })
	standby.DialogReplica().StateChanges(func([]byte) error { return nil }, func() bool { return false })
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_wait_bye.xml"),
		"-s", "202", "-m", strconv.Itoa(calls), "-r", "10", "-timeout", "20s", "-timeout_error", p1.addr)
	// A dialog's record is sent right after it is kept.
	if !testkit.Poll(5*time.Second, func() bool { return out.len() == calls }) {
		t.Fatalf("%d dialogs confirmed, %d records sent, want %d\n%s", p1.dialogs.len(), out.len(), calls, phone.Output())
	}
	recs := out.take()
	twin.DialogReplica().ApplyState(recs)
	twin.DialogReplica().ApplyState(recs) // records may come twice
	standby.DialogReplica().ApplyState(recs)
	if n := twin.dialogs.len(); n != calls {
		t.Fatalf("twin has %d dialogs, want %d", n, calls)
	}
	p1.close()
	backend.Kill()
	if n := standby.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 0 || standby.dialogs.len() != calls {
		t.Fatalf("standby hung up %d dialogs and kept %d, want 0 and %d", n, standby.dialogs.len(), calls)
	}
	if n := twin.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != calls {
		t.Fatalf("twin hung up %d dialogs, want %d", n, calls)
	}
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone exit %d: BYE from the twin not received\n%s", code, phone.Output())
	}
}

// TestDialogRecordReleasedAndLinks: a released record removes the twin's
// dialog and is not undone by an older record arriving late; a dialog's
// link to its bridged call travels with it.
func TestDialogRecordReleasedAndLinks(t *testing.T) {
	be, _ := backendOn(t, "asterisk1", be1IP, "udp")
	p1 := startProxy(t, []Backend{be}, nil)
	twin := startProxy(t, []Backend{be}, nil)
	var out recorder
	p1.DialogReplica().StateChanges(out.send, func() bool { return true })
	inv := parseRequest(t, "INVITE", "ph", "")
	inv.SetSource(phoneIP + ":5060")
	p1.links.link(inv.CallID().Value(), "other-leg@test")
	res := parseResponse(t, inv, "be")
	p1.dialogs.confirm(inv, res, "asterisk1", p1.isLocal)
	alive := out.take()
	if len(alive) != 1 {
		t.Fatalf("%d records sent on confirm, want 1", len(alive))
	}
	twin.DialogReplica().ApplyState(alive)
	if twin.dialogs.len() != 1 {
		t.Fatalf("twin has %d dialogs, want 1", twin.dialogs.len())
	}
	if other, ok := twin.links.partner(inv.CallID().Value()); !ok || other != "other-leg@test" {
		t.Fatalf("twin's link: %q %v", other, ok)
	}
	bye := parseRequest(t, "BYE", "ph", "be")
	p1.dialogs.seen(bye)
	twin.DialogReplica().ApplyState(out.take())
	twin.DialogReplica().ApplyState(alive) // late duplicate of the older record
	if twin.dialogs.len() != 0 {
		t.Fatalf("twin has %d dialogs after the BYE, want 0", twin.dialogs.len())
	}
	if _, ok := twin.links.partner(inv.CallID().Value()); ok {
		t.Fatal("twin kept the link of an ended call")
	}
}

// parseResponse is the 200 to inv with To tag toTag.
func parseResponse(t *testing.T, inv *sip.Request, toTag string) *sip.Response {
	t.Helper()
	res := sip.NewResponseFromRequest(inv, 200, "OK", nil)
	res.To().Params.Add("tag", toTag)
	return res
}

// TestStandbyActsWhenItTakesTheVIP: a standby told that a backend died
// does nothing while the twin holds the VIP; once it takes the VIP it
// hangs up the calls that were up on that backend before its death.
func TestStandbyActsWhenItTakesTheVIP(t *testing.T) {
	testkit.RequireSIPp(t)
	be, bePort := backendOn(t, "asterisk1", be1IP, "udp")
	backend := testkit.StartSIPp(t, be1IP, bePort, "-sf", scenario("uas_call.xml"), "-m", "1")
	testkit.WaitListening(t, "udp", be.Address, 3*time.Second)
	p1 := startProxy(t, []Backend{be}, nil)
	twin := startProxy(t, []Backend{be}, nil)
	var out recorder
	p1.DialogReplica().StateChanges(out.send, func() bool { return true })
	var holds atomic.Bool
	twin.DialogReplica().StateChanges(func([]byte) error { return nil }, holds.Load)
	testkit.Run(t, twin.DialogReplica().Run)
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenario("uac_wait_bye.xml"),
		"-s", "202", "-m", "1", "-timeout", "20s", "-timeout_error", p1.addr)
	if !testkit.Poll(5*time.Second, func() bool { return out.len() == 1 }) {
		t.Fatalf("no dialog record sent\n%s", phone.Output())
	}
	twin.DialogReplica().ApplyState(out.take())
	backend.Kill()
	if n := twin.HangUpBackend("asterisk1", HangUpReasonBackendDown); n != 0 || twin.dialogs.len() != 1 {
		t.Fatalf("standby hung up %d dialogs and kept %d, want 0 and 1", n, twin.dialogs.len())
	}
	p1.close() // the holder dies before sending its BYEs
	holds.Store(true)
	if code := phone.Wait(10 * time.Second); code != 0 {
		t.Fatalf("phone exit %d: no BYE from the proxy that took the VIP\n%s", code, phone.Output())
	}
	if twin.dialogs.len() != 0 {
		t.Errorf("%d dialogs left on the new holder", twin.dialogs.len())
	}
}
