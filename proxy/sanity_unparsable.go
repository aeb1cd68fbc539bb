package proxy

import (
	"bytes"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// A datagram sipgo cannot parse is dropped by sipgo without an answer, and
// the sender retransmits it to no end. RFC 4475 wants 400 (416 for a
// Request-URI scheme nobody here resolves) when an answer can be addressed.
// sanityFilter cannot afford a second parse of every datagram, so
// unparsableSuspect first looks for what makes sipgo's parser fail (a
// start line it rejects, a header line without colon, a bare CR, a CSeq or
// Max-Forwards out of range, unbalanced quotes or brackets, a URI without a
// scheme or with a port that is not a number...). Only a suspect is parsed
// in the filter; if it does fail, refusal builds the request to answer from
// the lines that address a response (RFC 3261 §8.2.6: Via, From, To,
// Call-ID, CSeq), each kept only if sipgo parses it, under a parseable
// request line and with sanityMark. The response goes where any hapbx
// response goes (RFC 3261 §18.2.2: the packet's source address, at the
// port its Via or rport names), no further than the answer to a parseable
// bad request, and carries only lines of the request. Without a usable
// Via, or for an ACK or a response, the datagram is dropped and counted. A
// failure the checks miss is dropped by sipgo as before.

// whyParse is the reason sipgo's own parse failures are counted under
// (logbridge.go).
const whyParse = "parse"

// unparsableSuspect reports whether sipgo's parser may fail on data, a
// request's datagram. False means it parses, as far as the checks go
// (scanDatagram makes them).
func unparsableSuspect(data []byte) bool { return scanDatagram(data).suspect }

// requestLine is a request line as sipgo splits it: method, one space,
// Request-URI, one space, a version starting with SIP.
type requestLine struct {
	method, uri string
	shaped      bool // split as above
	ok          bool // and sipgo accepts the Request-URI
}

func parseRequestLine(line string) requestLine {
	var rl requestLine
	method, rest, ok1 := strings.Cut(line, " ")
	uri, version, ok2 := strings.Cut(rest, " ")
	rl.method, rl.uri = method, uri
	if !ok1 || !ok2 || len(version) < 3 || strings.Contains(version, " ") || !sip.UriIsSIP(version[:3]) {
		return rl
	}
	rl.shaped = true
	var u sip.Uri
	rl.ok = sip.ParseUri(uri, &u) == nil && !u.Wildcard
	return rl
}

// headerSuspect looks at the headers sipgo parses (Content-Length is
// checkDatagram's) for what its parsers refuse.
func headerSuspect(name, value string) bool {
	switch {
	case asciiEqualFold(name, "cseq"):
		num, method, ok := strings.Cut(value, " ")
		n, err := strconv.ParseUint(num, 10, 32)
		return !ok || err != nil || n > 1<<31-1 || strings.TrimSpace(method) == ""
	case asciiEqualFold(name, "max-forwards"):
		_, err := strconv.ParseUint(value, 10, 32)
		return err != nil
	case asciiEqualFold(name, "call-id"), asciiEqualFold(name, "i"), asciiEqualFold(name, "content-type"), asciiEqualFold(name, "c"):
		return value == ""
	case asciiEqualFold(name, "via"), asciiEqualFold(name, "v"):
		rest, ok := strings.CutPrefix(value, "SIP/2.0/")
		return !ok || strings.IndexAny(rest, " \t") < 1 || strings.ContainsAny(value, ",[")
	case asciiEqualFold(name, "contact"), asciiEqualFold(name, "m"):
		return value != "*" && addressSuspect(value, true)
	case asciiEqualFold(name, "from"), asciiEqualFold(name, "f"), asciiEqualFold(name, "to"), asciiEqualFold(name, "t"),
		asciiEqualFold(name, "route"), asciiEqualFold(name, "record-route"), asciiEqualFold(name, "refer-to"),
		asciiEqualFold(name, "r"), asciiEqualFold(name, "referred-by"), asciiEqualFold(name, "b"):
		return addressSuspect(value, false)
	}
	return false
}

// addressSuspect: a name-addr or addr-spec other than [plain or "quoted"
// display name] <URI>[;params] or URI[;params] (a comma, where it splits
// a Contact, is left to the parser too).
func addressSuspect(v string, contact bool) bool {
	if v == "" || strings.ContainsRune(v, '\\') || strings.Count(v, `"`)%2 != 0 {
		return true
	}
	uri := v
	if lt := strings.IndexByte(v, '<'); lt >= 0 {
		dn := strings.TrimSpace(v[:lt])
		if strings.Contains(dn, `"`) {
			if len(dn) < 2 || dn[0] != '"' || dn[len(dn)-1] != '"' || strings.Count(dn, `"`) != 2 {
				return true
			}
		} else if strings.ContainsAny(dn, ";,") {
			return true
		}
		gt := strings.IndexByte(v[lt:], '>')
		if gt < 0 {
			return true
		}
		uri = v[lt+1 : lt+gt]
		if contact && strings.Contains(v[lt+gt:], ",") {
			return true
		}
	} else {
		if strings.ContainsAny(v, `",`) {
			return true
		}
		uri, _, _ = strings.Cut(v, ";")
	}
	return uriSuspect(uri)
}

// uriSuspect: sipgo's URI parser wants a scheme of letters; for sip and
// sips, no IPv6 reference here (left to the parser) and a numeric port.
func uriSuspect(uri string) bool {
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok || scheme == "" || len(uri) < 3 {
		return true
	}
	for _, c := range scheme {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return true
		}
	}
	if !strings.EqualFold(scheme, "sip") && !strings.EqualFold(scheme, "sips") {
		return false
	}
	if strings.ContainsAny(rest, "[]") {
		return true
	}
	if _, host, ok := strings.Cut(rest, "@"); ok {
		rest = host
	}
	if i := strings.IndexAny(rest, ";?"); i >= 0 {
		rest = rest[:i]
	}
	if rest == "*" {
		return true
	}
	if _, port, ok := strings.Cut(rest, ":"); ok {
		if _, err := strconv.Atoi(port); err != nil {
			return true
		}
	}
	return false
}

