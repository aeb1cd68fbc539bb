package media

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// recvSSRC waits for the next datagram p receives and returns the SSRC of
// the RTP packet, failing on timeout.
func recvSSRC(t *testing.T, p *phone) uint32 {
	t.Helper()
	_, b, ok := p.recv(time.Second)
	if !ok {
		t.Fatalf("%s received nothing", p.addr())
	}
	if len(b) < 12 {
		t.Fatalf("%s received %d bytes, not RTP", p.addr(), len(b))
	}
	return binary.BigEndian.Uint32(b[8:])
}

// drain discards what p has received so far (mustRelay may have sent more
// than one packet to get one through).
func drain(p *phone) {
	for {
		if _, _, ok := p.recv(50 * time.Millisecond); !ok {
			return
		}
	}
}

// mustBeStranger sends one packet from src to leg A's relay port forA and
// checks it is dropped: B gets nothing, B's media still reaches latched (A's
// latched source), and the session has counted strangers drops from A in all.
func mustBeStranger(t *testing.T, r *Relay, src *phone, forA netip.AddrPort, b *phone, forB netip.AddrPort, latched *phone, strangers uint64) {
	t.Helper()
	src.sendRTP(forA)
	mustNotReceive(t, b, 150*time.Millisecond)
	mustRelay(t, b, forB, latched, forA)
	if fa := r.Snapshot()[0].Streams[0].FromA; fa.Latched != latched.addr() || fa.Stranger != strangers {
		t.Fatalf("from A %+v; want latched %s, %d stranger", fa, latched.addr(), strangers)
	}
}

// TestRelayBleedStrangerFirstAndFlooding is the RTP bleed attack with real
// sockets: a stranger learns the call's relay ports and sends to them before
// the phones do, and keeps flooding while the call runs. The caller is
// behind NAT (its SDP names a private address, its RTP comes from the
// address its INVITE came from). The stranger never latches: the caller's
// audio reaches the callee and only it, the callee's audio reaches the
// caller and not the stranger, and every stranger datagram is counted.
func TestRelayBleedStrangerFirstAndFlooding(t *testing.T) {
	r, reg := newTestRelay(t, "33000-33099", nil)
	a := newPhone(t, "127.0.0.2") // the caller's NAT
	b := newPhone(t, "127.0.0.3")
	stranger := newPhone(t, "127.0.0.4")

	o, err := r.AnchorFrom("bleed", true, a.addr().Addr(), offer(netip.MustParseAddrPort("192.168.1.10:4000"), ""))
	if err != nil {
		t.Fatal(err)
	}
	forB := relayAP(sdpPort(t, o)) // known to anyone who saw the offer
	// Before the callee answered, the stranger floods the callee-facing
	// port too: leg B has no address yet, nothing may latch it.
	const early = 50
	for range early {
		stranger.sendRTP(forB)
	}
	ans, err := r.AnchorFrom("bleed", false, b.addr().Addr(), offer(b.addr(), ""))
	if err != nil {
		t.Fatal(err)
	}
	forA := relayAP(sdpPort(t, ans))
	// The stranger comes first on the caller-facing port, RTP and RTCP.
	const first = 100
	for range first {
		stranger.sendRTP(forA)
	}
	sendRTCP(t, stranger, relayAP(forA.Port()+1))
	// Both legs' ports received the stranger's datagrams in order ahead of
	// the phones' first packets, so these prove the stranger latched nothing.
	mustRelay(t, a, forA, b, forB)
	mustRelay(t, b, forB, a, forA)
	drain(a)
	drain(b)
	if st := r.Snapshot()[0].Streams[0]; st.FromA.Stranger != first+1 || st.FromB.Stranger != early ||
		st.FromA.Latched != a.addr() || st.FromB.Latched != b.addr() {
		t.Fatalf("after the stranger came first: from A %+v, from B %+v; want %d and %d stranger drops, latched %s and %s",
			st.FromA, st.FromB, first+1, early, a.addr(), b.addr())
	}
	mustNotReceive(t, stranger, 50*time.Millisecond)

	// The stranger keeps flooding both ports while the call runs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flooded int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Not p.sendRTP: its t.Fatal must not run off the test goroutine.
			flooded += 2
			stranger.seq++
			pkt := rtpPacket(stranger.seq, 0, stranger.ssrc, 160)
			_, _ = stranger.conn.WriteToUDPAddrPort(pkt, forA)
			_, _ = stranger.conn.WriteToUDPAddrPort(pkt, forB)
			time.Sleep(200 * time.Microsecond)
		}
	}()
	const talk = 50
	for range talk {
		a.sendRTP(forA)
		if got := recvSSRC(t, b); got != a.ssrc {
			t.Fatalf("callee got SSRC %#x, want the caller's %#x", got, a.ssrc)
		}
		b.sendRTP(forB)
		if got := recvSSRC(t, a); got != b.ssrc {
			t.Fatalf("caller got SSRC %#x, want the callee's %#x", got, b.ssrc)
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	mustNotReceive(t, stranger, 50*time.Millisecond)

	st := r.Snapshot()[0].Streams[0]
	if st.FromA.Latched != a.addr() || st.FromB.Latched != b.addr() {
		t.Fatalf("latches moved under the flood: A %s, B %s", st.FromA.Latched, st.FromB.Latched)
	}
	if st.FromA.Signal != a.addr().Addr() || st.FromB.Signal != b.addr().Addr() {
		t.Fatalf("signalling sources: A %s, B %s", st.FromA.Signal, st.FromB.Signal)
	}
	// Every packet relayed either way was a phone's.
	if st.FromA.Packets != uint64(a.seq) || st.FromB.Packets != uint64(b.seq) {
		t.Fatalf("relayed A->B %d, B->A %d packets; the phones sent %d, %d", st.FromA.Packets, st.FromB.Packets, a.seq, b.seq)
	}
	// Loopback may drop part of a flood, so the counter is bounded by what
	// was sent, and it must have grown with the flood.
	drops := metricValue(t, reg, "hapbx_media_dropped_total", "stranger")
	if sent := float64(first + 1 + early + flooded); drops <= first+1+early || drops > sent {
		t.Fatalf("hapbx_media_dropped_total{reason=stranger} = %v, want within (%d, %v]", drops, first+1+early, sent)
	}
}

// TestRelayLearningWindowPrefersSDPEndpoint: another sender at the leg's
// allowed address that comes first (a stale port of the phone, another
// device behind the same NAT) latches, but within learn_window the exact
// endpoint the SDP names takes the leg over; after that the first one is a
// stranger. With learn_window 0 the first allowed source keeps the leg.
func TestRelayLearningWindowPrefersSDPEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window time.Duration
	}{{"window", time.Minute}, {"no window", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newTestRelay(t, "33100-33199", func(c *Config) { c.LearnWindow = tc.window })
			a, other, b := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3")
			o, err := r.AnchorFrom("learn", true, a.addr().Addr(), offer(a.addr(), ""))
			if err != nil {
				t.Fatal(err)
			}
			ans, err := r.AnchorFrom("learn", false, b.addr().Addr(), offer(b.addr(), ""))
			if err != nil {
				t.Fatal(err)
			}
			forA, forB := relayAP(sdpPort(t, ans)), relayAP(sdpPort(t, o))
			mustRelay(t, other, forA, b, forB) // same address, any port: latches
			drain(b)
			winner, loser := a, other
			if tc.window == 0 {
				winner, loser = other, a
			}
			winner.sendRTP(forA)
			if got := recvSSRC(t, b); got != other.ssrc && tc.window == 0 || got != a.ssrc && tc.window != 0 {
				t.Fatalf("callee got SSRC %#x", got)
			}
			mustBeStranger(t, r, loser, forA, b, forB, winner, 1)
		})
	}
}

