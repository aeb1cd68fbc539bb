package media

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/pion/sdp/v3"
	"golang.org/x/sys/unix"
)

var (
	// ErrNotJoinable means Join found a call without a relay session, with
	// SDP from one leg only, already joined, or with a different number of
	// streams than the other: its calls end with BYEs instead.
	ErrNotJoinable = errors.New("media: calls not joinable")
	// ErrCodecMismatch means the two phones' negotiated codecs differ (the
	// relay does not transcode), or a joined phone's re-offer lacks its codec.
	ErrCodecMismatch = codecMismatchError{}
)

// codecMismatchError says what it is by a method too, so the proxy tells it
// apart without importing media.
type codecMismatchError struct{}

func (codecMismatchError) Error() string { return "media: codecs differ" }

// CodecMismatch marks ErrCodecMismatch.
func (codecMismatchError) CodecMismatch() {}

// joinSet holds the joined calls by Call-ID; its zero value is empty.
// Guarded by the Relay's mutex.
type joinSet struct{ m map[string]*joinedLeg }

// joinedLeg is one call of a joined pair: its phone leg now exchanges media
// with the other call's phone.
type joinedLeg struct {
	partner string
	phone   Leg
	codecs  []codec // per stream: the negotiated codec
	answer  []byte  // the last SDP given to the phone (AnswerJoined)
	version uint64  // o= session version of answer
	peers   [][2]*sock
}

// codec is an RTP format by name (lower case), clock rate and channels.
type codec struct {
	name     string
	clock    uint32
	channels string
}

// staticCodecs are RFC 3551's static audio payload types, for an m= line
// with no a=rtpmap for them.
var staticCodecs = map[int]codec{
	0: {"pcmu", 8000, ""}, 3: {"gsm", 8000, ""}, 4: {"g723", 8000, ""}, 8: {"pcma", 8000, ""},
	9: {"g722", 8000, ""}, 13: {"cn", 8000, ""}, 18: {"g729", 8000, ""},
}

// keptSDPAttrs are the attributes compactSDP keeps: what Join and
// AnswerJoined read (codecs, packetisation, direction).
var keptSDPAttrs = map[string]bool{
	"rtpmap": true, "fmtp": true, "ptime": true, "maxptime": true,
	"sendrecv": true, "sendonly": true, "recvonly": true, "inactive": true,
}

