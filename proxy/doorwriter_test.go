package proxy

import (
	"bytes"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// stuckConn is a UDP listener's connection whose socket is saturated: a
// write waits until release is closed. A write made from the transport's
// read filter (doorFilter on the stack) is counted in inRead and returns
// at once, so a test of a proxy that writes there fails instead of hanging.
type stuckConn struct {
	laddr   net.Addr
	release chan struct{}
	inRead  atomic.Int64
	written chan struct{}
	refs    atomic.Int64
}

func (c *stuckConn) LocalAddr() net.Addr { return c.laddr }
func (c *stuckConn) Ref(i int) int       { return int(c.refs.Add(int64(i))) }
func (c *stuckConn) TryClose() (int, error) {
	return int(c.refs.Add(-1)), nil
}
func (c *stuckConn) Close() error { return nil }
func (c *stuckConn) WriteMsg(sip.Message) error {
	buf := make([]byte, 64<<10)
	if bytes.Contains(buf[:runtime.Stack(buf, false)], []byte(".doorFilter(")) {
		c.inRead.Add(1)
		return nil
	}
	<-c.release
	c.written <- struct{}{}
	return nil
}

// Issue 13.7(b): under a REGISTER storm, while hapbx sheds, the UDP read
// loop never waits on the socket to send the door's 503s: they leave from
// the door's writer through a bounded queue, and past it they are dropped
// and counted (the caller retransmits). A read loop that wrote them itself
// queued behind every transaction's sends on the socket's write lock and
// read nothing meanwhile, the backends' responses included.
func TestDoorRepliesLeaveTheReadLoop(t *testing.T) {
	be, _ := silentBackend(t)
	load := &fakeLoad{}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil,
		WithDoor(Door{Load: load}))
	// A listener address of the test's own, so the real one is untouched.
	laddr := &net.UDPAddr{IP: net.ParseIP(proxyIP), Port: 1}
	conn := &stuckConn{laddr: laddr, release: make(chan struct{}), written: make(chan struct{}, 4*doorQueue)}
	p.ua.TransportLayer().Pool("udp").Add(laddr.String(), conn)
	var once sync.Once
	release := func() { once.Do(func() { close(conn.release) }) }
	t.Cleanup(release) // before the proxy closes (its writer waits here)

	load.shedding.Store(true)
	const storm = 4 * doorQueue
	for i := range storm {
		peer := net.JoinHostPort(phoneIP, strconv.Itoa(20000+i))
		msg := strings.ReplaceAll(strings.ReplaceAll(doorRequest("REGISTER", "sip:"+p.addr, ""), "PEER", peer), "\n", "\r\n")
		msg = strings.Replace(msg, "Call-ID: door-", "Call-ID: storm"+strconv.Itoa(i)+"-", 1)
		info := sip.TransportReadProps{Transport: "UDP", LocalAddr: laddr, RemoteAddr: &net.UDPAddr{IP: net.ParseIP(phoneIP), Port: 20000 + i}}
		if out, err := p.doorFilter(info, []byte(msg)); err != nil || out != nil {
			t.Fatalf("REGISTER %d of the storm while shedding went in (%q, %v)", i, out, err)
		}
	}
	if n := conn.inRead.Load(); n != 0 {
		t.Fatalf("the read filter wrote %d 503s itself, want 0 (the door's writer sends them)", n)
	}
	if n := testutil.ToFloat64(p.door.shed.WithLabelValues(shedMemory)); n != storm {
		t.Fatalf("shed{memory} = %v, want %d", n, storm)
	}
	// The writer holds one 503 (stuck on the socket), the queue doorQueue;
	// the rest were dropped, counted.
	unanswered := int(testutil.ToFloat64(p.door.unanswered.WithLabelValues(shedMemory)))
	if unanswered < storm-doorQueue-1 || unanswered > storm-doorQueue {
		t.Fatalf("shed_unanswered{memory} = %d, want %d or %d", unanswered, storm-doorQueue-1, storm-doorQueue)
	}
	release()
	for range storm - unanswered {
		<-conn.written // every 503 queued is sent once the socket frees
	}
}

// Issue 13.7(b): a new request udpDoor let in before shedding started (or
// below max_transactions) whose handler runs only after it (a backlog of
// goroutines while hapbx is short of CPU) is refused 503 there, through its
// server transaction, instead of becoming pending; an in-dialog request
// still passes.
func TestUDPDoorCheckedAgainInHandle(t *testing.T) {
	be, _ := silentBackend(t)
	load := &fakeLoad{}
	p := startProxyWith(t, []string{"udp"}, []Backend{be}, NewStaticRouter([]string{be.Name}, false), nil,
		WithDoor(Door{Load: load, MaxTransactions: 2}))
	request := func(toTag string) *sip.Request {
		msg := strings.ReplaceAll(strings.ReplaceAll(doorRequest("REGISTER", "sip:"+p.addr, toTag), "PEER", phoneIP+":5062"), "\n", "\r\n")
		m, err := sip.ParseMessage([]byte(msg))
		if err != nil {
			t.Fatal(err)
		}
		req := m.(*sip.Request)
		req.SetTransport("UDP")
		req.SetSource(phoneIP + ":5062")
		return req
	}
	for _, c := range []struct {
		what     string
		shedding bool
		pending  int64
		toTag    string
		in       bool
	}{
		{"a new REGISTER, no load", false, 0, "", true},
		{"a new REGISTER while shedding", true, 0, "", false},
		{"a new REGISTER at max_transactions", false, 2, "", false},
		{"an in-dialog request while shedding", true, 2, "x", true},
	} {
		load.shedding.Store(c.shedding)
		p.door.pending.Store(c.pending)
		tx := &fakeServerTx{got: make(chan *sip.Response, 1), done: make(chan struct{})}
		if in := p.streamDoor(request(c.toTag), tx); in != c.in {
			t.Errorf("%s over UDP: let in %v, want %v", c.what, in, c.in)
			continue
		}
		if !c.in {
			if res := <-tx.got; res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
				t.Errorf("%s over UDP: answered %d, want 503 with Retry-After", c.what, res.StatusCode)
			}
		}
	}
	p.door.pending.Store(0)
}
