package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// Intake checks (like Kamailio's sanity module): what a message must
// satisfy before the proxy acts on it, so that nothing broken is forwarded
// (RFC 4475). Two layers, because sipgo's parser loses some facts:
//   - intake sees a whole message's raw bytes before sipgo parses it: a UDP
//     datagram (sanityFilter, the read filter) or a message the TCP/TLS
//     connection wrapper framed (streamIntake, conns.go). sipgo frames by
//     the last Content-Length, so duplicate Content-Lengths (request
//     smuggling towards a TCP backend), one beyond a datagram's end (RFC
//     3261 §18.3: an error, 400) and, on a stream, a missing one are only
//     visible here; octets after a datagram's body are ignored (§18.3, RFC
//     4475 dblreq) and never sent on, as sipgo cuts the body at
//     Content-Length. Such a request is rewritten to its header section
//     with a sanityMark header and no body, so that sanity answers it 400
//     like any other broken request (a response is dropped).
//   - intake also turns a request sipgo cannot parse into one it can,
//     marked for a 400 (sanity_unparsable.go), and gives an RFC 2543
//     request a synthetic branch (rfc2543.go).
//   - sanity runs on every parsed request first thing in decide.

// sanityMark is the header intake adds to a request it refuses, with the
// reason and markTag. One arriving from the network is itself refused.
const sanityMark = "X-Hapbx-Sanity"

// Reasons of hapbx_proxy_malformed_total set here (a fixed set: nothing
// from the network becomes a label).
const (
	whyContentLength = "content_length"   // UDP body shorter than Content-Length, or no number
	whyDuplicate     = "duplicate_header" // two values of a single-valued header
	whyVersion       = "sip_version"      // not SIP/2.0: 505
	whyProxyRequire  = "proxy_require"    // an option hapbx does not support: 420
	whyURIHeaders    = "ruri_headers"     // escaped headers in the Request-URI
	whyURIScheme     = "uri_scheme"       // a scheme hapbx cannot resolve: 416
	whyMethodCase    = "method_case"      // invite/ack/cancel not in upper case
	whyMark          = "sanity_mark"      // sanityMark arrived from the network
	whyRoundTrip     = "round_trip"       // sipgo took it leniently and would write it unparsable
)

// singleValued are the headers RFC 3261 §7.3.1 / §20 allow once only and
// that the proxy reads or relays.
// sanity counts them by their sipgo type, in this order.
var singleValued = [...]string{"Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type"}

// sanityFilter is the sipgo transport read filter. It only looks at UDP:
// over TCP/TLS a read is a stream chunk; the connection wrapper frames the
// stream and runs intake on each whole message (conns.go).
func (p *Proxy) sanityFilter(info sip.TransportReadProps, data []byte) ([]byte, error) {
	if !strings.EqualFold(info.Transport, "udp") {
		return data, nil
	}
	out, why := p.intake(data, false)
	if out == nil {
		// A response, or nothing to answer: dropped (nil, not an error: an
		// error stops sipgo's listener). A refusal handed on is counted by
		// decide.
		p.m.malformed.WithLabelValues(why).Inc()
		return nil, nil
	}
	return out, nil
}

// intake returns what sipgo should see of one whole message (a UDP
// datagram, or a message framed in a stream: stream): data itself when it
// passes (no copy), a request rewritten for sanity to refuse or with a
// synthetic RFC 2543 branch, or nil (dropped, counted under why by the
// caller).
func (p *Proxy) intake(data []byte, stream bool) ([]byte, string) {
	d := scanDatagram(data)
	out, why := checkDatagram(data, d, stream, p.markTag)
	if why == "" && d.suspect {
		parser := sip.NewParser()
		parser.MaxMessageLength = p.cfg.MaxMessageSize
		if _, err := parser.ParseSIP(data); err != nil {
			out, why = refusal(data, p.markTag), whyParse
		}
	}
	if why == "" && d.rfc2543 {
		out = p.give2543Branch(out, d)
	}
	return out, why
}

// datagram is what one pass over a datagram's header section finds; the
// read filter runs on every datagram, so it looks once.
type datagram struct {
	head      string // the header section (start line included), "" without its end
	response  bool
	lengths   int  // Content-Length headers
	length    int  // the last one's value
	badLength bool // one is not a number
	mark      bool // a sanityMark header came from the network
	suspect   bool // sipgo's parser may fail on it (sanity_unparsable.go)
	rfc2543   bool // a request whose top Via has no cookie branch (rfc2543.go)
	viaAt     int  // where the value of the first Via line starts in head
	viaEnd    int  // and ends
}