// compactSDP is body with only the lines Join needs (v, o, s, c, t, m and
// keptSDPAttrs), as the session keeps and replicates it: a softphone's
// 2-4 KB offer (candidates, keys, video attributes) shrinks to a few
// hundred bytes.
func compactSDP(body []byte) []byte {
	out := make([]byte, 0, min(len(body), 512))
	for line := range strings.SplitSeq(string(body), "\n") {
		line = strings.TrimRight(line, "\r")
		if len(line) < 2 || line[1] != '=' {
			continue
		}
		switch line[0] {
		case 'v', 'o', 's', 'c', 't', 'm':
		case 'a':
			key, _, _ := strings.Cut(line[2:], ":")
			if !keptSDPAttrs[key] {
				continue
			}
		default:
			continue
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return out
}

// formatsOf maps the payload types of md to their codecs.
func formatsOf(md *sdp.MediaDescription) (pts []int, codecs map[int]codec) {
	codecs = make(map[int]codec)
	for _, f := range md.MediaName.Formats {
		pt, err := strconv.Atoi(f)
		if err != nil || pt < 0 || pt > 127 {
			continue
		}
		pts = append(pts, pt)
		if c, ok := staticCodecs[pt]; ok {
			codecs[pt] = c
		}
	}
	for _, a := range md.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		ps, rest, ok := strings.Cut(a.Value, " ")
		pt, err := strconv.Atoi(ps)
		if !ok || err != nil || pt < 0 || pt > 127 {
			continue
		}
		parts := strings.Split(strings.TrimSpace(rest), "/")
		c := codec{name: strings.ToLower(parts[0]), clock: 8000}
		if len(parts) > 1 {
			if r, err := strconv.ParseUint(parts[1], 10, 32); err == nil {
				c.clock = uint32(r)
			}
		}
		if len(parts) > 2 && parts[2] != "1" {
			c.channels = parts[2]
		}
		codecs[pt] = c
	}
	return pts, codecs
}

// voice tells a codec that carries the call's audio from events, comfort
// noise and redundancy.
func (c codec) voice() bool {
	switch c.name {
	case "telephone-event", "cn", "red", "ulpfec":
		return false
	}
	return true
}

// negotiated is the codec of stream i of s: the first voice format of the
// answer (the SDP that came last).
func negotiated(sds [2]*sdp.SessionDescription, last Leg, i int) (codec, bool) {
	md := sds[last].MediaDescriptions[i]
	if md.MediaName.Port.Value == 0 {
		return codec{}, false
	}
	pts, cs := formatsOf(md)
	for _, pt := range pts {
		if c, ok := cs[pt]; ok && c.voice() {
			return c, true
		}
	}
	return codec{}, false
}

// ptMapFor renumbers what phone 1 sends (the payload types of the SDP it
// received, and of its own) into what phone 2 declared it receives; nil
// when nothing changes. ok is false when phone 2 lacks codec c.
func ptMapFor(received, own, peerOwn *sdp.MediaDescription, c codec) (*[128]byte, bool) {
	_, peer := formatsOf(peerOwn)
	byCodec := make(map[codec]int, len(peer))
	for pt, pc := range peer {
		if old, ok := byCodec[pc]; !ok || pt < old {
			byCodec[pc] = pt
		}
	}
	if _, ok := byCodec[c]; !ok {
		return nil, false
	}
	var m [128]byte
	for i := range m {
		m[i] = byte(i)
	}
	same := true
	for _, md := range []*sdp.MediaDescription{own, received} { // received wins: it is what phone 1 sends
		_, cs := formatsOf(md)
		for pt, pc := range cs {
			if to, ok := byCodec[pc]; ok {
				m[pt] = byte(to)
				same = same && to == pt
			}
		}
	}
	if same {
		return nil, true
	}
	return &m, true
}

// Join connects the phone legs of two answered calls whose other legs went
// to the same dead PBX: from now on what callID1's phone (leg A if caller1,
// else leg B) sends to the relay reaches callID2's phone and the reverse,
// each phone still sending to the same relay port. Payload types are
// renumbered when the phones number the same codec differently. The legs
// facing the PBX are closed (nothing from it is relayed any more). Errors:
// ErrNotJoinable, ErrCodecMismatch; the sessions are then left as they were.
func (r *Relay) Join(callID1 string, caller1 bool, callID2 string, caller2 bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s1, s2 := r.sessions[callID1], r.sessions[callID2]
	if s1 == nil || s2 == nil || s1 == s2 {
		return fmt.Errorf("join %q with %q: %w: no relay session", callID1, callID2, ErrNotJoinable)
	}
	if r.joins.m[callID1] != nil || r.joins.m[callID2] != nil {
		return fmt.Errorf("join %q with %q: %w: already joined", callID1, callID2, ErrNotJoinable)
	}
	l1, l2 := legOf(caller1), legOf(caller2)
	sd1, err := parsedLegs(s1)
	if err != nil {
		return fmt.Errorf("join %q: %w", callID1, err)
	}
	sd2, err := parsedLegs(s2)
	if err != nil {
		return fmt.Errorf("join %q: %w", callID2, err)
	}
	n := len(s1.streams)
	if n != len(s2.streams) || n != len(sd1[0].MediaDescriptions) || n != len(sd2[0].MediaDescriptions) ||
		n != len(sd1[1].MediaDescriptions) || n != len(sd2[1].MediaDescriptions) {
		return fmt.Errorf("join %q with %q: %w: streams differ", callID1, callID2, ErrNotJoinable)
	}
	j1 := &joinedLeg{partner: callID2, phone: l1}
	j2 := &joinedLeg{partner: callID1, phone: l2}
	maps := make([][2]*[128]byte, n)
	disabled := func(sd [2]*sdp.SessionDescription, last Leg, i int) bool {
		return sd[last].MediaDescriptions[i].MediaName.Port.Value == 0
	}
	for i := range n {
		if disabled(sd1, s1.sdpLast, i) && disabled(sd2, s2.sdpLast, i) {
			// A stream both answers refused (video a phone declined):
			// nothing flows on it either way.
			j1.codecs, j2.codecs = append(j1.codecs, codec{}), append(j2.codecs, codec{})
			continue
		}
		c1, ok1 := negotiated(sd1, s1.sdpLast, i)
		c2, ok2 := negotiated(sd2, s2.sdpLast, i)
		if !ok1 || !ok2 || c1 != c2 {
			return fmt.Errorf("join %q with %q: stream %d: %w (%s/%d, %s/%d)", callID1, callID2, i, ErrCodecMismatch, c1.name, c1.clock, c2.name, c2.clock)
		}
		m12, ok1 := ptMapFor(sd1[l1.other()].MediaDescriptions[i], sd1[l1].MediaDescriptions[i], sd2[l2].MediaDescriptions[i], c1)
		m21, ok2 := ptMapFor(sd2[l2.other()].MediaDescriptions[i], sd2[l2].MediaDescriptions[i], sd1[l1].MediaDescriptions[i], c1)
		if !ok1 || !ok2 {
			return fmt.Errorf("join %q with %q: stream %d: %w: a phone does not take %s", callID1, callID2, i, ErrCodecMismatch, c1.name)
		}
		maps[i] = [2]*[128]byte{m12, m21}
		j1.codecs, j2.codecs = append(j1.codecs, c1), append(j2.codecs, c1)
	}
	// What each phone was last given, as the relay would have rewritten it:
	// the template of the answers AnswerJoined makes.
	for _, x := range []struct {
		s  *session
		j  *joinedLeg
		sd [2]*sdp.SessionDescription
	}{{s1, j1, sd1}, {s2, j2, sd2}} {
		_, infos, err := parseSDP(x.s.sdp[x.j.phone.other()])
		if err != nil {
			return fmt.Errorf("join %q: %w", x.s.callID, ErrNotJoinable)
		}
		ports := make([]int, len(infos))
		for i, st := range x.s.streams {
			ports[i] = st.ports[x.j.phone]
		}
		out := x.sd[x.j.phone.other()]
		x.j.version = out.Origin.SessionVersion
		if x.j.answer, err = rewriteSDP(out, infos, r.addr, ports); err != nil {
			return fmt.Errorf("join %q: %w", x.s.callID, err)
		}
	}
	// One worker relays both: the data path follows peer pointers under
	// its own worker's lock only.
	r.moveLocked(s2, s1.w)
	w := s1.w
	w.mu.Lock()
	for i := range n {
		a, b := s1.streams[i], s2.streams[i]
		j1.peers = append(j1.peers, [2]*sock{a.socks[l1][0].peer, a.socks[l1][1].peer})
		j2.peers = append(j2.peers, [2]*sock{b.socks[l2][0].peer, b.socks[l2][1].peer})
		for k := range 2 {
			p1, p2 := a.socks[l1][k], b.socks[l2][k]
			p1.peer, p2.peer = p2, p1
			w.removeLocked(a.socks[l1.other()][k])
			w.removeLocked(b.socks[l2.other()][k])
		}
		a.socks[l1][0].ptMap, b.socks[l2][0].ptMap = maps[i][0], maps[i][1]
	}
	w.mu.Unlock()
	// The kernel forwarded each phone to its PBX: it now forwards to the
	// other phone, or leaves a leg whose payload types need renumbering to
	// user space (want), and drops the closed PBX legs' elements.
	r.kern.syncSession(s1)
	r.kern.syncSession(s2)
	if r.joins.m == nil {
		r.joins.m = make(map[string]*joinedLeg)
	}
	r.joins.m[callID1], r.joins.m[callID2] = j1, j2
	return nil
}

func legOf(caller bool) Leg {
	if caller {
		return LegA
	}
	return LegB
}

// parsedLegs parses both legs' last SDP of s.
func parsedLegs(s *session) ([2]*sdp.SessionDescription, error) {
	var out [2]*sdp.SessionDescription
	for l := range 2 {
		if len(s.sdp[l]) == 0 {
			return out, fmt.Errorf("%w: no SDP from leg %s", ErrNotJoinable, Leg(l))
		}
		sd, _, err := parseSDP(s.sdp[l])
		if err != nil {
			return out, fmt.Errorf("%w: leg %s: %w", ErrNotJoinable, Leg(l), err)
		}
		out[l] = sd
	}
	return out, nil
}

// moveLocked hands every socket of s to worker to. r.mu must be held.
func (r *Relay) moveLocked(s *session, to *worker) {
	from := s.w
	if from == to {
		return
	}
	from.mu.Lock()
	to.mu.Lock()
	for _, st := range s.streams {
		for l := range 2 {
			for k := range 2 {
				so := st.socks[l][k]
				if so == nil || so.fd < 0 {
					continue
				}
				from.closeConnLocked(so) // reopened on to by the next send
				so.connAt = 0
				if from.socks[int32(so.fd)] == so {
					delete(from.socks, int32(so.fd))
					_ = unix.EpollCtl(from.epfd, unix.EPOLL_CTL_DEL, so.fd, nil)
				}
				ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(so.fd)}
				if err := unix.EpollCtl(to.epfd, unix.EPOLL_CTL_ADD, so.fd, &ev); err == nil {
					to.socks[int32(so.fd)] = so
				}
				so.w = to
			}
		}
	}
	to.mu.Unlock()
	from.mu.Unlock()
	s.w = to
}

