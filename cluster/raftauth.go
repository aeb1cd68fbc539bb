package cluster

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// authLayer is a raft.StreamLayer over TCP whose connections start with a mutual
// challenge-response proof that both ends hold a gossip key from secret_file, so a host
// that merely reaches the raft port cannot vote, append entries or install snapshots.
// It authenticates; it does not encrypt (raft carries only votes, the small published
// values and heartbeats). Handshake, 16-byte nonces, K = HMAC-SHA256(gossip key,
// "hapbx raft v1") for each key of the ring:
//
//	dialer -> listener: "HRA1" nc
//	listener -> dialer: ns  HMAC(Kprimary, "S" nc ns)
//	dialer -> listener: HMAC(Kprimary, "C" nc ns)
//
// Each side accepts a MAC made with any of its keys (key rotation).
type authLayer struct {
	ln   net.Listener
	adv  net.Addr
	keys [][]byte // derived; keys[0] from the primary key
}

const (
	authMagic   = "HRA1"
	authTimeout = 2 * time.Second
)

var errAuth = errors.New("raft peer failed the secret_file handshake")

func newAuthLayer(bind string, adv net.Addr, gossipKeys [][]byte, primary []byte) (*authLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	l := &authLayer{ln: ln, adv: adv}
	derive := func(k []byte) []byte {
		m := hmac.New(sha256.New, k)
		m.Write([]byte("hapbx raft v1"))
		return m.Sum(nil)
	}
	l.keys = append(l.keys, derive(primary))
	for _, k := range gossipKeys {
		if !bytes.Equal(k, primary) {
			l.keys = append(l.keys, derive(k))
		}
	}
	return l, nil
}

func (l *authLayer) Addr() net.Addr {
	if l.adv != nil {
		return l.adv
	}
	return l.ln.Addr()
}
func (l *authLayer) Close() error { return l.ln.Close() }

// Accept returns at once; the handshake runs on the connection's first Read or Write,
// in raft's per-connection goroutine, so a silent client cannot stall the accept loop.
func (l *authLayer) Accept() (net.Conn, error) {
	c, err := l.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &authConn{Conn: c, l: l}, nil
}

func (l *authLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	// The handshake is not bound by raft's RPC timeout (timeout, H/2): on a loaded host
	// it can take longer than that, and a handshake given up makes a failed RPC (a lost
	// vote, or a connection warmConns could not open) for the sake of a few ms.
	if err := l.clientHandshake(c, authTimeout); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	return c, nil
}

func mac(k []byte, side byte, nc, ns []byte) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte{side})
	m.Write(nc)
	m.Write(ns)
	return m.Sum(nil)
}

func (l *authLayer) verify(side byte, nc, ns, got []byte) bool {
	for _, k := range l.keys {
		if hmac.Equal(mac(k, side, nc, ns), got) {
			return true
		}
	}
	return false
}

func (l *authLayer) clientHandshake(c net.Conn, timeout time.Duration) error {
	if timeout <= 0 || timeout > authTimeout {
		timeout = authTimeout
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	nc := make([]byte, 16)
	_, _ = rand.Read(nc)
	if _, err := c.Write(append([]byte(authMagic), nc...)); err != nil {
		return err
	}
	resp := make([]byte, 16+32)
	if _, err := io.ReadFull(c, resp); err != nil {
		return fmt.Errorf("%w: %v", errAuth, err)
	}
	ns := resp[:16]
	if !l.verify('S', nc, ns, resp[16:]) {
		return errAuth
	}
	_, err := c.Write(mac(l.keys[0], 'C', nc, ns))
	return err
}

type authConn struct {
	net.Conn
	l    *authLayer
	once sync.Once
	err  error
}

func (c *authConn) handshake() error {
	c.once.Do(func() {
		_ = c.Conn.SetDeadline(time.Now().Add(authTimeout))
		defer c.Conn.SetDeadline(time.Time{})
		hello := make([]byte, len(authMagic)+16)
		_, err := io.ReadFull(c.Conn, hello)
		if err == io.EOF {
			// Closed before a byte: no attempt to authenticate, but a follower's check
			// that this node lives (leaderGone). Not worth an error line.
			c.err = io.EOF
			return
		}
		if err != nil || string(hello[:len(authMagic)]) != authMagic {
			c.err = errAuth
			return
		}
		nc := hello[len(authMagic):]
		ns := make([]byte, 16)
		_, _ = rand.Read(ns)
		if _, err := c.Conn.Write(append(ns, mac(c.l.keys[0], 'S', nc, ns)...)); err != nil {
			c.err = err
			return
		}
		got := make([]byte, 32)
		if _, err := io.ReadFull(c.Conn, got); err != nil || !c.l.verify('C', nc, ns, got) {
			c.err = fmt.Errorf("%w: from %s", errAuth, c.Conn.RemoteAddr())
		}
	})
	if c.err != nil {
		c.Conn.Close()
	}
	return c.err
}

func (c *authConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *authConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
