package main

import (
	"crypto/md5"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/hapbx/hapbx/internal/testkit"
)

const providerIP = "127.0.3.61"

// TestTrunkRegistersFromProxySocket: hapbx run with a trunk registers at
// the provider (SIPp: challenges, verifies the digest, grants 2 s) from
// the proxy's SIP socket, and keeps refreshing it.
func TestTrunkRegistersFromProxySocket(t *testing.T) {
	testkit.RequireSIPp(t)
	be := testkit.StartOptionsUAS(t, be1IP, 0, 200, "udp")
	sf, err := filepath.Abs(filepath.Join("..", "..", "proxy", "trunk", "testdata", "provider_registrar.xml"))
	if err != nil {
		t.Fatal(err)
	}
	provider := testkit.StartSIPp(t, providerIP, testkit.FreePort(t, providerIP), "-sf", sf, "-trace_msg")
	testkit.WaitListening(t, "udp", provider.Addr, 3*time.Second)
	secret := providerSecret(t)
	d := startDaemonWith(t, fmt.Sprintf(`trunks:
  - name: p1
    hosts: [%q]
    credentials_file: %s
    register: true
    register_interval: 60s
    user: "4930123"
    domain: provider.test
`, provider.Addr, secret), be.Addr())
	ok := `hapbx_trunk_registrations_total{result="ok",trunk="p1"}`
	if !testkit.Poll(30*time.Second, func() bool {
		n, _ := strconv.ParseFloat(d.metric(t, ok), 64)
		return n >= 2 && d.metric(t, `hapbx_trunk_registered{trunk="p1"}`) == "1"
	}) {
		t.Fatalf("not registered and refreshed within 30s: %s = %s\n%s\n%s", ok, d.metric(t, ok), provider.Output(), d.log.String())
	}
	if n, _ := strconv.ParseFloat(d.metric(t, `hapbx_trunk_registrations_total{result="rejected",trunk="p1"}`), 64); n != 0 {
		t.Errorf("%v REGISTERs rejected by the provider\n%s", n, provider.Output())
	}
	// /api/v1/status shows the registration and the host.
	trunks, _ := d.status(t)["trunks"].([]any)
	if len(trunks) != 1 {
		t.Fatalf("status trunks: %v", d.status(t)["trunks"])
	}
	tr := trunks[0].(map[string]any)
	reg, _ := tr["registration"].(map[string]any)
	if tr["name"] != "p1" || reg["registered"] != true || reg["host"] != provider.Addr {
		t.Errorf("status of trunk p1: %v", tr)
	}
	out, err := exec.Command(hapbxBin, "status", "-c", d.config).CombinedOutput()
	if err != nil || !containsAll(string(out), "trunk p1: registered at "+provider.Addr+" until ") {
		t.Errorf("hapbx status: %v\n%s", err, out)
	}
	// From the proxy's socket, with its Via and the Contact the provider
	// sends calls to.
	trace := provider.Output()
	for _, want := range []string{"Via: SIP/2.0/UDP " + d.sip + ";branch=", "Contact: <sip:4930123@" + d.sip + ">"} {
		if !containsAll(trace, want) {
			t.Errorf("no %q in what the provider received:\n%s", want, trace)
		}
	}
}

