package trunk

import (
	"fmt"
	"net/netip"
	"slices"
)

// ACL tells which trunk a request's source address belongs to. It is
// asked for every request, so a match is a few map lookups (one per
// distinct prefix length configured) and allocates nothing.
//
// When networks of two trunks overlap, the most specific (longest) prefix
// wins: a provider's single address inside another provider's network is
// that provider's. The same prefix in two trunks is refused by NewACL.
type ACL struct {
	v4, v6 table
}

// table holds the prefixes of one address family by length, longest
// first.
type table struct {
	lens  []int
	names []map[netip.Prefix]string // names[i]: prefixes of length lens[i]
}

// NewACL builds the ACL of trunks (each one's Config.Prefixes).
func NewACL(trunks []Config) (*ACL, error) {
	a := &ACL{}
	owner := map[netip.Prefix]string{}
	for _, t := range trunks {
		for _, p := range t.Prefixes() {
			if o, dup := owner[p]; dup && o != t.Name {
				return nil, fmt.Errorf("%s is in the ACL of trunks %q and %q", p, o, t.Name)
			}
			owner[p] = t.Name
			tb := &a.v6
			if p.Addr().Is4() {
				tb = &a.v4
			}
			tb.add(p, t.Name)
		}
	}
	return a, nil
}

func (tb *table) add(p netip.Prefix, name string) {
	i, found := slices.BinarySearchFunc(tb.lens, p.Bits(), func(l, bits int) int { return bits - l })
	if !found {
		tb.lens = slices.Insert(tb.lens, i, p.Bits())
		tb.names = slices.Insert(tb.names, i, map[netip.Prefix]string{})
	}
	tb.names[i][p] = name
}

// Match returns the trunk whose ACL holds src (the most specific prefix
// when several do).
func (a *ACL) Match(src netip.Addr) (name string, ok bool) {
	src = src.Unmap()
	tb := &a.v6
	if src.Is4() {
		tb = &a.v4
	}
	for i, l := range tb.lens {
		p, err := src.Prefix(l)
		if err != nil {
			continue
		}
		if n, ok := tb.names[i][p]; ok {
			return n, true
		}
	}
	return "", false
}

// Prefixes returns the trunk's ACL: its acl entries, or with none the IP
// addresses among its hosts. Entries that do not parse (Validate reports
// them) are left out.
func (c Config) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range c.ACL {
		if p, err := ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	if len(c.ACL) > 0 {
		return out
	}
	for _, s := range c.Hosts {
		if h, err := ParseHost(s); err == nil && h.Literal() {
			out = append(out, netip.PrefixFrom(h.Addr, h.Addr.BitLen()))
		}
	}
	return out
}
