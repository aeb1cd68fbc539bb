package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// amiBanner starts the first line an Asterisk manager sends.
const amiBanner = "Asterisk Call Manager/"

// AMIClientConfig configures one manager session.
type AMIClientConfig struct {
	Address  string // host:port
	Username string
	Secret   string
	// PingInterval between two Ping actions (default 500ms).
	PingInterval time.Duration
	// Timeout for connect, banner, login and each Ping answer (default 400ms).
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay, which doubles
	// after each failed session (defaults 100ms and 2s).
	BackoffMin, BackoffMax time.Duration
	// OnPing, if set, is called after every Ping with its round trip or
	// error. It runs on the client's goroutine and must not block.
	OnPing func(rtt time.Duration, err error)
	// OnChange, if set, is called whenever Ready() may have changed. It
	// runs on the client's goroutines and must not block.
	OnChange func(AMIState)
}

// AMIState describes the manager session.
type AMIState struct {
	Connected   bool
	LoggedIn    bool
	FullyBooted bool
	// Version is what the banner says after "Asterisk Call Manager/".
	Version string
	// LastPong is when the last Ping was answered.
	LastPong time.Time
	// Err is the last error that ended a session or a login ("" if none).
	Err string
}

// Ready is true for a logged-in session that has seen FullyBooted and whose
// pings are answered.
func (s AMIState) Ready() bool { return s.Connected && s.LoggedIn && s.FullyBooted }

// Reason says in a few words why the session is not ready, or "ready".
func (s AMIState) Reason() string {
	switch {
	case s.Ready():
		return "ready"
	case !s.Connected && s.Err != "":
		return s.Err
	case !s.Connected:
		return "not connected"
	case !s.LoggedIn:
		return "not logged in"
	default:
		return "logged in, FullyBooted not seen"
	}
}

// AMIClient keeps one persistent Asterisk manager session: it connects,
// checks the banner, logs in, watches for FullyBooted, pings on an interval
// and reconnects with bounded exponential backoff. A ping left unanswered
// ends the session, because a manager that stopped answering cannot be
// trusted to resume on the same connection.
type AMIClient struct {
	cfg AMIClientConfig
	log *zap.Logger

	mu      sync.Mutex
	state   AMIState
	readyCh chan struct{} // closed while ready; replaced when readiness is lost
	stopped chan struct{} // closed when Run returns
	nextID  uint64
	bridges *bridgeTracker // nil: events other than FullyBooted are ignored
}

// followBridges hands every session's bridge events to t (amibridges.go).
func (c *AMIClient) followBridges(t *bridgeTracker) {
	c.mu.Lock()
	c.bridges = t
	c.mu.Unlock()
}

func (c *AMIClient) tracker() *bridgeTracker {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bridges
}

// NewAMIClient returns a client; nothing happens until Run.
func NewAMIClient(cfg AMIClientConfig, log *zap.Logger) *AMIClient {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 500 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 400 * time.Millisecond
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 100 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(2*time.Second, cfg.BackoffMin)
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &AMIClient{
		cfg:     cfg,
		log:     log.With(zap.String("ami", cfg.Address)),
		readyCh: make(chan struct{}),
		stopped: make(chan struct{}),
	}
}

// State returns a copy of the session state.
func (c *AMIClient) State() AMIState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Ready reports whether the manager is logged in, fully booted and answering.
func (c *AMIClient) Ready() bool { return c.State().Ready() }