// unjoinLocked undoes s's join, if any, when s ends: the partner's phone
// sockets stop sending through s's closed ones. r.mu must be held.
func (r *Relay) unjoinLocked(s *session) {
	j := r.joins.m[s.callID]
	if j == nil {
		return
	}
	delete(r.joins.m, s.callID)
	pj := r.joins.m[j.partner]
	ps := r.sessions[j.partner]
	if pj == nil || ps == nil {
		return
	}
	delete(r.joins.m, j.partner)
	ps.w.mu.Lock()
	for i, st := range ps.streams {
		if i >= len(pj.peers) {
			break
		}
		for k := range 2 {
			st.socks[pj.phone][k].peer = pj.peers[i][k]
		}
		st.socks[pj.phone][0].ptMap = nil
	}
	ps.w.mu.Unlock()
	r.kern.syncSession(ps)
}

// Joined reports whether callID's media is joined with another call's, and
// that call's Call-ID.
func (r *Relay) Joined(callID string) (partner string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j := r.joins.m[callID]; j != nil {
		return j.partner, true
	}
	return "", false
}

// AnswerJoined answers a re-offer (re-INVITE, UPDATE) from the phone of a
// joined call, which arrived from signal, from the relay's state: the leg's
// media stays on its relay port and codec, and the answer mirrors the
// offer's direction (sendonly: recvonly; inactive: inactive), so hold and
// resume work with no PBX. The offer updates where the relay sends to the
// phone. A nil offer (an INVITE without SDP) gets the last SDP given to
// the phone as the offer. Errors: ErrNoSession (not joined), ErrBadSDP,
// ErrCodecMismatch (the offer lacks the call's codec: answer 488).
func (r *Relay) AnswerJoined(callID string, signal netip.Addr, offer []byte) ([]byte, error) {
	r.mu.Lock()
	j := r.joins.m[callID]
	if j == nil || r.sessions[callID] == nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("answer %q: %w", callID, ErrNoSession)
	}
	phone := j.phone
	tmpl := j.answer
	r.mu.Unlock()
	sd := &sdp.SessionDescription{}
	if err := sd.Unmarshal(tmpl); err != nil {
		return nil, fmt.Errorf("answer %q: %w: %w", callID, ErrBadSDP, err)
	}
	if len(offer) > 0 {
		off, infos, err := parseSDP(offer)
		if err != nil {
			return nil, fmt.Errorf("answer %q: %w", callID, err)
		}
		if len(infos) != len(sd.MediaDescriptions) {
			return nil, fmt.Errorf("answer %q: %w: %d streams offered, the call has %d", callID, ErrBadSDP, len(infos), len(sd.MediaDescriptions))
		}
		for i, md := range off.MediaDescriptions {
			_, cs := formatsOf(md)
			found := false
			for _, c := range cs {
				found = found || c == j.codecs[i]
			}
			if !found && md.MediaName.Port.Value != 0 {
				return nil, fmt.Errorf("answer %q: stream %d: %w: %s not offered", callID, i, ErrCodecMismatch, j.codecs[i].name)
			}
			setDirection(sd.MediaDescriptions[i], mirror(direction(off, md)))
		}
		if _, err := r.anchor(callID, phone, signal.Unmap(), offer); err != nil {
			return nil, fmt.Errorf("answer %q: %w", callID, err)
		}
		r.replicate(callID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if j != r.joins.m[callID] {
		return nil, fmt.Errorf("answer %q: %w", callID, ErrNoSession)
	}
	j.version++
	sd.Origin.SessionVersion = j.version
	out, err := sd.Marshal()
	if err != nil {
		return nil, fmt.Errorf("answer %q: %w: %w", callID, ErrBadSDP, err)
	}
	j.answer = out
	return out, nil
}

var directions = []string{"sendrecv", "sendonly", "recvonly", "inactive"}

// direction is md's direction attribute, else the session's, else sendrecv.
func direction(sd *sdp.SessionDescription, md *sdp.MediaDescription) string {
	for _, d := range directions {
		if _, ok := md.Attribute(d); ok {
			return d
		}
	}
	for _, d := range directions {
		if _, ok := sd.Attribute(d); ok {
			return d
		}
	}
	return "sendrecv"
}

// mirror is the answer's direction to an offer's (RFC 3264 §6.1).
func mirror(d string) string {
	switch d {
	case "sendonly":
		return "recvonly"
	case "recvonly":
		return "sendonly"
	}
	return d
}

func setDirection(md *sdp.MediaDescription, d string) {
	attrs := md.Attributes[:0]
	for _, a := range md.Attributes {
		if a.Key == "sendrecv" || a.Key == "sendonly" || a.Key == "recvonly" || a.Key == "inactive" {
			continue
		}
		attrs = append(attrs, a)
	}
	md.Attributes = append(attrs, sdp.Attribute{Key: d})
}
