package media

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// SessionStatus is one session in Snapshot, shaped for /api/v1/status JSON.
type SessionStatus struct {
	CallID  string         `json:"call_id"`
	State   string         `json:"state"`
	Age     time.Duration  `json:"age_ns"`
	Streams []StreamStatus `json:"streams"`
}

// StreamStatus is one m= line; FromA counts what leg A sent (relayed to B).
type StreamStatus struct {
	Ports [2]int    `json:"ports"` // relay RTP port facing A, facing B
	FromA DirStatus `json:"from_a"`
	FromB DirStatus `json:"from_b"`
}

// DirStatus are the counters of one direction of one stream.
type DirStatus struct {
	SDP         netip.AddrPort `json:"sdp"`
	Latched     netip.AddrPort `json:"latched"`
	Signal      netip.Addr     `json:"signal"` // where the leg's SIP came from; media is accepted from it or SDP's address
	Hold        bool           `json:"hold"`
	Packets     uint64         `json:"packets"`
	Bytes       uint64         `json:"bytes"`
	RTCPPackets uint64         `json:"rtcp_packets"`
	Lost        uint64         `json:"lost"`
	JitterMs    float64        `json:"jitter_ms"`
	Stranger    uint64         `json:"stranger_dropped"`
	Invalid     uint64         `json:"invalid_dropped"`
	NoDest      uint64         `json:"no_destination_dropped"`
	SendErrors  uint64         `json:"send_errors"`
	// Kernel: the kernel forwards this leg's RTP from its latched source
	// (datapath kernel); its packets and bytes then come from the
	// kernel's counters, and lost/jitter only cover what user space saw.
	Kernel bool `json:"kernel"`
}

// Snapshot returns the state and counters of every session.
func (r *Relay) Snapshot() []SessionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]SessionStatus, 0, len(r.sessions))
	now := r.now()
	for _, s := range r.sessions {
		ss := SessionStatus{CallID: s.callID, State: s.state(), Age: now.Sub(s.created)}
		s.w.mu.Lock()
		for _, st := range s.streams {
			ss.Streams = append(ss.Streams, StreamStatus{Ports: st.ports, FromA: dirStatus(st, LegA), FromB: dirStatus(st, LegB)})
		}
		s.w.mu.Unlock()
		out = append(out, ss)
	}
	slices.SortFunc(out, func(a, b SessionStatus) int { return strings.Compare(a.CallID, b.CallID) })
	return out
}

func dirStatus(st *stream, l Leg) DirStatus {
	d, c := &st.stats[l][0], &st.stats[l][1]
	sdp, latched := endpoints(st.socks[l][0])
	var signal netip.Addr
	if k := st.socks[l][0]; k.hasSig {
		signal = netip.AddrFrom4(k.signal)
	}
	return DirStatus{
		SDP: sdp, Latched: latched, Signal: signal, Hold: st.hold[l],
		Packets: d.packets, Bytes: d.bytes, RTCPPackets: c.rtcpPackets,
		Lost: d.lost(), JitterMs: d.jitterMs(),
		Stranger: d.stranger + c.stranger, Invalid: d.invalid + c.invalid,
		NoDest: d.noDest + c.noDest, SendErrors: d.sendErr + c.sendErr,
		Kernel: st.socks[l][0].kernel,
	}
}