// WaitReady blocks until Ready, ctx ends (its error) or Run has returned
// (ErrAMIClosed).
func (c *AMIClient) WaitReady(ctx context.Context) error {
	c.mu.Lock()
	ch := c.readyCh
	c.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-c.stopped:
		return ErrAMIClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// update changes the state under the lock and reports readiness changes.
func (c *AMIClient) update(f func(s *AMIState)) {
	c.mu.Lock()
	was := c.state.Ready()
	f(&c.state)
	now := c.state.Ready()
	st := c.state
	if now && !was {
		close(c.readyCh)
	} else if was && !now {
		c.readyCh = make(chan struct{})
	}
	c.mu.Unlock()
	if was != now && c.cfg.OnChange != nil {
		c.cfg.OnChange(st)
	}
}

// Run keeps a session up until ctx ends.
func (c *AMIClient) Run(ctx context.Context) error {
	defer close(c.stopped)
	backoff := c.cfg.BackoffMin
	for {
		start := time.Now()
		loggedIn, err := c.session(ctx)
		if ctx.Err() != nil {
			c.update(func(s *AMIState) { s.Connected, s.LoggedIn, s.FullyBooted = false, false, false })
			return nil
		}
		c.update(func(s *AMIState) {
			s.Connected, s.LoggedIn, s.FullyBooted = false, false, false
			s.Err = err.Error()
		})
		c.log.Debug("ami session ended", zap.Error(err), zap.Duration("lasted", time.Since(start)))
		if loggedIn {
			backoff = c.cfg.BackoffMin
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if !loggedIn {
			backoff = min(backoff*2, c.cfg.BackoffMax)
		}
	}
}

// amiSession is one TCP connection's worth of state.
type amiSession struct {
	conn    net.Conn
	wmu     sync.Mutex
	pmu     sync.Mutex
	pending map[string]chan AMIMessage
	done    chan struct{}
	err     error // set before done is closed
}

func (s *amiSession) expect(id string) chan AMIMessage {
	ch := make(chan AMIMessage, 1)
	s.pmu.Lock()
	s.pending[id] = ch
	s.pmu.Unlock()
	return ch
}

func (s *amiSession) forget(id string) {
	s.pmu.Lock()
	delete(s.pending, id)
	s.pmu.Unlock()
}

// session runs one connection until it fails; loggedIn tells whether the
// login succeeded (to reset the backoff).
func (c *AMIClient) session(ctx context.Context) (loggedIn bool, err error) {
	d := net.Dialer{Timeout: c.cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", c.cfg.Address)
	if err != nil {
		return false, fmt.Errorf("connect %s: %w", c.cfg.Address, probeErr(err))
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(c.cfg.Timeout))
	banner, err := readAMILine(br)
	if err != nil {
		return false, fmt.Errorf("read banner from %s: %w", c.cfg.Address, probeErr(err))
	}
	if !strings.HasPrefix(banner, amiBanner) {
		return false, fmt.Errorf("banner %q from %s: %w", truncate(banner, 64), c.cfg.Address, ErrAMIProtocol)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c.update(func(s *AMIState) {
		s.Connected = true
		s.Version = strings.TrimPrefix(banner, amiBanner)
	})

	bt := c.tracker()
	if bt != nil {
		bt.reset()
		defer bt.reset() // what this session told is void with it
	}
	s := &amiSession{conn: conn, pending: map[string]chan AMIMessage{}, done: make(chan struct{})}
	go c.readLoop(br, s, bt)
	var resync sync.WaitGroup
	defer func() { conn.Close(); <-s.done; resync.Wait() }()

	res, err := c.action(s, "Login", AMIField{"Username", c.cfg.Username}, AMIField{"Secret", c.cfg.Secret})
	if err != nil {
		conn.Close()
		return false, fmt.Errorf("login to %s: %w", c.cfg.Address, err)
	}
	if !strings.EqualFold(res.Get("Response"), "Success") {
		conn.Close()
		return false, fmt.Errorf("login to %s as %q: %s: %w", c.cfg.Address, c.cfg.Username, res.Get("Message"), ErrAMIAuth)
	}
	c.update(func(st *AMIState) { st.LoggedIn, st.Err = true, "" })
	c.log.Debug("ami logged in", zap.String("version", c.State().Version))
	if bt != nil {
		resync.Add(1)
		go func() {
			defer resync.Done()
			c.resyncBridges(s, bt)
		}()
	}

	tick := time.NewTicker(c.cfg.PingInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			conn.Close()
			return true, ctx.Err()
		case <-s.done:
			return true, fmt.Errorf("read from %s: %w", c.cfg.Address, s.err)
		case <-tick.C:
		}
		start := time.Now()
		res, err := c.action(s, "Ping")
		if err == nil && (!strings.EqualFold(res.Get("Response"), "Success") || !strings.EqualFold(res.Get("Ping"), "Pong")) {
			err = fmt.Errorf("ping answered %q/%q: %w", res.Get("Response"), res.Get("Ping"), ErrAMIProtocol)
		}
		if c.cfg.OnPing != nil {
			c.cfg.OnPing(time.Since(start), err)
		}
		if err != nil {
			conn.Close()
			return true, fmt.Errorf("ping %s: %w", c.cfg.Address, err)
		}
		c.update(func(st *AMIState) { st.LastPong = time.Now() })
	}
}

// action sends one action and waits for the response with its ActionID.
func (c *AMIClient) action(s *amiSession, name string, fields ...AMIField) (AMIMessage, error) {
	c.mu.Lock()
	c.nextID++
	id := "hapbx-" + strconv.FormatUint(c.nextID, 10)
	c.mu.Unlock()
	msg, err := appendAMIMessage(nil, append([]AMIField{{"Action", name}, {"ActionID", id}}, fields...)...)
	if err != nil {
		return AMIMessage{}, err
	}
	ch := s.expect(id)
	defer s.forget(id)
	s.wmu.Lock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
	_, err = s.conn.Write(msg)
	s.wmu.Unlock()
	if err != nil {
		return AMIMessage{}, fmt.Errorf("send %s: %w", name, probeErr(err))
	}
	t := time.NewTimer(c.cfg.Timeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return res, nil
	case <-s.done:
		// The reader hands over an answer before it stops (Asterisk hangs
		// up right after "Authentication failed"): take it if it is there.
		select {
		case res := <-ch:
			return res, nil
		default:
		}
		return AMIMessage{}, fmt.Errorf("waiting for %s answer: %w", name, s.err)
	case <-t.C:
		return AMIMessage{}, fmt.Errorf("%s unanswered after %s: %w", name, c.cfg.Timeout, ErrProbeTimeout)
	}
}

func (c *AMIClient) readLoop(br *bufio.Reader, s *amiSession, bt *bridgeTracker) {
	defer close(s.done)
	for {
		m, err := ReadAMIMessage(br)
		if err != nil {
			s.err = err
			return
		}
		if ev := m.Get("Event"); ev != "" {
			if strings.EqualFold(ev, "FullyBooted") {
				c.update(func(st *AMIState) { st.FullyBooted = true })
			} else if bt != nil {
				bt.event(m)
			}
			continue
		}
		id := m.Get("ActionID")
		s.pmu.Lock()
		ch := s.pending[id]
		s.pmu.Unlock()
		if ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// resyncBridges learns the bridges that exist at the start of a session
// (those that changed while no session was up included): BridgeList, then
// BridgeInfo for each two-channel bridge; the answers' events reach the
// tracker through the reader. Neither action needs a write permission.
func (c *AMIClient) resyncBridges(s *amiSession, bt *bridgeTracker) {
	listed := bt.startList()
	res, err := c.action(s, "BridgeList")
	if err == nil && !strings.EqualFold(res.Get("Response"), "Success") {
		err = fmt.Errorf("answered %q: %s: %w", res.Get("Response"), res.Get("Message"), ErrAMIProtocol)
	}
	if err != nil {
		c.log.Debug("ami bridge list failed: bridges learnt from new events only", zap.Error(err))
		return
	}
	n := 0
	for {
		select {
		case <-s.done:
			return
		case id := <-listed:
			if id == "" {
				c.log.Debug("ami bridges resynced", zap.Int("two_party", n))
				return
			}
			if _, err := c.action(s, "BridgeInfo", AMIField{"BridgeUniqueid", id}); err != nil {
				c.log.Debug("ami bridge info failed", zap.String("bridge", id), zap.Error(err))
				return
			}
			n++
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
