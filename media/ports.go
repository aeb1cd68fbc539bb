package media

import "fmt"

// portPool hands out even RTP ports (RTCP = RTP+1) in FIFO order, so a port
// just freed is reused last and stray packets of an ended call rarely reach a
// new one. Not safe for concurrent use; the Relay's mutex guards it.
type portPool struct {
	first, last int
	used        []bool // by pair index
	inQ         []bool // the pair index sits in queue
	queue       []int  // ring of pair indexes
	head, n     int
}

func newPortPool(first, last int) *portPool {
	pairs := (last-first)/2 + 1
	p := &portPool{first: first, last: last, used: make([]bool, pairs), inQ: make([]bool, pairs), queue: make([]int, pairs)}
	for i := range pairs {
		p.queue[i] = i
		p.inQ[i] = true
	}
	p.n = pairs
	return p
}

func (p *portPool) size() int { return len(p.used) }

// get pops the next free pair; ok is false when none is left.
func (p *portPool) get() (port int, ok bool) {
	for p.n > 0 {
		i := p.queue[p.head]
		p.head = (p.head + 1) % len(p.queue)
		p.n--
		p.inQ[i] = false
		if p.used[i] { // taken by take() while queued
			continue
		}
		p.used[i] = true
		return p.first + 2*i, true
	}
	return 0, false
}

// take reserves a specific pair (Import on a standby).
func (p *portPool) take(port int) error {
	i, err := p.index(port)
	if err != nil {
		return err
	}
	if p.used[i] {
		return fmt.Errorf("port %d: already in use by another session", port)
	}
	p.used[i] = true
	return nil
}

// put returns a pair; putting a free pair is a no-op.
func (p *portPool) put(port int) {
	i, err := p.index(port)
	if err != nil || !p.used[i] {
		return
	}
	p.used[i] = false
	if !p.inQ[i] {
		p.queue[(p.head+p.n)%len(p.queue)] = i
		p.n++
		p.inQ[i] = true
	}
}

func (p *portPool) index(port int) (int, error) {
	if port < p.first || port > p.last || (port-p.first)%2 != 0 {
		return 0, fmt.Errorf("port %d: not an RTP port of range %d-%d", port, p.first, p.last+1)
	}
	return (port - p.first) / 2, nil
}
