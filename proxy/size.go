package proxy

import (
	"errors"
	"math"
	"syscall"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// How large a message may go over UDP.
const (
	// udpBudget is RFC 3261 §18.1.1's limit for a request over UDP when the
	// path MTU is unknown (200 bytes below Ethernet's 1500): a larger one
	// goes over TCP if the next hop listens on TCP.
	udpBudget = 1300
	// udpMaxDatagram is the largest UDP payload over IPv4 (65535 less the
	// IP and UDP headers); IP fragments it on the way.
	udpMaxDatagram = 65507
)

// errTooLarge is a message no transport to the next hop can carry: its
// sender gets 513 (RFC 3261 §21.5.14) and no one is suspected.
var errTooLarge = errors.New("message too large for one UDP datagram")

// LiftTransportLimits makes sipgo send every message up to udpMaxDatagram
// as one UDP datagram and read datagrams of any size. sipgo v1.7.2 refuses
// to send more than UDPMTUSize-200 bytes (1300: an INVITE from a softphone
// with a few codecs fails, its caller gets 503 and the backend is suspected)
// and reads UDP into a buffer of TransportBufferReadSize (32 KB), and has no
// option per transport or user agent for either: both are package
// variables, so this sets them for the whole process. The read buffer is
// also each TCP and TLS connection's (64 KB instead of 32 KB; TCP needed
// no more, its stream parser joins reads). Call it once at start-up,
// before any SIP socket opens. Which transport a large request takes
// is decided per next hop (fit), before sipgo sees it.
func LiftTransportLimits() {
	sip.UDPMTUSize = udpMaxDatagram + 200
	sip.TransportBufferReadSize = math.MaxUint16
}

// fit builds the request to send to t with build. A request larger than
// udpBudget for a UDP next hop is built again for TCP when the next hop is
// a backend that listens on TCP (Backend.TCP) and so does this proxy
// (its Via and Record-Route must name a TCP port); otherwise it stays one
// UDP datagram, as Kamailio and Asterisk send it, unless even that cannot
// carry it (errTooLarge). It returns the request and where it goes.
func (p *Proxy) fit(t target, build func(target) *sip.Request) (*sip.Request, target, error) {
	out := build(t)
	if t.transport != "udp" {
		return out, t, nil
	}
	n := wireSize(out)
	if n <= udpBudget {
		return out, t, nil
	}
	if p.tcpReach(t) {
		t.transport = "tcp"
		p.m.large.WithLabelValues("tcp").Inc()
		return build(t), t, nil
	}
	if n > udpMaxDatagram {
		p.m.large.WithLabelValues("refused").Inc()
		return out, t, errTooLarge
	}
	p.m.large.WithLabelValues("udp").Inc()
	return out, t, nil
}

// tcpReach reports whether t is a backend also reachable over TCP, at the
// same address, from a proxy that listens on TCP.
func (p *Proxy) tcpReach(t target) bool {
	if t.backend == "" || p.portFor["tcp"] == 0 {
		return false
	}
	b, ok := p.backends.Load().byName[t.backend]
	return ok && b.TCP && b.Address == t.addr
}

// sizeError reports whether err is a refusal for a message's size, by
// sipgo or the kernel (EMSGSIZE): the next hop has not failed.
func sizeError(err error) bool {
	return errors.Is(err, errTooLarge) || errors.Is(err, sip.ErrUDPMTUCongestion) || errors.Is(err, syscall.EMSGSIZE)
}

// tooLarge ends a request no transport could carry to t: 513 to its
// sender, the next hop not suspected.
func (p *Proxy) tooLarge(tx sip.ServerTransaction, req *sip.Request, t target, err error) {
	p.log.Info("request too large to forward", zap.String("call_id", callID(req)), zap.String("to", t.addr), zap.Error(err))
	p.reply(tx, req, 513, "Message Too Large")
}

// wireSize is the size of m as sent.
func wireSize(m sip.Message) int {
	var c byteCounter
	m.StringWrite(&c)
	return int(c)
}

type byteCounter int

func (c *byteCounter) WriteString(s string) (int, error) {
	*c += byteCounter(len(s))
	return len(s), nil
}