// sippMessages is everything p sent and received (-trace_msg), whole; p
// is stopped first so that sipp has flushed it.
func sippMessages(t *testing.T, p *testkit.SIPp) string {
	t.Helper()
	p.Stop()
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_messages.log"))
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

// sippReceived splits a sipp message trace into the messages sipp
// received.
func sippReceived(trace string) []string {
	var out []string
	for _, part := range strings.Split(trace, "----------------------------------------------- ") {
		if !strings.Contains(part, "message received [") {
			continue
		}
		if _, msg, ok := strings.Cut(part, "bytes :"); ok {
			out = append(out, strings.TrimLeft(msg, "\r\n "))
		}
	}
	return out
}

// TestTrunkIncomingCalls: a call from the trunk's ACL reaches the backend
// with X-Hapbx-Trunk naming the trunk (the provider's own value replaced);
// the provider sees hapbx's address as the 200's Contact and its ACK and
// BYE to it reach the backend at the backend's own Contact; a call from
// outside every ACL reaches it without one; a phone that names a trunk
// gets 403, counted with the trust refusals.
func TestTrunkIncomingCalls(t *testing.T) {
	testkit.RequireSIPp(t)
	// Two backends playing Asterisk: asterisk1 is active; the trunk's calls
	// go to asterisk2 only (its `backends`).
	var bes [2]*testkit.SIPp
	var addrs []string
	for i, ip := range []string{be1IP, be2IP} {
		port := testkit.FreePort(t, ip)
		bes[i] = testkit.StartSIPp(t, ip, port, "-sf", scenarioPath("uas_asterisk.xml"), "-trace_msg")
		addrs = append(addrs, net.JoinHostPort(ip, strconv.Itoa(port)))
		testkit.WaitListening(t, "udp", addrs[i], 3*time.Second)
	}
	d := startDaemonWith(t, fmt.Sprintf(`trunks:
  - name: p1
    hosts: ["%s:5060"]
    keepalive: 1h
    backends: [asterisk2]
`, providerIP), addrs...)
	d.waitActive(t, "asterisk1")
	testkit.Eventually(t, 10*time.Second, "asterisk2 up", func() bool {
		return d.metric(t, `hapbx_backend_up{backend="asterisk2"}`) == "1"
	})

	provider := testkit.StartSIPp(t, providerIP, testkit.FreePort(t, providerIP), "-sf", scenarioPath("trunk_provider_uac.xml"),
		"-s", "100", "-m", "1", "-timeout", "15s", "-timeout_error", "-trace_msg", d.sip)
	if code := provider.Wait(20 * time.Second); code != 0 {
		t.Fatalf("the provider's call failed (exit %d)\n%s", code, provider.Output())
	}
	phone := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sn", "uac", "-s", "101", "-m", "1",
		"-timeout", "15s", "-timeout_error", d.sip)
	if code := phone.Wait(20 * time.Second); code != 0 {
		t.Fatalf("the phone's call failed (exit %d)\n%s", code, phone.Output())
	}
	forger := testkit.StartSIPp(t, phoneIP, testkit.FreePort(t, phoneIP), "-sf", scenarioPath("trunk_forged_uac.xml"),
		"-s", "102", "-m", "1", "-timeout", "15s", "-timeout_error", d.sip)
	if code := forger.Wait(20 * time.Second); code != 0 {
		t.Fatalf("a phone naming a trunk did not get 403 (exit %d)\n%s", code, forger.Output())
	}
	if got := d.metric(t, `hapbx_proxy_refused_total{reason="trunk_not_backend"}`); got != "1" {
		t.Errorf("trunk_not_backend refusals = %q, want 1", got)
	}

	aliased := regexp.MustCompile(`(?m)^Contact: <sip:asterisk@` + regexp.QuoteMeta(d.sip) + `;hpxc=[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+>`)
	for _, m := range sippReceived(sippMessages(t, provider)) {
		if strings.HasPrefix(m, "SIP/2.0 200 ") && strings.Contains(m, "INVITE") && !aliased.MatchString(m) {
			t.Errorf("the provider's 200 does not show hapbx's address as Contact:\n%s", m)
		}
	}
	var got [2][]string // the INVITEs each backend received
	var inDialog []string
	for i, be := range bes {
		for _, m := range sippReceived(sippMessages(t, be)) {
			if strings.HasPrefix(m, "INVITE ") {
				got[i] = append(got[i], m)
			}
			if i == 1 && (strings.HasPrefix(m, "ACK ") || strings.HasPrefix(m, "BYE ")) {
				inDialog = append(inDialog, m)
			}
		}
	}
	if len(inDialog) != 2 {
		t.Errorf("asterisk2 got %d of the provider's ACK and BYE, want 2", len(inDialog))
	}
	for _, m := range inDialog {
		if !strings.HasPrefix(m, strings.Fields(m)[0]+" sip:asterisk@"+addrs[1]+";transport=UDP SIP/2.0") {
			t.Errorf("the provider's in-dialog request did not reach asterisk2 at its own Contact:\n%s", m)
		}
	}
	if len(got[0]) != 1 || strings.Contains(got[0][0], `From: "4930555"`) || strings.Contains(got[0][0], "X-Hapbx-Trunk") {
		t.Errorf("asterisk1 (active) did not get the phone's call alone, without X-Hapbx-Trunk:\n%s", got[0])
	}
	if len(got[1]) != 1 || !strings.Contains(got[1][0], `From: "4930555"`) {
		t.Fatalf("asterisk2 (the trunk's backend) did not get the provider's call alone:\n%s", got[1])
	}
	if m := got[1][0]; strings.Contains(m, "forged") || strings.Count(m, "X-Hapbx-Trunk:") != 1 ||
		!regexp.MustCompile(`(?m)^X-Hapbx-Trunk: p1\r?$`).MatchString(m) {
		t.Errorf("the provider's call reached the backend without exactly X-Hapbx-Trunk: p1:\n%s", m)
	}
}

