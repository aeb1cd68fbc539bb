// Package amitest is an Asterisk Manager Interface server for tests: it
// speaks the real wire protocol (banner, "Key: value" lines ending in CRLF,
// blank-line framing, ActionID echo), answers Login (success or
// "Authentication failed", after which it hangs up as Asterisk does) and
// Ping (Pong), sends Event: FullyBooted after a login once the PBX is
// "booted", and can be switched to stuck (it keeps accepting and reading but
// answers nothing) or closed.
//
// Tests import it, and so does the lab (deploy/lab), where it stands in for
// Asterisk's manager on the PBX nodes of `make demo`; production code does
// not. It parses on its own, so that it does not share the code of the
// client under test.
package amitest

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Banner is the first line the server sends.
const Banner = "Asterisk Call Manager/5.0.2"

// Server is a fake Asterisk manager.
type Server struct {
	ln       net.Listener
	username string
	secret   string

	mu     sync.Mutex
	stuck  bool
	booted bool
	conns  map[*conn]struct{}
	logins int
	fails  int
	pings  int
	closed bool
	wg     sync.WaitGroup
	// answers: see SetAnswer; action name lowercased.
	answers map[string]func(actionID string, fields map[string]string) string
}

type conn struct {
	c        net.Conn
	wmu      sync.Mutex
	loggedIn bool // guarded by Server.mu
}

// Start listens on addr ("127.0.0.1:0" for any free port) and accepts
// username/secret. The server starts booted and answering.
func Start(addr, username, secret string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("amitest listen %s: %w", addr, err)
	}
	s := &Server{ln: ln, username: username, secret: secret, booted: true, conns: map[*conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// New starts a server on a free 127.0.0.1 port and closes it at test end.
func New(tb testing.TB, username, secret string) *Server {
	tb.Helper()
	s, err := Start("127.0.0.1:0", username, secret)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetStuck makes the server stop (true) or resume (false) answering, on
// existing and new connections alike. New connections are still accepted,
// as a hung Asterisk's kernel still accepts them.
func (s *Server) SetStuck(stuck bool) {
	s.mu.Lock()
	s.stuck = stuck
	s.mu.Unlock()
}

// SetBooted sets whether the PBX is fully booted. Turning it on sends
// Event: FullyBooted to every logged-in session; while off, a login is
// answered without that event.
func (s *Server) SetBooted(booted bool) {
	s.mu.Lock()
	s.booted = booted
	s.mu.Unlock()
	if booted {
		s.SendEvents(fullyBooted)
	}
}

// SetAnswer makes the server answer action (any case) with what answer
// returns: the raw text, CRLF-framed messages, given the ActionID and the
// action's fields (keys lowercased). Asterisk's list actions (BridgeList,
// BridgeInfo) answer this way: a Response, then events with the ActionID.
func (s *Server) SetAnswer(action string, answer func(actionID string, fields map[string]string) string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.answers == nil {
		s.answers = map[string]func(string, map[string]string) string{}
	}
	s.answers[strings.ToLower(action)] = answer
}

// SendEvents writes text, raw CRLF-framed messages (events as Asterisk
// sends them), to every logged-in session.
func (s *Server) SendEvents(text string) {
	s.mu.Lock()
	var cs []*conn
	for c := range s.conns {
		if c.loggedIn {
			cs = append(cs, c)
		}
	}
	s.mu.Unlock()
	for _, c := range cs {
		s.write(c, text)
	}
}

// DropConnections closes every open session (the listener stays).
func (s *Server) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.c.Close()
	}
}

// Logins, FailedLogins and Pings count what the server has answered.
func (s *Server) Logins() int       { s.mu.Lock(); defer s.mu.Unlock(); return s.logins }
func (s *Server) FailedLogins() int { s.mu.Lock(); defer s.mu.Unlock(); return s.fails }
func (s *Server) Pings() int        { s.mu.Lock(); defer s.mu.Unlock(); return s.pings }

// Close stops listening, drops every session and waits for its goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.ln.Close()
	s.DropConnections()
	s.wg.Wait()
}

const fullyBooted = "Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 5\r\nLastReload: 5\r\nStatus: Fully Booted\r\n\r\n"

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		c := &conn{c: nc}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *Server) isStuck() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stuck
}

func (s *Server) write(c *conn, text string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = c.c.Write([]byte(text))
}

func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.c.Close()
	}()
	// A stuck manager accepts but never greets; wait until it recovers.
	for s.isStuck() {
		if !s.sleepOrClosed(c) {
			return
		}
	}
	s.write(c, Banner+"\r\n")
	br := bufio.NewReader(c.c)
	for {
		msg, err := readMessage(br)
		if err != nil {
			return
		}
		if s.isStuck() {
			continue // read and ignore, like a deadlocked manager thread
		}
		if !s.handle(c, msg) {
			return
		}
	}
}

// sleepOrClosed waits a little; false when the connection was closed.
func (s *Server) sleepOrClosed(c *conn) bool {
	_ = c.c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var b [1]byte
	_, err := c.c.Read(b[:])
	_ = c.c.SetReadDeadline(time.Time{})
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return true
	}
	return err == nil
}

// handle answers one action; false ends the session.
func (s *Server) handle(c *conn, m map[string]string) bool {
	id := ""
	if v, ok := m["actionid"]; ok {
		id = "ActionID: " + v + "\r\n"
	}
	action := strings.ToLower(m["action"])
	s.mu.Lock()
	loggedIn := c.loggedIn
	s.mu.Unlock()
	switch {
	case action == "login":
		if m["username"] != s.username || m["secret"] != s.secret {
			s.mu.Lock()
			s.fails++
			s.mu.Unlock()
			s.write(c, "Response: Error\r\n"+id+"Message: Authentication failed\r\n\r\n")
			return false
		}
		s.mu.Lock()
		c.loggedIn = true
		s.logins++
		booted := s.booted
		s.mu.Unlock()
		s.write(c, "Response: Success\r\n"+id+"Message: Authentication accepted\r\n\r\n")
		if booted {
			s.write(c, fullyBooted)
		}
	case action == "logoff":
		s.write(c, "Response: Goodbye\r\n"+id+"Message: Thanks for all the fish.\r\n\r\n")
		return false
	case !loggedIn:
		s.write(c, "Response: Error\r\n"+id+"Message: Authentication Required\r\n\r\n")
	case action == "ping":
		s.mu.Lock()
		s.pings++
		s.mu.Unlock()
		ts := fmt.Sprintf("%.6f", float64(time.Now().UnixMicro())/1e6)
		s.write(c, "Response: Success\r\n"+id+"Ping: Pong\r\nTimestamp: "+ts+"\r\n\r\n")
	default:
		s.mu.Lock()
		answer := s.answers[action]
		s.mu.Unlock()
		if answer != nil {
			s.write(c, answer(m["actionid"], m))
			break
		}
		s.write(c, "Response: Error\r\n"+id+"Message: Invalid/unknown command\r\n\r\n")
	}
	return true
}

// readMessage reads "Key: value" lines up to a blank line; keys lowercased.
func readMessage(br *bufio.Reader) (map[string]string, error) {
	m := map[string]string{}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if len(m) == 0 {
				continue
			}
			return m, nil
		}
		k, v, _ := strings.Cut(line, ":")
		k = strings.ToLower(strings.TrimSpace(k))
		if _, dup := m[k]; !dup {
			m[k] = strings.TrimSpace(v)
		}
	}
}