func scanDatagram(data []byte) datagram {
	d := datagram{response: bytes.HasPrefix(data, []byte("SIP/")), viaAt: -1, viaEnd: -1}
	if len(bytes.Trim(data, "\r\n")) == 0 {
		return d // a keep-alive
	}
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		d.suspect = !d.response
		return d
	}
	d.head = string(data[:end+2]) // one copy, looked at in place
	off := 0
	for i, line := range headerLines(d.head) {
		at := off
		off += len(line)
		if !d.response && !d.suspect {
			d.suspect = bareCR(line)
		}
		if i == 0 {
			if !d.response {
				d.suspect = d.suspect || !parseRequestLine(line[:len(line)-2]).ok
			}
			continue
		}
		k := strings.IndexByte(line, ':')
		if k < 0 {
			d.suspect = d.suspect || !d.response
			continue
		}
		name, value := strings.TrimSpace(line[:k]), line[k+1:]
		switch {
		case asciiEqualFold(name, "content-length") || asciiEqualFold(name, "l"):
			d.lengths++
			v, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil || v < 0 {
				d.badLength = true
			}
			d.length = v
			continue
		case asciiEqualFold(name, sanityMark):
			d.mark = true
			continue
		case d.viaAt < 0 && (asciiEqualFold(name, "via") || asciiEqualFold(name, "v")):
			d.viaAt, d.viaEnd = at+k+1, off
			d.rfc2543 = !d.response && !cookieBranch(value)
		}
		if !d.response && !d.suspect {
			d.suspect = headerSuspect(name, strings.TrimSpace(value))
		}
	}
	return d
}

// bareCR: a CR that is not followed by LF (sipgo's parser refuses it).
func bareCR(line string) bool {
	if j := strings.IndexByte(line, '\r'); j == len(line)-2 {
		return false // the usual: one CRLF, at the end
	}
	return strings.Count(line, "\r") != strings.Count(line, "\r\n")
}

// cookieBranch reports whether a Via value's first entry names a branch
// with the magic cookie (a cheap look: a false answer is checked with
// sipgo's parser).
func cookieBranch(value string) bool {
	first, _, _ := strings.Cut(value, ",")
	_, branch, ok := strings.Cut(first, ";branch="+sip.RFC3261BranchMagicCookie)
	return ok && len(branch) > 0 && !strings.ContainsAny(branch[:1], "; \t\r\n,")
}

// checkDatagram returns data unchanged when its Content-Length (one at
// most) fits in the datagram, else the refusal: the header section without
// Content-Length and body plus the mark, or nil for a response. In a
// stream (data framed by conns.go's framer) the Content-Length must be
// there, once, and a number: the body is the one it frames. Data that is
// not a header section is left to sipgo's parser.
func checkDatagram(data []byte, d datagram, stream bool, tag string) ([]byte, string) {
	if d.head == "" {
		return data, ""
	}
	body := data[len(d.head)+2:]
	var why string
	switch {
	case d.mark:
		why = whyMark
	case d.lengths > 1:
		why = whyDuplicate
	case d.badLength || (d.lengths == 1 && d.length > len(body)) || (stream && d.lengths == 0):
		why = whyContentLength
	default:
		return data, ""
	}
	if d.response {
		return nil, why
	}
	out := make([]byte, 0, len(d.head)+64)
	for i, line := range headerLines(d.head) {
		if name, _, ok := strings.Cut(line, ":"); ok && i > 0 {
			if name = strings.TrimSpace(name); asciiEqualFold(name, "content-length") || asciiEqualFold(name, "l") || asciiEqualFold(name, sanityMark) {
				continue
			}
		}
		out = append(out, line...)
	}
	return markedEnd(out, why, tag), why
}

// markedEnd ends a rewritten request's header section with the mark
// (why, and the tag that tells sanity it was written here) and no body.
func markedEnd(out []byte, why, tag string) []byte {
	return append(out, sanityMark+": "+why+";"+tag+"\r\nContent-Length: 0\r\n\r\n"...)
}

// markTag is the tag of the marks intake writes: unpredictable from
// outside, so no peer (a backend over a connection hapbx opened, which no
// intake sees) can have its request refused for a reason of its choosing.
func markTag(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("sanity mark"))
	return hex.EncodeToString(m.Sum(nil))[:16]
}

// headerLines yields the lines of a header section (each with its CRLF),
// a header's continuation lines with it, as sipgo unfolds them (not the
// start line's).
func headerLines(head string) func(yield func(int, string) bool) {
	return func(yield func(int, string) bool) {
		for i := 0; len(head) > 0; i++ {
			n := 0
			for {
				e := strings.Index(head[n:], "\r\n")
				if e < 0 {
					n = len(head)
					break
				}
				n += e + 2
				if i == 0 || n >= len(head) || (head[n] != ' ' && head[n] != '\t') {
					break
				}
			}
			if !yield(i, head[:n]) {
				return
			}
			head = head[n:]
		}
	}
}

