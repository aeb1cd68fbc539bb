package proxy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// FuzzDecide drives the message-handling path that faces the network:
// sipgo's parser, then the proxy's validation, route preprocessing, loop
// check and next-hop choice, and the rewriting of what it would send. It is
// seeded with the RFC 4475 torture messages. Nothing may panic.
func FuzzDecide(f *testing.F) {
	seedRFC4475(f)
	f.Add([]byte("INVITE sip:201@127.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.2.1;branch=z9hG4bKhpxabc.def\r\nRoute: <sip:127.0.2.1;lr>\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 1\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.2.1;branch=z9hG4bKhpx1\r\nVia: SIP/2.0/UDP 10.0.0.1;rport=5;received=1.2.3.4\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"))

	p := fuzzProxy(f)
	parser := sip.NewParser()

	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := parser.ParseSIP(data)
		if err != nil {
			return
		}
		msg.SetTransport("UDP")
		msg.SetSource("127.0.2.50:5070")
		switch m := msg.(type) {
		case *sip.Request:
			in := m.Clone()
			d := p.decide(m)
			var targets []target
			switch d.act {
			case actForward, actStateless:
				targets = []target{d.target}
			case actBackends:
				targets = p.backendTargets(m)
			}
			for _, tg := range targets {
				out := m.Clone()
				p.prepare(out, m, tg, p.branchFor(m, tg, 0))
				_ = out.String()
			}
			_ = in
		case *sip.Response:
			req := sip.NewRequest(sip.INVITE, sip.Uri{Host: "127.0.2.1"})
			req.SetTransport("UDP")
			req.SetSource("127.0.2.50:5070")
			p.strayResponse(m.Clone()) // a stranger's response is dropped: its branch proves nothing
			p.upstream(req, m)
			_ = m.String()
			_ = m.Destination()
		}
	})
}

// FuzzIntake drives the whole request path from raw bytes: the UDP read
// filter (sanityFilter: checkDatagram, and the rebuilding of what sipgo
// cannot parse), sipgo's parser, decide (with
// sanity), and the rewriting of what hapbx would send on. Nothing may
// panic, and every request hapbx would forward must parse again and carry
// exactly one Call-ID, CSeq, From, To and Max-Forwards and at most one
// Content-Length and Content-Type. writtenParses must say what parsing the
// whole written request says.
func FuzzIntake(f *testing.F) {
	seedRFC4475(f)
	f.Add([]byte("INVITE sip:201@127.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCall-ID: y\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\nContent-Length: 0\r\n\r\nBYE "))
	p := fuzzProxy(f)
	parser := sip.NewParser()

	f.Fuzz(func(t *testing.T, data []byte) {
		data, _ = p.sanityFilter(sip.TransportReadProps{Transport: "UDP"}, data)
		if data == nil {
			return
		}
		msg, err := parser.ParseSIP(data)
		if err != nil {
			return
		}
		if req, ok := msg.(*sip.Request); ok {
			checkSentOn(t, p, req, "UDP")
		}
	})
}

// checkSentOn runs decide on req, arrived over transport, and checks what
// hapbx would send on (FuzzIntake, FuzzStreamIntake).
func checkSentOn(t *testing.T, p *Proxy, req *sip.Request, transport string) {
	t.Helper()
	if wire := req.String(); len(wire) < sip.ParseMaxMessageLength-1000 {
		_, err := sip.ParseMessage([]byte(wire))
		if writtenParses(req) != (err == nil) {
			t.Fatalf("writtenParses = %v, but the written request parses: %v\n%s", writtenParses(req), err, wire)
		}
	}
	req.SetTransport(transport)
	req.SetSource("127.0.2.50:5070")
	d := p.decide(req)
	var targets []target
	switch d.act {
	case actForward, actStateless:
		targets = []target{d.target}
	case actFork:
		targets = d.targets
	case actBackends:
		targets = p.backendTargets(req)
	}
	for _, tg := range targets {
		out := req.Clone()
		p.prepare(out, req, tg, p.branchFor(req, tg, 0))
		wire := out.String()
		again, err := sip.ParseMessage([]byte(wire))
		if err != nil {
			t.Fatalf("hapbx would send what does not parse (%v):\n%s", err, wire)
		}
		for _, h := range singleValued {
			n := len(again.GetHeaders(h))
			if n > 1 || (n == 0 && h != "Content-Length" && h != "Content-Type") {
				t.Fatalf("hapbx would send %d %s headers:\n%s", n, h, wire)
			}
		}
	}
}

// seedRFC4475 adds every RFC 4475 message to f's corpus.
func seedRFC4475(f *testing.F) {
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for _, fn := range files {
		if data, err := os.ReadFile(fn); err == nil {
			f.Add(data)
		}
	}
}

// fuzzProxy is a proxy that is never started, over a UDP and a TCP backend.
func fuzzProxy(f *testing.F) *Proxy {
	cfg := DefaultConfig()
	cfg.Listen = []string{"udp://127.0.2.1:5060", "tcp://127.0.2.1:5060"}
	cfg.Advertise = "127.0.2.1"
	be := []Backend{{Name: "a", Address: "127.0.2.11:5060", Transport: "udp"}, {Name: "b", Address: "127.0.2.12:5060", Transport: "tcp"}}
	p, err := New(cfg, be, NewStaticRouter([]string{"a", "b"}, true), zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	return p
}
