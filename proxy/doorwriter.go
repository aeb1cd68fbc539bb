package proxy

import (
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// The door's stateless 503s over UDP leave from one goroutine through a
// short queue, not from the transport's read loop: the socket's write lock
// is shared with every transaction's sends, and under a storm thousands of
// them queue on it. A read loop waiting there reads nothing meanwhile: the
// kernel drops what arrives, the backends' responses too, so the
// transactions let in stay pending (and in memory) longer and the callers
// retransmit. When the queue is full the 503 is not sent (the caller
// retransmits, or gives up: either way nothing is held for it here),
// counted by reason in hapbx_proxy_shed_unanswered_total.

// doorQueue is how many 503s may wait for the socket; at a few µs a
// write, a fraction of a second's worth.
const doorQueue = 512

// doorReply is one 503 waiting for the socket.
type doorReply struct {
	conn   sip.Connection // the listener's, referenced (Pool.Get): released once written
	res    *sip.Response
	branch string // an INVITE's branch: its hop-by-hop ACK is absorbed; "" otherwise
	method sip.RequestMethod
}

// startDoorWriter starts the goroutine writing the door's 503s; it ends
// when stop is closed.
func (p *Proxy) startDoorWriter(stop <-chan struct{}) {
	p.door.replies = make(chan doorReply, doorQueue)
	p.serveWG.Add(1)
	go func() {
		defer p.serveWG.Done()
		for {
			select {
			case r := <-p.door.replies:
				p.writeDoorReply(r)
			case <-stop:
				return
			}
		}
	}()
}

func (p *Proxy) writeDoorReply(r doorReply) {
	defer r.conn.TryClose()
	if err := r.conn.WriteMsg(r.res); err != nil {
		p.log.Debug("503 at the door not sent", zap.Error(err))
		return
	}
	if r.branch != "" {
		p.non2xx.put(r.branch, "")
	}
	p.m.responses.WithLabelValues(methodLabel(r.method), "503").Inc()
}

// queueDoorReply hands r to the writer; false (r released) when its queue
// is full, or there is no writer (a proxy that never listened).
func (p *Proxy) queueDoorReply(r doorReply) bool {
	select {
	case p.door.replies <- r:
		return true
	default:
		r.conn.TryClose()
		return false
	}
}
