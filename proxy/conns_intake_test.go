package proxy

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// chunkConn is a connection whose reads return chunks, one each, then
// io.EOF; it records what is written.
type chunkConn struct {
	net.Conn
	chunks [][]byte
	wrote  []byte
}

func (c *chunkConn) Read(b []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.chunks[0])
	if c.chunks[0] = c.chunks[0][n:]; len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func (c *chunkConn) Write(b []byte) (int, error) {
	c.wrote = append(c.wrote, b...)
	return len(b), nil
}

func (c *chunkConn) SetReadDeadline(time.Time) error { return nil }
func (c *chunkConn) RemoteAddr() net.Addr            { return &net.TCPAddr{IP: net.ParseIP(phoneIP), Port: 5060} }

// streamed returns what sipgo reads (with its own 64 KiB buffer) from a
// wrapped connection delivering chunks, up to io.EOF, and the reads it
// took.
func streamed(p *Proxy, chunks ...[]byte) (seen []byte, reads int, gc *guardedConn) {
	var cc []([]byte)
	for _, c := range chunks {
		cc = append(cc, bytes.Clone(c))
	}
	gc = &guardedConn{Conn: &chunkConn{chunks: cc}, g: p.conns, ready: true, wrote: make(chan struct{}, 1)}
	buf := make([]byte, sip.TransportBufferReadSize)
	for {
		n, err := gc.Read(buf)
		if n > 0 {
			reads++
			seen = append(seen, buf[:n]...)
		}
		if err != nil {
			return seen, reads, gc
		}
	}
}

func streamProxy(t testing.TB) *Proxy {
	p := sanityProxy(t)
	p.conns.cfg.ReadTimeout = time.Millisecond // close() waits for no answer here
	return p
}

func tcpInvite() []byte {
	return bytes.Replace(phoneInvite(), []byte("SIP/2.0/UDP"), []byte("SIP/2.0/TCP"), 1)
}

