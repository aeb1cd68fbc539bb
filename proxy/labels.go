package proxy

import "github.com/emiago/sipgo/sip"

// Label values from SIP messages: nothing from the network becomes a label
// as it is, so every label set stays finite however many invented methods
// or status codes arrive.

// methodLabel is the label of a request method: the method when hapbx
// handles it (the ones Listen registers), "other" for any other (methods
// are case-sensitive: "invite" is another method).
func methodLabel(m sip.RequestMethod) string {
	switch m {
	case sip.INVITE, sip.ACK, sip.BYE, sip.OPTIONS, sip.REGISTER, sip.INFO, sip.UPDATE, sip.PRACK,
		sip.REFER, sip.SUBSCRIBE, sip.NOTIFY, sip.MESSAGE, sip.PUBLISH, sip.CANCEL:
		return string(m)
	}
	return "other"
}

// codeLabel is the code label of a status code: the code for 100-699,
// "other" for anything else a peer may send.
func codeLabel(code int) string {
	if code < 100 || code > 699 {
		return "other"
	}
	return itoa(code)
}