// asciiEqualFold is sipgo's header name comparison: ASCII letters only
// fold (strings.EqualFold also folds, say, U+017F into s).
func asciiEqualFold[T string | []byte](a T, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// sanity returns the refusal of a request that must not be processed:
// code 0 when it passes. It may restore the method's case (sipgo upper-cases
// the request line's method; the CSeq keeps it as sent). It runs on every
// request, so it walks the headers once (sipgo's GetHeaders lower-cases
// every header name on each call).
func (p *Proxy) sanity(req *sip.Request) (code int, reason, why string, hdrs []sip.Header) {
	var (
		counts       [len(singleValued)]int
		mark         sip.Header
		marks        int
		proxyRequire []sip.Header
	)
	for _, h := range req.Headers() {
		switch h.(type) {
		case *sip.CallIDHeader:
			counts[0]++
		case *sip.CSeqHeader:
			counts[1]++
		case *sip.FromHeader:
			counts[2]++
		case *sip.ToHeader:
			counts[3]++
		case *sip.MaxForwardsHeader:
			counts[4]++
		case *sip.ContentLengthHeader:
			counts[5]++
		case *sip.ContentTypeHeader:
			counts[6]++
		default:
			switch name := h.Name(); {
			case asciiEqualFold(name, sanityMark):
				if marks++; mark == nil {
					mark = h
				}
			case asciiEqualFold(name, "Proxy-Require"):
				proxyRequire = append(proxyRequire, h)
			}
		}
	}
	if mark != nil {
		why = whyMark
		if v, tag, ok := strings.Cut(mark.Value(), ";"); ok && tag == p.markTag && marks == 1 {
			why = v // intake wrote it (once)
		}
		switch why {
		case whyContentLength, whyDuplicate:
			return 400, "Bad Request (Content-Length)", why, nil
		case whyParse:
			return 400, "Bad Request (malformed)", why, nil
		case whyURIScheme:
			return 416, "Unsupported URI Scheme", why, nil
		}
		return 400, "Bad Request", whyMark, nil
	}
	if req.SipVersion != "SIP/2.0" {
		return 505, "Version Not Supported", whyVersion, nil
	}
	for i, name := range singleValued {
		if counts[i] > 1 {
			return 400, "Bad Request (duplicate " + name + ")", whyDuplicate, nil
		}
	}
	if cs := req.CSeq(); cs != nil && cs.MethodName != req.Method && strings.EqualFold(string(cs.MethodName), string(req.Method)) {
		switch req.Method {
		case sip.INVITE, sip.ACK, sip.CANCEL:
			// sipgo already runs a transaction of the upper-case method;
			// "invite" is another method (RFC 3261 §7.1), refused rather
			// than mixed up with it.
			return 400, "Bad Request (method case)", whyMethodCase, nil
		}
		req.Method = cs.MethodName // methods are case-sensitive: sent on as written
	}
	if !writtenParses(req) {
		// sipgo's parser accepts some URIs and Vias it then writes in a
		// form it cannot read back: never send such a request on.
		return 400, "Bad Request (unparsable once written)", whyRoundTrip, nil
	}
	if len(req.Recipient.Headers) > 0 {
		// RFC 4475 §3.1.2.10: they must not be sent on; refusing is allowed.
		return 400, "Bad Request (headers in Request-URI)", whyURIHeaders, nil
	}
	var unsupported []string
	for _, h := range proxyRequire {
		for _, opt := range strings.Split(h.Value(), ",") {
			if opt = strings.TrimSpace(opt); opt != "" {
				unsupported = append(unsupported, opt)
			}
		}
	}
	if len(unsupported) > 0 && !req.IsAck() && !req.IsCancel() {
		// hapbx supports no option as a proxy (RFC 3261 §16.3 step 5).
		return 420, "Bad Extension", whyProxyRequire, []sip.Header{sip.NewHeader("Unsupported", strings.Join(unsupported, ", "))}
	}
	if s := strings.ToLower(req.Recipient.Scheme); s != "sip" && s != "sips" && req.Route() == nil && p.fromBackend(req) != "" {
		// A backend's request with no Route is resolved by hapbx itself.
		return 416, "Unsupported URI Scheme", whyURIScheme, nil
	}
	return 0, "", "", nil
}

// streamIntake is intake for a message conns.go framed in a TCP or TLS
// stream. A Content-Length missing, repeated or not a number leaves no
// certain end to the message: it is refused and the connection closes
// (unframed) once the refusal is answered.
func (p *Proxy) streamIntake(msg []byte) ([]byte, bool) {
	out, why := p.intake(msg, true)
	if out == nil {
		p.m.malformed.WithLabelValues(why).Inc()
	}
	return out, why == whyContentLength || why == whyDuplicate
}