// TestImportAllowsSignalOrLatchedAddress: the twin enforces the holder's
// allowed addresses after a failover: the signalling source carried in the
// record, or, from a record of an earlier build without it, the latched
// source's address. A stranger that sends first to the twin is dropped.
func TestImportAllowsSignalOrLatchedAddress(t *testing.T) {
	for _, tc := range []struct {
		name      string
		strip     bool // the record of an earlier build: no Signal
		unlatched bool
	}{{"signal", false, true}, {"earlier build", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b, stranger := newPhone(t, "127.0.0.2"), newPhone(t, "127.0.0.3"), newPhone(t, "127.0.0.4")
			rec := SessionRecord{CallID: "twin", State: StateAnswered, Address: netip.MustParseAddr("127.0.0.1"), Version: 1,
				Streams: []StreamRecord{{
					Ports:   [2]int{33200, 33202},
					SDP:     [2]netip.AddrPort{netip.MustParseAddrPort("192.168.1.10:4000"), b.addr()},
					SDPRTCP: [2]netip.AddrPort{netip.MustParseAddrPort("192.168.1.10:4001"), netip.AddrPortFrom(b.addr().Addr(), b.addr().Port()+1)},
					Latched: [2]netip.AddrPort{a.addr(), {}},
					Signal:  [2]netip.Addr{a.addr().Addr(), b.addr().Addr()},
				}}}
			if tc.unlatched {
				rec.Streams[0].Latched[LegA] = netip.AddrPort{}
			}
			if tc.strip {
				rec.Streams[0].Signal = [2]netip.Addr{}
			}
			wire, err := rec.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var got SessionRecord
			if err := got.UnmarshalBinary(wire); err != nil {
				t.Fatal(err)
			}
			r, _ := newTestRelay(t, "33200-33299", func(c *Config) { c.RelatchAfter = time.Nanosecond })
			if err := r.Import(got); err != nil {
				t.Fatal(err)
			}
			forA, forB := relayAP(33200), relayAP(33202) // Ports: facing A, facing B
			for range 3 {
				stranger.sendRTP(forA)
			}
			mustNotReceive(t, b, 150*time.Millisecond)
			// A's address, even from another port, may take the leg.
			a2 := newPhone(t, "127.0.0.2")
			mustRelay(t, a2, forA, b, forB)
			mustRelay(t, b, forB, a2, forA)
			if fa := r.Snapshot()[0].Streams[0].FromA; fa.Latched != a2.addr() || fa.Stranger != 3 {
				t.Fatalf("from A %+v; want latched %s, 3 stranger", fa, a2.addr())
			}
		})
	}
}
