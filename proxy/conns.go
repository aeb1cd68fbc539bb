package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// connGuard bounds the TCP and TLS connections phones and trunks open to
// the proxy, for every stream listener at once: how many in total and per
// source address (refused at Accept, before sipgo gives them a goroutine
// and a read buffer), how long a started message may take to arrive
// (read_timeout), and how long a connection may stay silent (idle_timeout).
// sipgo v1.7.2 has only a read deadline per Read, which would cut a
// phone's quiet registration connection as readily as a stalled message:
// the guard frames the stream itself (framer) to tell the two apart.
type connGuard struct {
	cfg TCPConfig
	log *zap.Logger
	m   *metrics
	// inUse reports whether a dialog still reaches a phone over the
	// connection from raddr: such a connection is kept past idle_timeout.
	inUse func(raddr string) bool
	// intake returns what sipgo should see of one framed message (nil:
	// nothing) and whether the stream cannot be framed after it; nil:
	// messages go through as read.
	intake func(msg []byte) (out []byte, unframed bool)
	// maxMessage caps a message held while it arrives (max_message_size).
	maxMessage int
	// viaMark starts the synthetic branches intake adds, taken out of what
	// is written back (restoreVia).
	viaMark []byte

	mu    sync.Mutex
	total int
	// bySource holds only sources with an open connection: never more
	// entries than max_connections.
	bySource map[netip.Addr]int
}

func newConnGuard(cfg TCPConfig, log *zap.Logger, m *metrics, inUse func(string) bool) *connGuard {
	return &connGuard{cfg: cfg, log: log, m: m, inUse: inUse, bySource: map[netip.Addr]int{}}
}

// admit takes a slot for a connection from src; it returns the reason of
// a refusal, or "".
func (g *connGuard) admit(src netip.Addr) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.total >= g.cfg.MaxConnections:
		return "max_connections"
	case g.bySource[src] >= g.cfg.MaxPerSource:
		return "max_per_source"
	}
	g.total++
	g.bySource[src]++
	g.m.conns.Inc()
	return ""
}

func (g *connGuard) release(src netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if g.bySource[src] <= 1 {
		delete(g.bySource, src)
	} else {
		g.bySource[src]--
	}
	g.m.conns.Dec()
}

// listener wraps a bound TCP listener for sipgo's ServeTCP or ServeTLS
// (with tlsConf, the TLS handshake is done under read_timeout).
func (g *connGuard) listener(ln net.Listener, tlsConf *tls.Config) net.Listener {
	return &guardedListener{Listener: ln, g: g, tls: tlsConf}
}

type guardedListener struct {
	net.Listener
	g   *connGuard
	tls *tls.Config
}

// Accept refuses connections over the limits by closing them at once and
// returns the next one within them. A transient failure (out of file
// descriptors) is waited out rather than returned: sipgo stops serving
// the listener on any Accept error.
func (l *guardedListener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !transientAccept(err) {
				return nil, err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.g.log.Warn("SIP connection not accepted, retrying", zap.Duration("in", backoff), zap.Error(err))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		src := sourceOf(c.RemoteAddr())
		if reason := l.g.admit(src); reason != "" {
			l.g.m.connRefused.WithLabelValues(reason).Inc()
			l.g.log.Debug("SIP connection refused", zap.String("reason", reason), zap.Stringer("source", c.RemoteAddr()))
			_ = c.Close()
			continue
		}
		gc := &guardedConn{Conn: c, g: l.g, src: src, wrote: make(chan struct{}, 1)}
		if l.tls != nil {
			gc.tls = tls.Server(c, l.tls)
			gc.Conn = gc.tls
		}
		return gc, nil
	}
}

func transientAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ECONNABORTED)
}

func sourceOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}

// guardedConn is one accepted connection. Only sipgo's reading goroutine
// calls Read, so the framing state needs no lock.
//
// Read hands sipgo whole messages as intake returns them: a read made of
// whole messages that pass goes on in place; the start of a message
// whose end has not arrived is held (copied) until it has, and what intake
// rewrote or what follows it waits in out for the next Read.
type guardedConn struct {
	net.Conn
	g         *connGuard
	src       netip.Addr
	tls       *tls.Conn // nil over TCP
	ready     bool      // handshake done (TLS), first deadline set
	inMessage bool      // the deadline is the current message's
	f         framer
	held      []byte        // the current message's bytes so far, when held
	out       []byte        // what sipgo gets next, before anything read
	closing   string        // why the connection closes once out is read
	answered  bool          // and after a write: the answer to a refusal in out
	wrote     chan struct{} // a Write happened (buffered, 1)
	closeOnce sync.Once
}

