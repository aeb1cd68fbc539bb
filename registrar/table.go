package registrar

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// forgetAfter is how long an AOR without any record is still "known" (480
// rather than 404 to callers).
const forgetAfter = 24 * time.Hour

type entry struct {
	rec   Record
	ckey  string
	cuser string // user part of the Contact URI
}

type aorEntry struct {
	recs       []entry
	live       int
	emptySince time.Time
}

// table is the binding state: AOR key -> records (bindings and tombstones).
// It is not safe for concurrent use; the Registrar locks around it.
type table struct {
	domains map[string]bool // nil: every domain is local
	aors    map[string]*aorEntry
	// byContactUser finds an AOR from the user part of one of its Contacts
	// when that differs from the AOR's user (baresip registers
	// "203-0x55d8c1e0" for 203): Asterisk dialling a stored contact sends
	// that user in the request URI. Cleaned by purge.
	byContactUser map[string]string
	bindings      int // live (not deleted) records, expired or not
	liveAORs      int // AORs with at least one live record
	tombs         int
}

// newTable keys AORs in domains, and in localHosts (the proxy's own
// addresses and names), by their user part. Empty domains makes every
// domain local, whatever localHosts says.
func newTable(domains, localHosts []string) *table {
	t := &table{aors: make(map[string]*aorEntry), byContactUser: make(map[string]string)}
	if len(domains) > 0 {
		t.domains = make(map[string]bool, len(domains)+len(localHosts))
		for _, d := range slices.Concat(domains, localHosts) {
			if h := hostKey(d); h != "" {
				t.domains[h] = true
			}
		}
	}
	return t
}

// hostKey is the spelling of a host used to decide whether it is local:
// lower case, IPv6 without brackets or zone, IPv4-mapped addresses as IPv4,
// so "[2001:DB8::0001]" in a Request-URI matches "2001:db8::1" given by the
// caller. Unspecified addresses (0.0.0.0, ::) are nobody's: "".
func hostKey(h string) string {
	h = strings.TrimSpace(h)
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if a, err := netip.ParseAddr(h); err == nil {
		a = a.Unmap().WithZone("")
		if a.IsUnspecified() {
			return ""
		}
		return a.String()
	}
	return lowerASCII(h)
}

// key maps any AOR spelling to the table key: the user part for local
// domains, user@domain otherwise.
func (t *table) key(aor string) (string, bool) {
	user, host, ok := splitAOR(aor)
	if !ok {
		return "", false
	}
	if host == "" {
		return user, true
	}
	if t.domains == nil || t.domains[hostKey(host)] {
		return user, true
	}
	return user + "@" + lowerASCII(host), true
}

func (e *aorEntry) find(ckey string) int {
	for i := range e.recs {
		if e.recs[i].ckey == ckey {
			return i
		}
	}
	return -1
}

// apply merges r into the table. It returns whether r was taken and
// whether it replaced a live (not deleted, unexpired) binding.
//
// Records expired at now are refused, and an expired record held is no
// obstacle: the state is the maximum over the unexpired inputs, whatever
// their order, repetition or interleaving with purges. A tombstone outlives
// every older version of its binding (it is kept max_expires), so an
// expired tombstone can only "lose" to something already expired too.
func (t *table) apply(r Record, ckey string, now time.Time) (taken bool, prevLive bool) {
	if !r.Binding.Expires.After(now) {
		return false, false
	}
	k, ok := t.key(r.Binding.AOR)
	if !ok {
		return false, false
	}
	e := t.aors[k]
	if e == nil {
		e = &aorEntry{emptySince: now}
		t.aors[k] = e
	}
	i := e.find(ckey)
	if i >= 0 {
		old := e.recs[i].rec
		if old.Binding.Expires.After(now) && !r.wins(old) {
			return false, false
		}
		t.count(e, old, -1)
		e.recs[i].rec = r
		t.count(e, r, +1)
		t.indexContactUser(k, r, e.recs[i].cuser)
		return true, !old.Deleted && old.Binding.Expires.After(now)
	}
	cuser, _, _ := splitAOR(r.Binding.Contact)
	e.recs = append(e.recs, entry{rec: r, ckey: ckey, cuser: cuser})
	t.count(e, r, +1)
	t.indexContactUser(k, r, cuser)
	return true, false
}

func (t *table) indexContactUser(key string, r Record, cuser string) {
	if r.Deleted || cuser == "" {
		return
	}
	if user, _, _ := splitAOR(r.Binding.AOR); cuser != user {
		t.byContactUser[cuser] = key
	}
}

// byContact resolves a user part that is not an AOR key through the
// contact-user index; it returns the AOR entry or nil.
func (t *table) byContact(cuser string) *aorEntry {
	k, ok := t.byContactUser[cuser]
	if !ok {
		return nil
	}
	return t.aors[k]
}

func (t *table) count(e *aorEntry, r Record, d int) {
	if r.Deleted {
		t.tombs += d
		return
	}
	t.bindings += d
	before := e.live
	e.live += d
	switch {
	case before == 0 && e.live > 0:
		t.liveAORs++
	case before > 0 && e.live == 0:
		t.liveAORs--
	}
}

// purge drops records whose Expires has passed and forgets AORs empty for
// forgetAfter. It returns the dropped records.
func (t *table) purge(now time.Time) []Record {
	var out []Record
	for k, e := range t.aors {
		if len(e.recs) > 0 {
			e.recs = slices.DeleteFunc(e.recs, func(en entry) bool {
				if en.rec.Binding.Expires.After(now) {
					return false
				}
				out = append(out, en.rec)
				t.count(e, en.rec, -1)
				return true
			})
			if len(e.recs) == 0 {
				e.recs = nil
				e.emptySince = now
			}
			continue
		}
		if now.Sub(e.emptySince) >= forgetAfter {
			delete(t.aors, k)
		}
	}
	for cu, k := range t.byContactUser {
		e := t.aors[k]
		keep := false
		if e != nil {
			for _, en := range e.recs {
				if en.cuser == cu && !en.rec.Deleted {
					keep = true
					break
				}
			}
		}
		if !keep {
			delete(t.byContactUser, cu)
		}
	}
	return out
}

// markKnown makes an AOR known without records (loaded expired bindings).
func (t *table) markKnown(aor string, now time.Time) {
	k, ok := t.key(aor)
	if !ok {
		return
	}
	if t.aors[k] == nil {
		t.aors[k] = &aorEntry{emptySince: now}
	}
}

// liveBindings appends the unexpired bindings of entry e, best first:
// highest q, then most recently updated.
func liveBindings(dst []Binding, e *aorEntry, now time.Time) []Binding {
	start := len(dst)
	for i := range e.recs {
		r := &e.recs[i].rec
		if !r.Deleted && r.Binding.Expires.After(now) {
			dst = append(dst, r.Binding)
		}
	}
	if len(dst)-start > 1 {
		slices.SortStableFunc(dst[start:], func(a, b Binding) int {
			if a.Q != b.Q {
				if a.Q > b.Q {
					return -1
				}
				return 1
			}
			return b.Updated.Compare(a.Updated)
		})
	}
	return dst
}
