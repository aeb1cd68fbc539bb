package lab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Prober sends SIP OPTIONS to the VIP from the phones namespace, each one a new
// transaction, and records when answers arrive. It is the lab's "client": the
// first answer after an event is the first SIP transaction the service completed.
type Prober struct {
	conn net.PacketConn
	dst  *net.UDPAddr
	mu   sync.Mutex
	sent map[string]time.Time // Call-ID -> send time
	ans  []Answer
	done chan struct{}
}

// Answer is one response seen by the Prober.
type Answer struct {
	Sent, At time.Time
	Code     int
}

// NewProber opens a UDP socket in host h's namespace aimed at the VIP.
func (l *Lab) NewProber(h string) (*Prober, error) {
	var conn net.PacketConn
	err := InNS(NS(h), func() (err error) {
		conn, err = net.ListenPacket("udp4", Hosts[h]+":0")
		return err
	})
	if err != nil {
		return nil, err
	}
	p := &Prober{conn: conn, dst: &net.UDPAddr{IP: net.ParseIP(VIP), Port: SIPPort}, sent: map[string]time.Time{}, done: make(chan struct{})}
	go p.read()
	return p, nil
}

// Close stops the prober.
func (p *Prober) Close() { p.conn.Close(); <-p.done }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Send sends one OPTIONS (a new transaction) and returns its send time.
func (p *Prober) Send() (time.Time, error) {
	at, _, err := p.send()
	return at, err
}

// send sends one OPTIONS and returns its send time and bytes.
func (p *Prober) send() (time.Time, []byte, error) {
	local := p.conn.LocalAddr().String()
	cid := randHex(8) + "@hlab"
	msg := "OPTIONS sip:" + VIP + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK" + randHex(8) + ";rport\r\n" +
		"Max-Forwards: 70\r\nFrom: <sip:probe@" + local + ">;tag=" + randHex(4) + "\r\n" +
		"To: <sip:" + VIP + ">\r\nCall-ID: " + cid + "\r\nCSeq: 1 OPTIONS\r\n" +
		"Contact: <sip:probe@" + local + ">\r\nContent-Length: 0\r\n\r\n"
	now := time.Now()
	p.mu.Lock()
	p.sent[cid] = now
	p.mu.Unlock()
	_, err := p.conn.WriteTo([]byte(msg), p.dst)
	return now, []byte(msg), err
}

func (p *Prober) read() {
	defer close(p.done)
	buf := make([]byte, 65535)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		at := time.Now()
		msg := string(buf[:n])
		if !strings.HasPrefix(msg, "SIP/2.0 ") {
			continue
		}
		code, _ := strconv.Atoi(strings.Fields(msg)[1])
		cid := header(msg, "Call-ID", "i")
		p.mu.Lock()
		if s, ok := p.sent[cid]; ok && code >= 200 {
			delete(p.sent, cid)
			p.ans = append(p.ans, Answer{Sent: s, At: at, Code: code})
		}
		p.mu.Unlock()
	}
}

func header(msg, long, short string) string {
	for _, line := range strings.Split(msg, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if strings.EqualFold(k, long) || strings.EqualFold(k, short) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// FirstAnswerAfter sends an OPTIONS every interval until one sent at or after
// t0 is answered, or until d passed; it returns when that answer arrived.
func (p *Prober) FirstAnswerAfter(t0 time.Time, interval, d time.Duration) (time.Time, error) {
	end := time.Now().Add(d)
	next := time.Now()
	for time.Now().Before(end) {
		if !time.Now().Before(next) {
			if _, err := p.Send(); err != nil {
				return time.Time{}, err
			}
			next = next.Add(interval)
		}
		p.mu.Lock()
		for _, a := range p.ans {
			if !a.Sent.Before(t0) {
				p.mu.Unlock()
				return a.At, nil
			}
		}
		p.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no OPTIONS sent after %s answered through the VIP within %s", t0.Format("15:04:05.000"), d)
}

// Ask sends one OPTIONS transaction and waits up to d for its answer,
// retransmitting it as a UA does over UDP (RFC 3261 Timer E, a non-INVITE's:
// 500 ms, then doubling): a datagram sent as the VIP moves may reach the old holder,
// or leave before the phones' ARP entry names the new one, and a phone
// would not give up on it.
func (p *Prober) Ask(d time.Duration) (int, error) {
	s, msg, err := p.send()
	if err != nil {
		return 0, err
	}
	end := time.Now().Add(d)
	timerE := 500 * time.Millisecond
	resend := s.Add(timerE)
	for time.Now().Before(end) {
		if time.Now().After(resend) {
			_, _ = p.conn.WriteTo(msg, p.dst)
			timerE *= 2
			resend = resend.Add(timerE)
		}
		p.mu.Lock()
		for _, a := range p.ans {
			if a.Sent.Equal(s) {
				p.mu.Unlock()
				return a.Code, nil
			}
		}
		p.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	return 0, fmt.Errorf("OPTIONS to %s unanswered within %s", VIP, d)
}

// Failover is one measured SIGKILL of the VIP holder.
type Failover struct {
	Killed, Twin string
	// VIP: SIGKILL until the VIP is on the twin's interface.
	VIP time.Duration
	// SIP: SIGKILL until the first OPTIONS sent after the kill is answered through the VIP.
	SIP time.Duration
}

// KillHolder SIGKILLs the current VIP holder and measures how long until the
// twin holds the VIP and until the prober's first new transaction through the
// VIP is answered (OPTIONS every 10 ms from the phones namespace).
func (l *Lab) KillHolder(pr *Prober, within time.Duration) (Failover, error) {
	h, err := l.WaitHolder("", 5*time.Second)
	if err != nil {
		return Failover{}, err
	}
	f := Failover{Killed: h, Twin: Twin(h)}
	t0 := time.Now()
	type res struct {
		at  time.Time
		err error
	}
	sipc := make(chan res, 1)
	go func() {
		at, err := pr.FirstAnswerAfter(t0, 10*time.Millisecond, within)
		sipc <- res{at, err}
	}()
	l.KillProxy(h)
	var vipErr error
	for {
		if l.HasVIP(f.Twin) {
			f.VIP = time.Since(t0)
			break
		}
		if time.Since(t0) > within {
			vipErr = fmt.Errorf("VIP not on %s within %s of SIGKILL of %s", f.Twin, within, h)
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	r := <-sipc
	if r.err == nil {
		f.SIP = r.at.Sub(t0)
	}
	if vipErr != nil {
		return f, vipErr
	}
	return f, r.err
}
