package trunk

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestACLMatch(t *testing.T) {
	a, err := NewACL([]Config{
		{Name: "wide", ACL: []string{"203.0.113.0/24", "2001:db8::/32"}},
		{Name: "narrow", ACL: []string{"203.0.113.128/25", "2001:db8:1::/48"}},
		{Name: "single", ACL: []string{"203.0.113.200"}},
		{Name: "literal", Hosts: []string{"198.51.100.7:5070", "sip.example.test"}},
		{Name: "twice", ACL: []string{"192.0.2.0/24", "192.0.2.0/24"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]string{
		"203.0.113.1":            "wide",
		"203.0.113.129":          "narrow",
		"203.0.113.200":          "single", // the most specific wins
		"::ffff:203.0.113.200":   "single", // a mapped v4 source is the v4 address
		"203.0.114.1":            "",
		"198.51.100.7":           "literal", // no acl: the hosts' addresses
		"198.51.100.8":           "",
		"2001:db8:2::1":          "wide",
		"2001:db8:1:ffff::1":     "narrow",
		"2001:db9::1":            "",
		"192.0.2.99":             "twice",
		"::ffff:203.0.114.1":     "",
		"fe80::1":                "",
		"0.0.0.0":                "",
		"255.255.255.255":        "",
		"::":                     "",
		"2001:db8:ffff:ffff::ff": "wide",
	} {
		got, ok := a.Match(netip.MustParseAddr(src))
		if got != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", src, got, ok, want)
		}
	}
}

func TestACLSamePrefixTwoTrunks(t *testing.T) {
	_, err := NewACL([]Config{{Name: "a", ACL: []string{"10.0.0.0/8"}}, {Name: "b", ACL: []string{"10.0.0.0/8"}}})
	if err == nil || !strings.Contains(err.Error(), `10.0.0.0/8 is in the ACL of trunks "a" and "b"`) {
		t.Errorf("err = %v", err)
	}
}

// BenchmarkACLMatch: 100 trunks, each with a /24, a /28 and a single
// address; sources inside and outside.
func BenchmarkACLMatch(b *testing.B) {
	var cs []Config
	for i := range 100 {
		cs = append(cs, Config{Name: fmt.Sprint("t", i), ACL: []string{
			fmt.Sprintf("10.%d.0.0/24", i), fmt.Sprintf("10.%d.1.16/28", i), fmt.Sprintf("10.%d.2.1", i),
		}})
	}
	a, err := NewACL(cs)
	if err != nil {
		b.Fatal(err)
	}
	srcs := []netip.Addr{netip.MustParseAddr("10.50.1.20"), netip.MustParseAddr("10.99.2.1"), netip.MustParseAddr("192.0.2.1")}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a.Match(srcs[i%len(srcs)])
	}
}