// TestStreamIntake: the connection wrapper hands sipgo the messages of a
// stream as intake returns them, whatever the reads' boundaries; ordinary
// messages go on in place, in one read.
func TestStreamIntake(t *testing.T) {
	p := streamProxy(t)
	inv := tcpInvite()
	opts := []byte(optionsTCP(&net.TCPConn{}, proxyIP+":5060"))
	t.Run("ordinary messages in place", func(t *testing.T) {
		in := append(append(append([]byte{}, inv...), "\r\n\r\n"...), opts...)
		seen, reads, gc := streamed(p, in)
		if !bytes.Equal(seen, in) || reads != 1 || gc.held != nil || len(gc.out) != 0 {
			t.Fatalf("%d reads, held %d, out %d; sipgo read:\n%s", reads, len(gc.held), len(gc.out), seen)
		}
	})
	t.Run("any split", func(t *testing.T) {
		in := append(append([]byte{}, inv...), opts...)
		for i := 1; i < len(in); i++ {
			if seen, _, _ := streamed(p, in[:i], in[i:]); !bytes.Equal(seen, in) {
				t.Fatalf("split at %d: sipgo read:\n%s", i, seen)
			}
		}
	})
	t.Run("unparsable refused, the stream goes on", func(t *testing.T) {
		bad, err := os.ReadFile("testdata/rfc4475/lwsruri.dat")
		if err != nil {
			t.Fatal(err)
		}
		want, why := p.intake(bad, true)
		if why != whyParse || !bytes.Contains(want, []byte(sanityMark+": parse;"+p.markTag)) {
			t.Fatalf("intake(lwsruri) = %q, %q", want, why)
		}
		for _, cut := range []int{len(bad) / 2, len(bad)} {
			seen, _, _ := streamed(p, inv, bad[:cut], append(bytes.Clone(bad[cut:]), opts...))
			if w := string(inv) + string(want) + string(opts); string(seen) != w {
				t.Fatalf("cut %d: sipgo read:\n%s\nwant:\n%s", cut, seen, w)
			}
		}
	})
	t.Run("no Content-Length closes after the refusal", func(t *testing.T) {
		noCL := strings.Replace(string(opts), "Content-Length: 0\r\n", "", 1)
		seen, _, _ := streamed(p, []byte(noCL+string(inv)))
		if !strings.Contains(string(seen), sanityMark+": content_length;") || strings.Contains(string(seen), "INVITE") {
			t.Fatalf("sipgo read:\n%s", seen)
		}
	})
	t.Run("duplicate Content-Length closes after the refusal", func(t *testing.T) {
		dup := strings.Replace(string(opts), "Content-Length: 0\r\n", "Content-Length: 0\r\nl: 0\r\n", 1)
		seen, _, _ := streamed(p, []byte(dup), inv)
		if !strings.Contains(string(seen), sanityMark+": duplicate_header;") || strings.Contains(string(seen), "INVITE") {
			t.Fatalf("sipgo read:\n%s", seen)
		}
	})
	t.Run("too large", func(t *testing.T) {
		big := append([]byte("MESSAGE sip:a SIP/2.0\r\nContent-Length: 70000\r\n\r\n"), make([]byte, 70000)...)
		if seen, _, _ := streamed(p, inv, big); !bytes.Equal(seen, inv) {
			t.Fatalf("sipgo read %d bytes, want the INVITE's %d", len(seen), len(inv))
		}
	})
	t.Run("RFC 2543 branch given and taken out", func(t *testing.T) {
		old := []byte("INVITE sip:202@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.2.50:5070\r\nFrom: <sip:201@example.com>\r\nTo: <sip:202@example.com>\r\nCall-ID: c2543\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
		seen, _, gc := streamed(p, old[:40], old[40:])
		msg, err := sip.ParseMessage(seen)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := msg.(*sip.Request).Via().Params.Get("branch")
		if !strings.HasPrefix(b, p.rfc2543) {
			t.Fatalf("no synthetic branch:\n%s", seen)
		}
		res := sip.NewResponseFromRequest(msg.(*sip.Request), 486, "Busy Here", nil)
		if _, err := gc.Write([]byte(res.String())); err != nil {
			t.Fatal(err)
		}
		if w := gc.Conn.(*chunkConn).wrote; !bytes.Contains(w, []byte("Via: SIP/2.0/TCP 127.0.2.50:5070\r\n")) {
			t.Fatalf("the Via written back is not the phone's:\n%s", w)
		}
	})
}

// FuzzStreamIntake: what sipgo reads from a stream does not depend on how
// it was cut into reads, nothing panics, and what hapbx would send on of
// the requests sipgo parses from it is sound (checkSentOn, as FuzzIntake
// for UDP). Three proxies with one secret: two see the same inputs in the
// same order (intake remembers CANCELs), the third decides.
func FuzzStreamIntake(f *testing.F) {
	files, _ := filepath.Glob("testdata/rfc4475/*.dat")
	for _, fn := range files {
		if data, err := os.ReadFile(fn); err == nil {
			f.Add(data, uint16(len(data)/2))
		}
	}
	f.Add(append(tcpInvite(), "\r\n\r\nOPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabc"...), uint16(1405))
	var ps [3]*Proxy
	for i := range ps {
		cfg := DefaultConfig()
		cfg.Listen = []string{"tcp://127.0.2.1:5060"}
		cfg.Advertise = "127.0.2.1"
		p, err := New(cfg, []Backend{{Name: "a", Address: "127.0.2.11:5060", Transport: "udp"}}, NewStaticRouter([]string{"a"}, true), zap.NewNop(), prometheus.NewRegistry(), WithDialogSecret([]byte("fuzz secret, 32 bytes long......")))
		if err != nil {
			f.Fatal(err)
		}
		p.conns.cfg.ReadTimeout = time.Millisecond
		ps[i] = p
	}
	f.Fuzz(func(t *testing.T, data []byte, at uint16) {
		whole, _, _ := streamed(ps[0], data)
		cut := min(int(at), len(data))
		split, _, _ := streamed(ps[1], data[:cut], data[cut:])
		if !bytes.Equal(whole, split) {
			t.Fatalf("read whole:\n%q\nread in two at %d:\n%q", whole, cut, split)
		}
		parser := sip.NewParser()
		parser.MaxMessageLength = ps[2].cfg.MaxMessageSize
		_ = parser.NewSIPStream().ParseSIPStream(whole, func(msg sip.Message) {
			if req, ok := msg.(*sip.Request); ok {
				checkSentOn(t, ps[2], req, "TCP")
			}
		})
	})
}

// BenchmarkStreamIntake is what the connection wrapper adds to a phone's
// INVITE over TCP (one read, in place).
func BenchmarkStreamIntake(b *testing.B) {
	p := sanityProxy(b)
	data := tcpInvite()
	cc := &chunkConn{}
	gc := &guardedConn{Conn: cc, g: p.conns, ready: true, wrote: make(chan struct{}, 1)}
	buf := make([]byte, sip.TransportBufferReadSize)
	one := [][]byte{data}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		one[0], cc.chunks = data, one
		if n, err := gc.Read(buf); n != len(data) || err != nil {
			b.Fatal(n, err)
		}
	}
}
