package media

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"
)

// maxStreams caps the m= lines of one call (audio, video, a few more).
const maxStreams = 8

// streamInfo is what the relay needs from one m= line of a peer's SDP.
type streamInfo struct {
	rtp, rtcp netip.AddrPort // where the peer wants media; invalid when held or disabled
	hold      bool           // c=0.0.0.0 (RFC 2543 hold): endpoint not changed
	disabled  bool           // m= port 0
	clock     uint32         // RTP clock rate of the first format, for jitter
}

// parseSDP parses body and extracts one streamInfo per m= line. Anything the
// relay cannot anchor (no connection address, IPv6, multicast) is ErrBadSDP.
func parseSDP(body []byte) (*sdp.SessionDescription, []streamInfo, error) {
	sd := &sdp.SessionDescription{}
	if err := sd.Unmarshal(body); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSDP, err)
	}
	if len(sd.MediaDescriptions) == 0 {
		return nil, nil, fmt.Errorf("%w: no m= line", ErrBadSDP)
	}
	if len(sd.MediaDescriptions) > maxStreams {
		// Each m= line costs two port pairs: one body must not drain the pool.
		return nil, nil, fmt.Errorf("%w: %d m= lines, at most %d", ErrBadSDP, len(sd.MediaDescriptions), maxStreams)
	}
	var sessAddr netip.Addr
	if ci := sd.ConnectionInformation; ci != nil {
		a, err := connAddr(ci)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: session c= line: %w", ErrBadSDP, err)
		}
		sessAddr = a
	}
	infos := make([]streamInfo, len(sd.MediaDescriptions))
	for i, md := range sd.MediaDescriptions {
		in := &infos[i]
		port := md.MediaName.Port.Value
		if port < 0 || port > 65535 {
			return nil, nil, fmt.Errorf("%w: m= line %d: port %d out of range", ErrBadSDP, i, port)
		}
		if port == 0 {
			in.disabled = true
			continue
		}
		addr := sessAddr
		if md.ConnectionInformation != nil {
			a, err := connAddr(md.ConnectionInformation)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: m= line %d c= line: %w", ErrBadSDP, i, err)
			}
			addr = a
		}
		if !addr.IsValid() {
			return nil, nil, fmt.Errorf("%w: m= line %d has no connection address", ErrBadSDP, i)
		}
		if addr.IsUnspecified() {
			in.hold = true
			continue
		}
		in.rtp = netip.AddrPortFrom(addr, uint16(port))
		in.rtcp = netip.AddrPortFrom(addr, uint16(port+1))
		if v, ok := md.Attribute("rtcp"); ok {
			rp, ra, err := parseRTCPAttr(v)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: m= line %d a=rtcp:%s: %w", ErrBadSDP, i, v, err)
			}
			if !ra.IsValid() {
				ra = addr
			}
			in.rtcp = netip.AddrPortFrom(ra, rp)
		}
		in.clock = clockRate(md)
	}
	return sd, infos, nil
}

func connAddr(ci *sdp.ConnectionInformation) (netip.Addr, error) {
	if ci.NetworkType != "IN" {
		return netip.Addr{}, fmt.Errorf("network type %q not supported", ci.NetworkType)
	}
	if ci.AddressType != "IP4" {
		return netip.Addr{}, fmt.Errorf("address type %q not supported", ci.AddressType)
	}
	if ci.Address == nil {
		return netip.Addr{}, fmt.Errorf("no address")
	}
	a, err := netip.ParseAddr(ci.Address.Address)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("address %q is not an IPv4 address", ci.Address.Address)
	}
	if a.IsMulticast() || ci.Address.TTL != nil || ci.Address.Range != nil {
		return netip.Addr{}, fmt.Errorf("multicast address %q not supported", ci.Address.Address)
	}
	return a, nil
}

// parseRTCPAttr parses RFC 3605 "port [IN IP4 addr]".
func parseRTCPAttr(v string) (uint16, netip.Addr, error) {
	f := strings.Fields(v)
	if len(f) != 1 && len(f) != 4 {
		return 0, netip.Addr{}, fmt.Errorf("want \"port [IN IP4 addr]\"")
	}
	p, err := strconv.ParseUint(f[0], 10, 16)
	if err != nil || p == 0 {
		return 0, netip.Addr{}, fmt.Errorf("bad port %q", f[0])
	}
	if len(f) == 1 {
		return uint16(p), netip.Addr{}, nil
	}
	if f[1] != "IN" || f[2] != "IP4" {
		return 0, netip.Addr{}, fmt.Errorf("only IN IP4 supported")
	}
	a, err := netip.ParseAddr(f[3])
	if err != nil || !a.Is4() {
		return 0, netip.Addr{}, fmt.Errorf("bad address %q", f[3])
	}
	return uint16(p), a, nil
}