// refusal builds the request sanity answers for a datagram sipgo cannot
// parse: nil when there is nothing to answer.
func refusal(data []byte, tag string) []byte {
	head := data
	if end := bytes.Index(data, []byte("\r\n\r\n")); end >= 0 {
		head = data[:end+2]
	} else if !bytes.HasSuffix(head, []byte("\r\n")) {
		head = append(append([]byte{}, head...), "\r\n"...)
	}
	var (
		start        string
		why          = whyParse
		kept         = map[string]bool{}
		out          []byte
		parseHeaders = sip.HeadersParser(sip.DefaultHeadersParser())
	)
	for i, line := range headerLines(string(head)) {
		text := strings.TrimRight(line, "\r\n")
		if i == 0 {
			rl := parseRequestLine(text)
			switch {
			case rl.ok:
				start = text
			case !isToken(rl.method):
				return nil
			default:
				scheme, _, _ := strings.Cut(rl.uri, ":")
				if rl.shaped && isScheme(scheme) && !strings.EqualFold(scheme, "sip") && !strings.EqualFold(scheme, "sips") {
					// RFC 4475 §3.3.2: a scheme hapbx cannot even read.
					why = whyURIScheme
				}
				start = rl.method + " sip:invalid.invalid SIP/2.0"
			}
			if strings.EqualFold(rl.method, "ACK") {
				return nil // never answered
			}
			continue
		}
		name, _, _ := strings.Cut(text, ":")
		top := !kept["via"] && (asciiEqualFold(strings.TrimSpace(name), "via") || asciiEqualFold(strings.TrimSpace(name), "v"))
		hs, err := parseHeaders.ParseHeader(nil, []byte(text))
		if err != nil || len(hs) == 0 {
			if top {
				return nil // the top Via is the broken part: nobody to answer
			}
			continue
		}
		key := strings.ToLower(hs[0].Name())
		switch key {
		case "via", "from", "to", "call-id", "cseq":
		default:
			continue
		}
		if kept[key] {
			continue
		}
		kept[key] = true
		out = append(out, line...)
	}
	if !kept["via"] {
		return nil
	}
	msg := append([]byte(start+"\r\n"), out...)
	msg = markedEnd(msg, why, tag)
	if _, err := sip.ParseMessage(msg); err != nil {
		return nil
	}
	return msg
}

// isToken: a method as RFC 3261 §25.1 spells a token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-.!%*_+`'~", c)) {
			return false
		}
	}
	return true
}

// isScheme: RFC 3986 §3.1.
func isScheme(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