// Read reads on, closing the connection (io.EOF to sipgo, which then
// forgets it quietly) when a started message or the TLS handshake is not
// complete within read_timeout, or when nothing arrives for idle_timeout
// and no dialog uses the connection, or when the stream cannot be framed
// (after the answer to the message that says so has been written).
func (c *guardedConn) Read(b []byte) (int, error) {
	for {
		if len(c.out) > 0 {
			n := copy(b, c.out)
			c.out = c.out[n:]
			return n, nil
		}
		if c.closing != "" {
			return 0, c.close()
		}
		n, err := c.read(b)
		if n == 0 {
			return n, err
		}
		n, started := c.take(b[:n])
		c.moveDeadline(started)
		if n > 0 || err != nil {
			return n, err
		}
		// Nothing goes on in place: out (copied into b, whose bytes take
		// is done with), the close, or the next read.
	}
}

// read is one read of the connection under the deadlines.
func (c *guardedConn) read(b []byte) (int, error) {
	if !c.ready {
		if err := c.start(); err != nil {
			return 0, err
		}
	}
	for {
		n, err := c.Conn.Read(b)
		if n > 0 {
			return n, err
		}
		if !isTimeout(err) {
			return n, err
		}
		if !c.inMessage && c.g.inUse(c.RemoteAddr().String()) {
			_ = c.Conn.SetReadDeadline(time.Now().Add(c.g.cfg.IdleTimeout))
			continue
		}
		reason := "idle_timeout"
		if c.inMessage {
			reason = "read_timeout"
		}
		c.closed(reason)
		return 0, io.EOF
	}
}

func (c *guardedConn) closed(reason string) {
	c.g.m.connClosed.WithLabelValues(reason).Inc()
	c.g.log.Debug("SIP connection closed", zap.String("reason", reason), zap.Stringer("source", c.RemoteAddr()))
}

// take runs intake on every message data (the read just made into sipgo's
// buffer) completes, and returns how many bytes at its start sipgo reads
// as they are; the rest of what it must read is left in out.
func (c *guardedConn) take(data []byte) (keep int, started bool) {
	moved := len(c.held) > 0 // from the first byte, what sipgo reads is in out
	for i := 0; i < len(data); {
		start := i
		if !c.f.inMessage() {
			for i < len(data) && (data[i] == '\r' || data[i] == '\n') {
				i++ // keep-alives go on as they are
			}
			if i == len(data) {
				if moved {
					c.out = append(c.out, data[start:]...)
				} else {
					keep = i
				}
				break
			}
			started = true
		}
		n, ended := c.f.next(data[i:])
		msgAt := i
		i += n
		if !ended {
			// The start of a message: held until its end arrives.
			if !moved {
				keep += msgAt - start
			} else {
				c.out = append(c.out, data[start:msgAt]...)
			}
			c.held = append(c.held, data[msgAt:i]...)
			if len(c.held) > c.g.maxMessage {
				c.held = nil // closed, as sipgo does (ErrMessageTooLarge)
				c.closing = "too_large"
				return keep, started
			}
			break
		}
		msg := data[msgAt:i]
		if len(c.held) > 0 {
			msg = append(c.held, msg...)
			c.held = nil
			if len(msg) > c.g.maxMessage {
				c.closing = "too_large"
				return keep, started
			}
		}
		res, unframed := msg, false
		if c.g.intake != nil {
			res, unframed = c.g.intake(msg)
		}
		if !moved && len(res) == len(msg) && len(msg) > 0 && &res[0] == &msg[0] {
			keep = i // it goes on in place
			continue
		}
		if !moved {
			keep += msgAt - start
			moved = true
		} else {
			c.out = append(c.out, data[start:msgAt]...)
		}
		c.out = append(c.out, res...)
		if unframed {
			c.closing = "unframed"
			if c.answered = res != nil && !bytes.HasPrefix(res, []byte("ACK ")); c.answered {
				// The answer is written on this connection: drop the
				// signal of any write before it.
				select {
				case <-c.wrote:
				default:
				}
			}
			return keep, started
		}
	}
	return keep, started
}

// start runs the TLS handshake under read_timeout (a client that stalls in
// it has started a message too) and arms the idle deadline.
func (c *guardedConn) start() error {
	if c.tls != nil {
		_ = c.tls.SetDeadline(time.Now().Add(c.g.cfg.ReadTimeout))
		if err := c.tls.Handshake(); err != nil {
			c.g.m.connClosed.WithLabelValues("tls_handshake").Inc()
			c.g.log.Debug("SIP connection closed", zap.String("reason", "tls_handshake"), zap.Stringer("source", c.RemoteAddr()), zap.Error(err))
			return io.EOF
		}
		_ = c.tls.SetWriteDeadline(time.Time{})
	}
	c.ready = true
	return c.Conn.SetReadDeadline(time.Now().Add(c.g.cfg.IdleTimeout))
}

// moveDeadline moves the read deadline with the framing: a message that
// starts must end within read_timeout of its first read; between messages
// (keep-alive CRLFs included) the idle deadline restarts.
func (c *guardedConn) moveDeadline(started bool) {
	switch {
	case c.f.inMessage() && (started || !c.inMessage):
		c.inMessage = true
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.g.cfg.ReadTimeout))
	case !c.f.inMessage():
		c.inMessage = false
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.g.cfg.IdleTimeout))
	}
}

