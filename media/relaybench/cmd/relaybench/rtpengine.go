package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// rtpengine is the rtpengine daemon (Debian package rtpengine-daemon) in
// user-space mode (--table=-1: no kernel forwarding), in the relay
// namespace, driven over its ng control protocol: bencoded dictionaries
// over UDP, "offer" with the caller's SDP and "answer" with the callee's.
type rtpengine struct {
	cmd  *exec.Cmd
	conn *net.UDPConn
	seq  int
}

func (b *bench) startRtpengine() (*rtpengine, error) {
	bin, err := exec.LookPath("rtpengine")
	if err != nil {
		return nil, errors.New("rtpengine not installed (apt-get install rtpengine-daemon)")
	}
	_, rip := b.ips()
	lo, hi, _ := strings.Cut(b.ports, "-")
	args := []string{bin, "--config-file=none", "--foreground", "--log-stderr", "--log-level=3", "--table=-1",
		"--interface=" + rip.String(), "--listen-ng=" + ngListen, "--port-min=" + lo, "--port-max=" + hi,
		"--num-threads=2", "--timeout=3600", "--silent-timeout=3600", "--delete-delay=0"}
	if !b.loopback {
		args = append([]string{"ip", "netns", "exec", relayNS}, args...)
	}
	e := &rtpengine{cmd: exec.Command(args[0], args[1:]...)}
	// Its log (one line per overrun socket under load) stays out of the
	// table; loss shows in the figures.
	e.cmd.Stderr = nil
	if err := e.cmd.Start(); err != nil {
		return nil, err
	}
	// The control socket lives in the relay's namespace, next to rtpengine.
	err = inNS(b.ns(relayNS), func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		e.conn = c
		return err
	})
	if err != nil {
		e.stop()
		return nil, err
	}
	ok := false
	for range 50 {
		if _, err := e.call(map[string]any{"command": "ping"}); err == nil {
			ok = true
			break
		}
	}
	if !ok {
		e.stop()
		return nil, errors.New("rtpengine does not answer ping on " + ngListen)
	}
	return e, nil
}

func (e *rtpengine) stop() {
	if e.conn != nil {
		e.conn.Close()
	}
	_ = e.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = e.cmd.Process.Kill()
		<-done
	}
}

var ngPort = regexp.MustCompile(`m=audio (\d+) `)

func sdpOf(ap netip.AddrPort) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
		ap.Addr(), ap.Addr(), ap.Port())
}

// anchor offers a's SDP and answers with b's; it returns the rtpengine
// ports a and b send to.
func (e *rtpengine) anchor(id string, a, b netip.AddrPort) (pa, pb int, err error) {
	off, err := e.call(map[string]any{"command": "offer", "call-id": id, "from-tag": "a" + id, "sdp": sdpOf(a)})
	if err != nil {
		return 0, 0, err
	}
	ans, err := e.call(map[string]any{"command": "answer", "call-id": id, "from-tag": "a" + id, "to-tag": "b" + id, "sdp": sdpOf(b)})
	if err != nil {
		return 0, 0, err
	}
	pb, err = portOf(off)
	if err == nil {
		pa, err = portOf(ans)
	}
	return pa, pb, err
}

func portOf(reply map[string]string) (int, error) {
	m := ngPort.FindStringSubmatch(reply["sdp"])
	if m == nil {
		return 0, fmt.Errorf("rtpengine reply without m=audio: %v", reply)
	}
	return strconv.Atoi(m[1])
}

// call sends one ng command and returns the reply's string values.
func (e *rtpengine) call(cmd map[string]any) (map[string]string, error) {
	e.seq++
	cookie := strconv.Itoa(e.seq)
	var buf bytes.Buffer
	buf.WriteString(cookie + " ")
	bencode(&buf, cmd)
	rb := make([]byte, 65536)
	// A loaded machine may delay the reply: resend (rtpengine answers a
	// repeated cookie from its cache) a few times before giving up.
	send := func() error {
		_, err := e.conn.WriteToUDP(buf.Bytes(), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22222})
		return err
	}
	if err := send(); err != nil {
		return nil, err
	}
	for tries := 1; ; {
		_ = e.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, _, err := e.conn.ReadFromUDP(rb)
		if err != nil {
			if tries < 5 && cmd["command"] != "ping" {
				tries++
				if err := send(); err != nil {
					return nil, err
				}
				continue
			}
			return nil, err
		}
		c, body, ok := bytes.Cut(rb[:n], []byte(" "))
		if !ok || string(c) != cookie {
			continue // a late reply to an earlier try
		}
		d, _, err := bdecodeDict(body)
		if err != nil {
			return nil, err
		}
		if d["result"] != "ok" && d["result"] != "pong" {
			return nil, fmt.Errorf("rtpengine %s: %v", cmd["command"], d)
		}
		return d, nil
	}
}

func bencode(w *bytes.Buffer, v any) {
	switch x := v.(type) {
	case string:
		fmt.Fprintf(w, "%d:%s", len(x), x)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		w.WriteByte('d')
		for _, k := range keys {
			bencode(w, k)
			bencode(w, x[k])
		}
		w.WriteByte('e')
	case []string:
		w.WriteByte('l')
		for _, s := range x {
			bencode(w, s)
		}
		w.WriteByte('e')
	}
}

// bdecodeDict decodes a dictionary, keeping its string values (nested
// lists and dictionaries are skipped).
func bdecodeDict(b []byte) (map[string]string, []byte, error) {
	if len(b) == 0 || b[0] != 'd' {
		return nil, nil, errors.New("bencode: not a dictionary")
	}
	out := map[string]string{}
	b = b[1:]
	for len(b) > 0 && b[0] != 'e' {
		k, rest, err := bstring(b)
		if err != nil {
			return nil, nil, err
		}
		b = rest
		if len(b) > 0 && b[0] >= '0' && b[0] <= '9' {
			v, rest, err := bstring(b)
			if err != nil {
				return nil, nil, err
			}
			out[k], b = v, rest
			continue
		}
		if b, err = bskip(b); err != nil {
			return nil, nil, err
		}
	}
	if len(b) == 0 {
		return nil, nil, errors.New("bencode: unterminated dictionary")
	}
	return out, b[1:], nil
}

func bstring(b []byte) (string, []byte, error) {
	i := bytes.IndexByte(b, ':')
	if i < 0 {
		return "", nil, errors.New("bencode: bad string")
	}
	n, err := strconv.Atoi(string(b[:i]))
	if err != nil || i+1+n > len(b) {
		return "", nil, errors.New("bencode: bad string length")
	}
	return string(b[i+1 : i+1+n]), b[i+1+n:], nil
}

func bskip(b []byte) ([]byte, error) {
	switch {
	case len(b) == 0:
		return nil, errors.New("bencode: truncated")
	case b[0] == 'i':
		i := bytes.IndexByte(b, 'e')
		if i < 0 {
			return nil, errors.New("bencode: bad integer")
		}
		return b[i+1:], nil
	case b[0] == 'l' || b[0] == 'd':
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			var err error
			if b[0] >= '0' && b[0] <= '9' {
				_, b, err = bstring(b)
			} else {
				b, err = bskip(b)
			}
			if err != nil {
				return nil, err
			}
		}
		if len(b) == 0 {
			return nil, errors.New("bencode: truncated")
		}
		return b[1:], nil
	case b[0] >= '0' && b[0] <= '9':
		_, rest, err := bstring(b)
		return rest, err
	}
	return nil, errors.New("bencode: unknown type")
}
