package media

import "encoding/binary"

// validRTP is a cheap RFC 3550 header check: version 2, fixed header and
// CSRC list present, extension and padding within the packet. It never
// allocates; pion/rtp is used by the fuzz test to cross-check it.
func validRTP(b []byte) bool {
	if len(b) < 12 || b[0]>>6 != 2 {
		return false
	}
	n := 12 + 4*int(b[0]&0x0f)
	if b[0]&0x10 != 0 { // extension header
		if len(b) < n+4 {
			return false
		}
		n += 4 + 4*int(binary.BigEndian.Uint16(b[n+2:]))
	}
	if len(b) < n {
		return false
	}
	if b[0]&0x20 != 0 { // padding: last octet counts itself
		p := int(b[len(b)-1])
		if p == 0 || len(b)-n < p {
			return false
		}
	}
	pt := b[1] & 0x7f
	return pt < 72 || pt > 76 // 72-76 collide with RTCP SR/RR/SDES/BYE/APP
}

// validRTCP checks version 2, a compound length that is a multiple of 4 and
// a first packet type in the RTCP range 192-223.
func validRTCP(b []byte) bool {
	if len(b) < 8 || b[0]>>6 != 2 || len(b)%4 != 0 {
		return false
	}
	return b[1] >= 192 && b[1] <= 223
}

// dirStats counts packets received on one relay socket, i.e. one direction.
// Only the owning worker writes it, under the worker's mutex.
type dirStats struct {
	packets, bytes    uint64
	rtcpPackets       uint64
	stranger, invalid uint64
	noDest, sendErr   uint64
	// RFC 3550 A.1 sequence state.
	started  bool
	ssrc     uint32
	baseSeq  uint32
	maxSeq   uint16
	cycles   uint32
	received uint64
	// RFC 3550 A.8 interarrival jitter, in timestamp units scaled by 16.
	jitter      uint32
	lastTransit int64
	clock       uint32
}

// rtpSeen updates sequence and jitter state. arrival is in nanoseconds.
func (d *dirStats) rtpSeen(b []byte, arrival int64) {
	seq := binary.BigEndian.Uint16(b[2:])
	ts := binary.BigEndian.Uint32(b[4:])
	ssrc := binary.BigEndian.Uint32(b[8:])
	clock := d.clock
	if clock == 0 {
		clock = 8000
	}
	// Arrival in timestamp units; wraps like RTP timestamps do.
	arr := arrival / 1000 * int64(clock) / 1000000
	transit := arr - int64(ts)
	if !d.started || ssrc != d.ssrc {
		// New source (or SSRC change after re-INVITE): restart the counts.
		d.started, d.ssrc = true, ssrc
		d.baseSeq, d.maxSeq, d.cycles = uint32(seq), seq, 0
		d.received = 1
		d.lastTransit = transit
		return
	}
	d.received++
	delta := seq - d.maxSeq
	switch {
	case delta > 0 && delta < 3000: // in order, maybe with a gap
		if seq < d.maxSeq {
			d.cycles += 1 << 16
		}
		d.maxSeq = seq
	case delta == 0 || delta >= 0xffff-100: // duplicate or reordered: keep max
	default: // large jump: the source restarted its sequence
		d.baseSeq, d.maxSeq, d.cycles = uint32(seq), seq, 0
		d.received = 1
	}
	dt := transit - d.lastTransit
	d.lastTransit = transit
	if dt < 0 {
		dt = -dt
	}
	if dt > 1<<24 { // a timestamp jump is not jitter
		return
	}
	// J += (|D| - J)/16, kept scaled by 16 as in RFC 3550 A.8.
	d.jitter += uint32(dt) - ((d.jitter + 8) >> 4)
}

// lost returns the cumulative number of packets lost per RFC 3550 A.3
// (never negative: duplicates do not make it go below zero).
func (d *dirStats) lost() uint64 {
	if !d.started {
		return 0
	}
	expected := uint64(d.cycles) + uint64(d.maxSeq) - uint64(d.baseSeq) + 1
	if expected <= d.received {
		return 0
	}
	return expected - d.received
}

// jitterMs returns the interarrival jitter in milliseconds.
func (d *dirStats) jitterMs() float64 {
	c := d.clock
	if c == 0 {
		c = 8000
	}
	return float64(d.jitter>>4) * 1000 / float64(c)
}