// close ends a stream that cannot be framed on (io.EOF to sipgo); when
// the refusal of the message that says so went to sipgo, once its answer
// has been written (or read_timeout has passed).
func (c *guardedConn) close() error {
	if c.answered {
		t := time.NewTimer(c.g.cfg.ReadTimeout)
		select {
		case <-c.wrote:
		case <-t.C:
		}
		t.Stop()
	}
	c.closed(c.closing)
	return io.EOF
}

// Write writes b without the synthetic RFC 2543 branches intake gave
// (rfc2543.go), and says a write happened (closeUnframed waits for one).
func (c *guardedConn) Write(b []byte) (int, error) {
	out := b
	if len(c.g.viaMark) > 0 {
		out = withoutSyntheticBranch(b, c.g.viaMark)
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	select {
	case c.wrote <- struct{}{}:
	default:
	}
	return len(b), nil // sipgo checks that all it wrote went
}

// Close closes the connection and frees its slot (once: sipgo may close
// a connection twice).
func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.g.release(c.src) })
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// framer follows SIP message boundaries in a stream (RFC 3261 §7.5,
// §18.3) as cheaply as it can: header lines up to the empty one, the
// Content-Length value (or its compact form l; the last one, as sipgo's
// stream parser takes it), then that many body bytes. A Content-Length
// that is not a number ends the message at its header section: intake
// refuses it and the connection closes.
type framer struct {
	state    framerState
	name     [16]byte // the current header name, lowercased, while it is read
	nameLen  int      // > len(name): too long to be Content-Length
	isLength bool     // the current header is Content-Length
	badLen   bool     // its value is not a number
	length   int
	bodyLeft int
}

type framerState uint8

const (
	between    framerState = iota // no message started; CR and LF are keep-alives
	lineStart                     // at the start of a header line
	headerName                    // reading a header name up to ':'
	lineValue                     // reading the start line or a header value up to CR
	lineEnd                       // CR seen, LF expected
	headersEnd                    // CR at the start of a line: the empty line
	body
)

// maxFramedLength caps a Content-Length read by the framer: sipgo refuses
// anything over max_message_size (at most 65535) long before.
const maxFramedLength = 1 << 20

func (f *framer) inMessage() bool { return f.state != between }

// feed consumes data and reports whether a message started in it.
func (f *framer) feed(data []byte) (started bool) {
	for len(data) > 0 {
		if !f.inMessage() {
			data = bytes.TrimLeft(data, "\r\n")
			started = started || len(data) > 0
		}
		n, _ := f.next(data)
		data = data[n:]
	}
	return started
}

// next consumes data up to the end of the current message (or of data):
// it returns how many bytes it took and whether a message ended with them.
// Outside a message, CR and LF are taken as keep-alives.
func (f *framer) next(data []byte) (int, bool) {
	for i := 0; i < len(data); i++ {
		ch := data[i]
		switch f.state {
		case between:
			if ch == '\r' || ch == '\n' {
				continue
			}
			f.length, f.isLength, f.badLen = 0, false, false
			f.state = lineValue // the start line
		case lineStart:
			switch ch {
			case '\r':
				f.state = headersEnd
			case ' ', '\t':
				f.state = lineValue // a folded continuation of the previous header
			default:
				f.isLength = false
				f.nameLen = 0
				f.state = headerName
				f.addName(ch)
			}
		case headerName:
			switch ch {
			case ':':
				f.isLength = f.nameIs("content-length") || f.nameIs("l")
				if f.isLength {
					f.length, f.badLen = 0, false
				}
				f.state = lineValue
			case '\r':
				f.state = lineEnd
			case ' ', '\t':
			default:
				f.addName(ch)
			}
		case lineValue:
			switch {
			case ch == '\r':
				f.state = lineEnd
			case !f.isLength:
			case ch >= '0' && ch <= '9':
				f.length = min(f.length*10+int(ch-'0'), maxFramedLength)
			case ch != ' ' && ch != '\t':
				f.badLen = true
			}
		case lineEnd:
			f.state = lineStart
			if ch != '\n' {
				i-- // not a line end after all: read it as the next line's
			}
		case headersEnd:
			end := i + 1
			if ch != '\n' {
				end = i
			}
			if f.length == 0 || f.badLen {
				f.state = between
				return end, true
			}
			f.state, f.bodyLeft = body, f.length
			i = end - 1
		case body:
			n := min(f.bodyLeft, len(data)-i)
			f.bodyLeft -= n
			i += n - 1
			if f.bodyLeft == 0 {
				f.state = between
				return i + 1, true
			}
		}
	}
	return len(data), false
}

func (f *framer) addName(ch byte) {
	if f.nameLen < len(f.name) {
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		f.name[f.nameLen] = ch
	}
	f.nameLen++
}

func (f *framer) nameIs(s string) bool {
	return f.nameLen == len(s) && string(f.name[:f.nameLen]) == s
}
