package proxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// TestOwnBranchAuthorized: a branch of the pair's tells whether it was the
// one sent again with a trunk's credentials (its CSeq raised), and the MAC
// covers that mark: added to a plain branch or taken from a credentialed
// one, the branch is no longer the pair's; nor is it for another key.
func TestOwnBranchAuthorized(t *testing.T) {
	p := &Proxy{}
	WithDialogSecret(twinSecret)(p)
	in := requestFrom(t, withTrunkHeader(sipRequest("INVITE", "sip:4930999@"+proxyIP, "branch-auth", "f1", ""), "p1"), be1IP+":5060")
	below := in.Via()
	plain := branchPrefix + p.branchFor(in, target{addr: providerIP + ":5060", transport: "udp", trunk: "p1"}, 0)
	authorized := branchPrefix + p.authBranchFor(in, plain)
	if authorized == branchPrefix+p.authBranchFor(in, plain+"x") {
		t.Fatal("the credentialed branch does not depend on the challenged one")
	}
	lh, nm, _ := strings.Cut(strings.TrimPrefix(authorized, branchPrefix), ".")
	plainLH, plainNM, _ := strings.Cut(strings.TrimPrefix(plain, branchPrefix), ".")
	other := &Proxy{}
	WithDialogSecret([]byte("another secret, another pair...."))(other)
	for _, c := range []struct {
		name, branch string
		p            *Proxy
		ours, auth   bool
	}{
		{"plain", plain, p, true, false},
		{"credentialed", authorized, p, true, true},
		{"mark taken away", branchPrefix + lh + "." + strings.TrimPrefix(nm, authMark), p, false, false},
		{"mark added", branchPrefix + plainLH + "." + authMark + plainNM, p, false, false},
		{"another pair's key", authorized, other, false, false},
	} {
		ours, auth := c.p.ownBranch(c.branch, below)
		if ours != c.ours || auth != c.auth {
			t.Errorf("%s (%s): ours %v authorized %v, want %v %v", c.name, c.branch, ours, auth, c.ours, c.auth)
		}
	}
}

// TestBranchMACIsHMAC: the pooled MAC is HMAC-SHA256 of the parts, each
// followed by a zero byte, whatever was computed before with the same
// pooled state: the twin, of whatever version, must make the same
// branches.
func TestBranchMACIsHMAC(t *testing.T) {
	p := &Proxy{}
	WithDialogSecret(twinSecret)(p)
	want := func(parts ...string) string {
		m := hmac.New(sha256.New, twinSecret)
		for _, s := range parts {
			m.Write([]byte(s))
			m.Write([]byte{0})
		}
		return hex.EncodeToString(m.Sum(nil))
	}
	long := strings.Repeat("x", 5000) // not kept in the pool
	for _, parts := range [][]string{
		{"hapbx-branch-n-v1", "lh", "UDP\x00host\x005060\x00z9hG4bK1\x00\x00", "10.0.0.1:5060", "udp", "", "0"},
		{"hapbx-branch-m-v1", "lh", "abcdef01", "below"},
		{long, "a"},
		{},
		{"hapbx-branch-m-v1", "lh", "abcdef01", "below"},
	} {
		if got := p.branchMAC(parts...); got != want(parts...) {
			t.Fatalf("branchMAC(%q) = %s, want %s", parts, got, want(parts...))
		}
	}
}