// TestTrunkOutgoingCall: a backend's INVITE naming the trunk goes to the
// provider's first host, which is silent, then (after hop_timeout) to the
// second, from hapbx's address in Via and Record-Route; hapbx answers the
// provider's 407 with the trunk's credentials (verified by the provider),
// so the backend never sees the challenge; the backend's ACK carries the
// CSeq of the authorized INVITE to the provider. Media is anchored as for
// any call: the provider is offered hapbx's address, and sees it as the
// Contact too. The provider's BYE, sent to that Contact, reaches the
// backend through hapbx (its Route with the dialog token).
func TestTrunkOutgoingCall(t *testing.T) {
	testkit.RequireSIPp(t)
	const provider2IP = "127.0.3.62"
	be := testkit.StartOptionsUAS(t, be1IP, 0, 200, "udp")
	silent, err := net.ListenPacket("udp", net.JoinHostPort(providerIP, strconv.Itoa(testkit.FreePort(t, providerIP))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	heard := make(chan string, 16)
	go func() {
		buf := make([]byte, 65535)
		for {
			n, _, err := silent.ReadFrom(buf)
			if err != nil {
				close(heard)
				return
			}
			heard <- string(buf[:n])
		}
	}()
	provider := testkit.StartSIPp(t, provider2IP, testkit.FreePort(t, provider2IP), "-sf", scenarioPath("trunk_provider_uas_407.xml"), "-trace_msg")
	testkit.WaitListening(t, "udp", provider.Addr, 3*time.Second)
	secret := providerSecret(t)
	d := startDaemonWith(t, fmt.Sprintf(`trunks:
  - name: p1
    hosts: [%q, %q]
    credentials_file: %s
    user: "4930123"
    domain: provider.test
    keepalive: 1h
media: {enabled: true, ports: "23200-23299"}
`, silent.LocalAddr().String(), provider.Addr, secret), be.Addr())
	d.waitActive(t, "asterisk1")

	asterisk := testkit.StartSIPp(t, be1IP, testkit.FreePort(t, be1IP), "-sf", scenarioPath("trunk_backend_uac.xml"),
		"-s", "4930999", "-m", "1", "-timeout", "15s", "-timeout_error", "-trace_msg", d.sip)
	if code := asterisk.Wait(20 * time.Second); code != 0 {
		t.Fatalf("the call out through the trunk failed (exit %d)\n%s\n%s", code, asterisk.Output(), provider.Output())
	}
	bye := false
	for _, m := range sippReceived(sippMessages(t, asterisk)) {
		if strings.HasPrefix(m, "SIP/2.0 407") || strings.HasPrefix(m, "SIP/2.0 401") {
			t.Errorf("the provider's challenge reached the backend:\n%s", m)
		}
		if strings.HasPrefix(m, "BYE ") {
			bye = strings.Contains(m, "Via: SIP/2.0/UDP "+d.sip+";branch=")
		}
	}
	if !bye {
		t.Errorf("the provider's BYE did not reach the backend through hapbx (dialog token)")
	}
	sawInvite := false
	for len(heard) > 0 {
		if strings.HasPrefix(<-heard, "INVITE ") {
			sawInvite = true
		}
	}
	if !sawInvite {
		t.Errorf("the silent first host got no INVITE: no failover was tested")
	}
	var invites []string
	ackCSeq := ""
	for _, m := range sippReceived(sippMessages(t, provider)) {
		switch {
		case strings.HasPrefix(m, "INVITE "):
			invites = append(invites, m)
		case strings.HasPrefix(m, "ACK ") && strings.Contains(m, "CSeq: 2 ACK"):
			ackCSeq = "2"
		}
	}
	if len(invites) != 2 {
		t.Fatalf("the provider got %d INVITEs, want 2 (challenged, authorized)", len(invites))
	}
	for _, want := range []string{"Via: SIP/2.0/UDP " + d.sip + ";branch=", "Record-Route: <sip:" + d.sip + ";", "Contact: <sip:201@" + d.sip + ";hpxc="} {
		if !strings.Contains(invites[0], want) {
			t.Errorf("no %q in the INVITE the provider got:\n%s", want, invites[0])
		}
	}
	if !strings.Contains(invites[1], "c=IN IP4 "+proxyIP) {
		t.Errorf("the provider's offer is not anchored on hapbx:\n%s", invites[1])
	}
	if strings.Contains(invites[0], "X-Hapbx-Trunk") {
		t.Errorf("X-Hapbx-Trunk reached the provider:\n%s", invites[0])
	}
	if !containsAll(invites[1], "Proxy-Authorization: Digest", `username="4930123"`, "CSeq: 2 INVITE") {
		t.Errorf("the INVITE sent again is not authorized with CSeq 2:\n%s", invites[1])
	}
	if err := verifyDigest(invites[1], "INVITE", "4930123", "s3cret"); err != nil {
		t.Errorf("the provider's challenge was answered wrongly: %v\n%s", err, invites[1])
	}
	if ackCSeq != "2" {
		t.Errorf("no ACK with CSeq 2 (the authorized INVITE's) reached the provider")
	}
}

var reDigestParam = regexp.MustCompile(`(\w+)="?([^",\r\n]*)"?`)

// verifyDigest checks the Proxy-Authorization of request msg (RFC 2617
// without qop, MD5) for user and password.
func verifyDigest(msg, method, user, password string) error {
	line := regexp.MustCompile(`(?m)^Proxy-Authorization: Digest (.*?)\r?$`).FindStringSubmatch(msg)
	if line == nil {
		return fmt.Errorf("no Proxy-Authorization")
	}
	p := map[string]string{}
	for _, kv := range reDigestParam.FindAllStringSubmatch(line[1], -1) {
		p[kv[1]] = kv[2]
	}
	h := func(s string) string { return fmt.Sprintf("%x", md5.Sum([]byte(s))) }
	want := h(h(user+":"+p["realm"]+":"+password) + ":" + p["nonce"] + ":" + h(method+":"+p["uri"]))
	if p["username"] != user || p["response"] != want {
		return fmt.Errorf("username %q response %q, want %q %q", p["username"], p["response"], user, want)
	}
	return nil
}

// providerSecret writes the trunk's credentials file (password s3cret).
func providerSecret(t *testing.T) string {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "p1.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return secret
}

// TestTrunkCallsAcrossSRV: the provider's domain resolves, through a test
// DNS server (hapbx runs in a mount namespace of its own whose
// /etc/resolv.conf names it), to two SIPp hosts by SRV, priority 10 then
// 20. A call out goes to the first; the first is killed; the next call
// goes to the second, and hapbx answers its 407 as the first's.
func TestTrunkCallsAcrossSRV(t *testing.T) {
	testkit.RequireSIPp(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: a mount namespace for hapbx's /etc/resolv.conf and a DNS server on port 53")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	const provider2IP, dnsIP = "127.0.3.62", "127.0.3.53"
	var providers [2]*testkit.SIPp
	for i, ip := range []string{providerIP, provider2IP} {
		providers[i] = testkit.StartSIPp(t, ip, testkit.FreePort(t, ip), "-sf", scenarioPath("trunk_provider_uas_407.xml"), "-trace_msg")
		testkit.WaitListening(t, "udp", providers[i].Addr, 3*time.Second)
	}
	port := func(p *testkit.SIPp) string { _, pt, _ := net.SplitHostPort(p.Addr); return pt }
	zone := testkit.StartDNS(t, net.JoinHostPort(dnsIP, "53"))
	zone.Set(t,
		"_sip._udp.provider.test. 60 IN SRV 10 0 "+port(providers[0])+" a.provider.test.",
		"_sip._udp.provider.test. 60 IN SRV 20 0 "+port(providers[1])+" b.provider.test.",
		"a.provider.test. 60 IN A "+providerIP,
		"b.provider.test. 60 IN A "+provider2IP,
	)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsIP+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	be := testkit.StartOptionsUAS(t, be1IP, 0, 200, "udp")
	d, sipPort, adminPort := newDaemon(t)
	writeConfig(t, d.config, sipPort, adminPort, fmt.Sprintf(`trunks:
  - name: p1
    hosts: [provider.test]
    acl: [%s/32, %s/32]
    credentials_file: %s
    user: "4930123"
    domain: provider.test
    keepalive: 1h
`, providerIP, provider2IP, providerSecret(t)), be.Addr())
	d.wrap = []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv}
	d.start(t)
	d.waitActive(t, "asterisk1")

	call := func(n int) {
		t.Helper()
		asterisk := testkit.StartSIPp(t, be1IP, testkit.FreePort(t, be1IP), "-sf", scenarioPath("trunk_backend_uac.xml"),
			"-s", "4930999", "-m", "1", "-timeout", "15s", "-timeout_error", d.sip)
		if code := asterisk.Wait(20 * time.Second); code != 0 {
			t.Fatalf("call %d out through the trunk failed (exit %d)\n%s", n, code, asterisk.Output())
		}
	}
	call(1)
	providers[0].Kill()
	call(2)
	invites := func(p *testkit.SIPp) (n int) {
		for _, m := range sippReceived(sippMessages(t, p)) {
			if strings.HasPrefix(m, "INVITE ") && strings.Contains(m, "Proxy-Authorization: Digest") {
				n++
			}
		}
		return n
	}
	if a, b := invites(providers[0]), invites(providers[1]); a != 1 || b != 1 {
		t.Errorf("authorized INVITEs: %d at the priority-10 host, %d at the priority-20 host; want 1 each (call 1 there, call 2 after its death)", a, b)
	}
	if n := zone.Queries("_sip._udp.provider.test", dns.TypeSRV); n == 0 {
		t.Errorf("hapbx never asked the test DNS server for the SRV records")
	}
}
