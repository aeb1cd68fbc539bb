package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// uasGlare answers a call 200 and waits for the caller's BYE; at GLARE it
// may send a BYE of its own and take its 200 before it answers the
// caller's BYE CODE (the two BYEs cross at the caller, as hapbx's for a
// PBX just killed or Asterisk's do in the lab).
const uasGlare = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas glare">
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>
    </action>
  </recv>
  <send retrans="500"><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:uas@[local_ip]:[local_port]>
      X-Caller: [$caller]
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]></send>
  <recv request="ACK"/>
  <recv request="BYE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="via"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="cseq"/>
    </action>
  </recv>
GLARE
  <send><![CDATA[
      SIP/2.0 CODE
      Via: [$via]
      From: [$from]
      To: [$to]
      [last_Call-ID:]
      CSeq: [$cseq]
      Content-Length: 0

    ]]></send>
</scenario>
`

const uasOwnBye = `  <send><![CDATA[
      BYE sip:caller@[local_ip] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:uas@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 1 BYE
      Reason: SIP;cause=503;text="backend down"
      Content-Length: 0

    ]]></send>
  <recv response="200"/>`

// uasByeAtOnce answers a call 200 and hangs it up as soon as the ACK
// comes (as chan_pjsip does a call whose callee answered without SDP).
var uasByeAtOnce = strings.Replace(strings.Replace(uasGlare, "CODE", "200 OK", 1),
	`  <recv request="BYE">`, uasOwnBye+"\n  <recv request=\"BYE\">", 1)

// uasByeInSetup answers a call 100 and then sends a BYE, before any 200:
// no dialog exists, the caller must count the call failed.
const uasByeInSetup = `<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas bye in set-up">
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
  <send><![CDATA[
      BYE sip:caller@[local_ip] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:uas@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 1 BYE
      Content-Length: 0

    ]]></send>
  <recv response="200" timeout="3000"/>
</scenario>
`

// uasByeLost answers a call 200 and loses the caller's BYE (SIPp's lost:
// as to a proxy being killed), sends its own, and answers CODE to the
// caller's BYE only when the caller sends it again. SIPp stops
// retransmitting a request once any message of the call arrives (here the
// crossing BYE), so the caller must send it again itself, as a phone's
// transaction does.
var uasByeLost = strings.Replace(strings.Replace(uasGlare, "GLARE\n", "", 1), `  <recv request="BYE">
    <action>`, `  <recv request="BYE" lost="100" timeout="1000" ontimeout="own"/>
  <label id="own"/>
`+uasOwnBye+`
  <recv request="BYE">
    <action>`, 1)

// writeGlareUAS writes uasGlare, with its own BYE or not and answering
// the caller's BYE code, into dir and returns its path.
func writeGlareUAS(t *testing.T, dir string, ownBye bool, code string) string {
	t.Helper()
	own := ""
	if ownBye {
		own = uasOwnBye
	}
	path := filepath.Join(dir, "uas_glare.xml")
	scen := strings.Replace(strings.Replace(uasGlare, "CODE", code, 1), "GLARE\n", own+"\n", 1)
	if err := os.WriteFile(path, []byte(scen), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCallersAcceptByeGlare: the lab's callers (uac_call_lab.xml, the
// phones'; trunk_call_lab.xml, the provider's) hang up 200 ms after the
// answer. A BYE of the far end crossing theirs is a legitimate end of the
// call (RFC 3261 15.1.2): answered 200, their own BYE answered 200, 481 or
// 408 (hapbx's when the backend is gone); their own BYE, if lost on the
// way (sent to a proxy as it was killed), is sent again after a second,
// as a phone's transaction would. A 481 to their BYE without such
// a BYE (the far end did not know the dialog) and a BYE during the set-up
// (before any dialog) still fail the call.
// Loopback SIPp only: no lab needed.
func TestCallersAcceptByeGlare(t *testing.T) {
	testdata, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	inSetup := filepath.Join(dir, "uas_bye_in_setup.xml")
	atOnce := filepath.Join(dir, "uas_bye_at_once.xml")
	for p, scen := range map[string]string{inSetup: uasByeInSetup, atOnce: strings.Replace(uasByeAtOnce, "GLARE\n", "", 1)} {
		if err := os.WriteFile(p, []byte(scen), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name  string
		glare bool
		lost  bool // the caller's first BYE unanswered: only its retransmission is
		code  string
		ok    bool
		uas   string // instead of uasGlare
	}{
		{name: "BYE during the set-up", uas: inSetup, ok: false},
		{name: "BYE right after the ACK", uas: atOnce, ok: true},
		{name: "glare, own BYE answered 200", glare: true, code: "200 OK", ok: true},
		{name: "glare, own BYE answered 481", glare: true, code: "481 Call/Transaction Does Not Exist", ok: true},
		{name: "glare, own BYE answered 408", glare: true, code: "408 Request Timeout", ok: true},
		{name: "glare, own BYE lost once, answered 481", glare: true, lost: true, code: "481 Call/Transaction Does Not Exist", ok: true},
		{name: "glare, own BYE lost once, answered 200", glare: true, lost: true, code: "200 OK", ok: true},
		{name: "no glare, own BYE answered 200", code: "200 OK", ok: true},
		{name: "no glare, own BYE answered 408", code: "408 Request Timeout", ok: true},
		{name: "no glare, own BYE answered 481", code: "481 Call/Transaction Does Not Exist", ok: false},
	} {
		uasFile := c.uas
		if uasFile == "" {
			uasFile = writeGlareUAS(t, dir, c.glare, c.code)
			if c.lost {
				uasFile = filepath.Join(dir, "uas_bye_lost.xml")
				if err := os.WriteFile(uasFile, []byte(strings.Replace(uasByeLost, "CODE", c.code, 1)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, caller := range [][]string{
			{"-sf", filepath.Join(testdata, "uac_call_lab.xml"), "-inf", filepath.Join(testdata, "calls.csv")},
			{"-sf", filepath.Join(testdata, "trunk_call_lab.xml"), "-s", TrunkDID},
		} {
			uas := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), "-sf", uasFile, "-m", "1")
			testkit.WaitListening(t, "udp", uas.Addr, 5*time.Second)
			args := append(caller, "-m", "1", "-recv_timeout", "5s", "-timeout", "20s", uas.Addr)
			uac := testkit.StartSIPp(t, "127.0.0.1", testkit.FreePort(t, "127.0.0.1"), args...)
			code := uac.Wait(30 * time.Second)
			if (code == 0) != c.ok {
				t.Errorf("%s, %s: sipp exit %d, want success %v\n%s", c.name, filepath.Base(caller[1]), code, c.ok, uac.Output())
			}
			// The far end's side too, where it plays a whole call (uasGlare,
			// uasByeLost): its BYE answered as it expects (SIPp would answer
			// an unexpected BYE itself, and the caller's global BYE receive
			// take any later one).
			if c.ok && c.uas == "" {
				if code := uas.Wait(10 * time.Second); code != 0 {
					t.Errorf("%s, %s: the far end's sipp exit %d, want 0\n%s", c.name, filepath.Base(caller[1]), code, uas.Output())
				}
			}
			uas.Kill()
		}
	}
}