// staticClock holds RFC 3551 clock rates of static payload types that are not 8000.
var staticClock = map[int]uint32{6: 16000, 10: 44100, 11: 44100, 14: 90000, 16: 11025, 17: 22050, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000, 33: 90000, 34: 90000}

func clockRate(md *sdp.MediaDescription) uint32 {
	if len(md.MediaName.Formats) == 0 {
		return 8000
	}
	pt, err := strconv.Atoi(md.MediaName.Formats[0])
	if err != nil {
		return 8000
	}
	for _, a := range md.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		ps, rest, ok := strings.Cut(a.Value, " ")
		if !ok || ps != md.MediaName.Formats[0] {
			continue
		}
		_, rate, _ := strings.Cut(rest, "/")
		rate, _, _ = strings.Cut(rate, "/")
		if r, err := strconv.ParseUint(rate, 10, 32); err == nil && r > 0 {
			return uint32(r)
		}
	}
	if r, ok := staticClock[pt]; ok {
		return r
	}
	return 8000
}

// iceAttrs are the ICE (RFC 8839) attributes rewriteSDP removes: the relay
// is the media endpoint for both legs, and candidates naming a phone would
// let the other side route around it.
var iceAttrs = map[string]bool{
	"candidate": true, "remote-candidates": true, "end-of-candidates": true,
	"ice-ufrag": true, "ice-pwd": true, "ice-options": true, "ice-lite": true,
	"ice-mismatch": true, "ice-pacing": true,
}

// rewriteSDP points every m= line of sd at relay:ports[i] (RTCP at +1) and
// replaces the origin and connection addresses, so the receiver of the
// result sees only the relay. Held (c=0.0.0.0) lines keep 0.0.0.0 so hold
// still means hold on the other side, but their m= port and a=rtcp name the
// relay's port pair, which the session keeps. Disabled (port 0) lines stay
// disabled, lose a=rtcp and have their c= pointed at the relay. ICE
// attributes are removed everywhere. a=rtcp-mux is removed so both legs send
// RTCP to the separate RTCP port the relay listens on: RFC 5761 uses mux only
// when offer and answer both carry it, and the relay drops RTCP arriving on
// an RTP port. Codecs are untouched.
func rewriteSDP(sd *sdp.SessionDescription, infos []streamInfo, relay netip.Addr, ports []int) ([]byte, error) {
	ip := relay.String()
	// The origin's address only names the session's creator: any type
	// (IP6 included) becomes the relay's so no phone address is left.
	sd.Origin.NetworkType, sd.Origin.AddressType, sd.Origin.UnicastAddress = "IN", "IP4", ip
	if ci := sd.ConnectionInformation; ci != nil && ci.Address != nil {
		if a, err := netip.ParseAddr(ci.Address.Address); err != nil || !a.IsUnspecified() {
			ci.Address.Address = ip
		}
	}
	sd.Attributes = dropAttrs(sd.Attributes)
	sess := sd.Attributes[:0]
	for _, a := range sd.Attributes {
		if a.Key != "rtcp" { // RFC 3605 allows it per m= line only: nothing to point it at
			sess = append(sess, a)
		}
	}
	sd.Attributes = sess
	for i, md := range sd.MediaDescriptions {
		in := infos[i]
		if !in.disabled {
			md.MediaName.Port = sdp.RangedPort{Value: ports[i]}
		}
		if ci := md.ConnectionInformation; ci != nil && ci.Address != nil {
			if a, err := netip.ParseAddr(ci.Address.Address); err != nil || !a.IsUnspecified() {
				ci.Address.Address = ip
			}
		}
		attrs := dropAttrs(md.Attributes)
		md.Attributes = attrs[:0]
		for _, a := range attrs {
			if a.Key == "rtcp" {
				if in.disabled {
					continue // port 0: no RTCP either
				}
				if strings.Contains(a.Value, " ") {
					a.Value = strconv.Itoa(ports[i]+1) + " IN IP4 " + ip
				} else {
					a.Value = strconv.Itoa(ports[i] + 1)
				}
			}
			md.Attributes = append(md.Attributes, a)
		}
	}
	out, err := sd.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%w: marshal: %w", ErrBadSDP, err)
	}
	return out, nil
}

// dropAttrs removes ICE attributes and a=rtcp-mux(-only) in place.
func dropAttrs(attrs []sdp.Attribute) []sdp.Attribute {
	out := attrs[:0]
	for _, a := range attrs {
		if iceAttrs[a.Key] || a.Key == "rtcp-mux" || a.Key == "rtcp-mux-only" {
			continue
		}
		out = append(out, a)
	}
	return out
}
