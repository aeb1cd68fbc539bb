package registrar

import (
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// grant returns a copy of the backend's 2xx res that states the lifetimes
// hapbx keeps, so that a phone refreshes before hapbx forgets it: the
// backend's grant capped at max_expires (RFC 3261 10.3 step 8: every
// Contact with its expires). set holds the bindings this REGISTER stored
// (granted Expires-Updated, the exact whole seconds they live from the
// store), live the AOR's other bindings (their remaining whole seconds at
// now). A Contact hapbx does not hold is left as the backend wrote it; a
// binding stored from a 2xx without Contact list gets its Contact added.
// An Expires header, if any, is set to the shortest lifetime granted by
// this REGISTER, for phones that read only that.
func grant(res *sip.Response, set, live []Binding, now time.Time) *sip.Response {
	out := res.Clone()
	secs := make(map[string]int64, len(set)+len(live))
	for _, b := range live {
		secs[contactKeyString(b.Contact)] = max(int64(b.Remaining(now)/time.Second), 1)
	}
	var shortest int64
	for i, b := range set {
		s := int64(b.Expires.Sub(b.Updated) / time.Second)
		secs[contactKeyString(b.Contact)] = s
		if i == 0 || s < shortest {
			shortest = s
		}
	}
	listed := make(map[string]bool, len(set))
	for _, h := range out.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.Wildcard {
			continue
		}
		k := contactKey(&c.Address)
		if s, ok := secs[k]; ok {
			setExpiresParam(c, s)
			listed[k] = true
		}
	}
	for _, b := range set {
		k := contactKeyString(b.Contact)
		if listed[k] {
			continue
		}
		if c := contactHeader(b.Contact, secs[k]); c != nil {
			out.AppendHeader(c)
			listed[k] = true
		}
	}
	if h := out.GetHeader("Expires"); h != nil && len(set) > 0 {
		out.ReplaceHeader(sip.NewHeader(h.Name(), strconv.FormatInt(shortest, 10)))
	}
	return out
}

// contactHeader is a Contact header for the stored contact with expires
// s; nil when contact does not parse.
func contactHeader(contact string, s int64) *sip.ContactHeader {
	c := &sip.ContactHeader{}
	if _, err := sip.ParseAddressValue("<"+contact+">", &c.Address, &c.Params); err != nil {
		return nil
	}
	setExpiresParam(c, s)
	return c
}

// setExpiresParam sets c's expires parameter to s, whatever the spelling
// of the one it had.
func setExpiresParam(c *sip.ContactHeader, s int64) {
	kept := c.Params[:0:0]
	for _, kv := range c.Params {
		if !strings.EqualFold(kv.K, "expires") {
			kept = append(kept, kv)
		}
	}
	c.Params = append(kept, sip.HeaderKV{K: "expires", V: strconv.FormatInt(s, 10)})
}
