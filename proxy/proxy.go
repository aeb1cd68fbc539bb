package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// Proxy is the transaction-stateful SIP proxy in front of the backends.
type Proxy struct {
	cfg        Config
	log        *zap.Logger
	m          *metrics
	backends   atomic.Pointer[backendSet]
	peers      // the collaborators it asks
	addressing // where it listens and what names it
	memory     // what it keeps beyond one transaction
	bridging   // bridged legs, calls kept up after their backend died (bridge.go)
	stack      // sipgo
	lifecycle  // up, drain, stop

	door door // admission before any state (door.go)
}

type peers struct {
	router   Router // the only one required
	reporter FailureReporter
	reg      Registrar
	media    MediaAnchor
	callers  *ttlSet       // Call-ID -> caller's From tag, to tell the legs of anchored calls
	trunks   Trunks        // nil without trunks (trunks.go)
	resolver *net.Resolver // nil: net.DefaultResolver; next hops named by DNS (contact.go), and sipgo's
}

type addressing struct {
	listeners  []Listener
	portFor    map[string]int // transport -> listening port written into Via/Record-Route
	localHosts map[string]bool
	localPorts map[int]bool
	udpLaddr   map[string]sip.Addr // listener address per IP family key, to send UDP from the SIP port
}

type memory struct {
	dialogs    *dialogTable
	challenged *ttlSet  // Call-ID -> backend that answered 401/407
	non2xx     *ttlSet  // INVITE branch answered with a non-2xx final
	strays     *ttlSet  // branches of the stray finals seen once (stray.go)
	secret     []byte   // key of the dialog tokens (token.go)
	macs       *macPool // HMACs keyed with secret (branch.go)
	rfc2543    string   // prefix of the synthetic branches (rfc2543.go)
	markTag    string   // tag of the marks intake writes (sanity.go)
	cseqRaised *ttlSet  // Call-ID -> CSeq of an INVITE sent again to a trunk with credentials
}

type stack struct {
	ua   *sipgo.UserAgent
	srv  *sipgo.Server // hands requests to handle
	wire wire          // every message leaves by it
	// conns bounds the TCP and TLS connections sipgo accepts (conns.go).
	conns *connGuard
}

// wire sends requests (statefully or not) and stateless responses: sipgo's
// client and server (sipgoWire), or a test's fakes.
type wire interface {
	TransactionRequest(ctx context.Context, req *sip.Request, options ...sipgo.ClientRequestOption) (sip.ClientTransaction, error)
	WriteRequest(req *sip.Request, options ...sipgo.ClientRequestOption) error
	WriteResponse(res *sip.Response) error
}

type sipgoWire struct {
	*sipgo.Client
	*sipgo.Server
}

type lifecycle struct {
	up       atomic.Bool
	draining atomic.Bool
	// abort is closed when the drain times out or is aborted: pending
	// transactions then answer 503 and cancel downstream.
	abort     chan struct{}
	abortOnce sync.Once
	// cancelGuard: after a CANCEL (or Timer C) the downstream has this long
	// to send its final response before the caller gets 408 (64*T1).
	cancelGuard time.Duration
	tryingAfter time.Duration // an INVITE silent this long downstream gets the proxy's 100 (trying.go)
	inflight    sync.WaitGroup
	closers     []func() error
	serveWG     sync.WaitGroup
}

type backendSet struct {
	list   []Backend
	byName map[string]Backend
	byHost map[string]string // IP -> backend name, to tell requests from Asterisk
}

func newBackendSet(bs []Backend) *backendSet {
	s := &backendSet{list: append([]Backend(nil), bs...), byName: map[string]Backend{}, byHost: map[string]string{}}
	for _, b := range bs {
		s.byName[b.Name] = b
		if host, _, err := net.SplitHostPort(b.Address); err == nil {
			s.byHost[host] = b.Name
		}
	}
	return s
}

// Option adds an optional collaborator.
type Option func(*Proxy)

// WithFailureReporter tells r about backends failing forwarded requests.
func WithFailureReporter(r FailureReporter) Option { return func(p *Proxy) { p.reporter = r } }

// New builds a proxy; Start opens its listeners.
func New(cfg Config, backends []Backend, router Router, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	ls, err := cfg.Listeners()
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:        cfg,
		log:        log,
		m:          newMetrics(reg),
		peers:      peers{router: router},
		addressing: addressing{listeners: ls, portFor: map[string]int{}, localHosts: map[string]bool{strings.ToLower(cfg.Advertise): true}, localPorts: map[int]bool{}, udpLaddr: map[string]sip.Addr{}},
		memory:     memory{challenged: newTTLSet(32*time.Second, 100000), non2xx: newTTLSet(32*time.Second, 100000), strays: newTTLSet(32*time.Second, 100000), cseqRaised: newTTLSet(32*time.Second, 100000)},
		lifecycle:  lifecycle{abort: make(chan struct{}), cancelGuard: 64 * sip.T1, tryingAfter: 200 * time.Millisecond},
	}
	p.dialogs = newDialogTable(cfg.MaxDialogs, cfg.DialogTTL, reg)
	p.bridging = newBridging(p, cfg, reg)
	p.conns = newConnGuard(cfg.TCP, log.Named("conns"), p.m, p.dialogs.reaches)
	newDoorMetrics(&p.door, reg)
	for _, o := range opts {
		o(p)
	}
	if len(p.secret) == 0 {
		if p.secret, err = randomSecret(); err != nil {
			return nil, err
		}
	}
	p.macs = newMACPool(p.secret)
	p.rfc2543 = branch2543Prefix(p.secret)
	p.markTag = markTag(p.secret)
	p.conns.intake, p.conns.maxMessage, p.conns.viaMark = p.streamIntake, cfg.MaxMessageSize, []byte(";branch="+p.rfc2543)
	for _, l := range ls {
		if _, ok := p.portFor[l.Transport]; !ok {
			p.portFor[l.Transport] = int(l.Addr.Port())
		}
		p.localPorts[int(l.Addr.Port())] = true
		if !l.Addr.Addr().IsUnspecified() {
			p.localHosts[l.Addr.Addr().String()] = true
		}
	}
	p.backends.Store(newBackendSet(backends))
	return p, nil
}

// SetBackends replaces the backend list (SIGHUP). Dialogs in progress are
// routed by their Route headers and are not affected.
func (p *Proxy) SetBackends(bs []Backend) {
	p.backends.Store(newBackendSet(bs))
	p.log.Info("backends replaced", zap.Int("count", len(bs)))
}

// Backends returns the current backend list.
func (p *Proxy) Backends() []Backend { return p.backends.Load().list }

// Listen opens every listener and serves them until Run returns. It returns
// once all listeners are bound, or the first bind error: a caller that must
// know the listeners are up (before the VIP arrives) calls it before Run.
func (p *Proxy) Listen(ctx context.Context) error {
	sipLog := slog.New(newSlogBridge(p.log.Named("sipgo"), p.m.malformed))
	parser := sip.NewParser()
	parser.MaxMessageLength = p.cfg.MaxMessageSize
	var tlsConf *tls.Config
	for _, l := range p.listeners {
		if l.Transport == "tls" {
			cert, err := secretfile.LoadX509KeyPair(p.cfg.TLS.Cert, p.cfg.TLS.Key)
			if err != nil {
				return fmt.Errorf("sip.tls: %w", err)
			}
			tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			break
		}
	}
	uaOpts := []sipgo.UserAgentOption{
		sipgo.WithUserAgent("hapbx"),
		sipgo.WithUserAgentHostname(p.cfg.Advertise),
		sipgo.WithUserAgentParser(parser),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(sipLog), sip.WithTransportLayerReadFilter(p.doorFilter)),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(sipLog),
			sip.WithTransactionLayerUnhandledResponseHandler(p.strayResponse),
		),
	}
	if tlsConf != nil {
		uaOpts = append(uaOpts, sipgo.WithUserAgenTLSConfig(tlsConf))
	}
	if p.resolver != nil {
		uaOpts = append(uaOpts, sipgo.WithUserAgentDNSResolver(p.resolver))
	}
	ua, err := sipgo.NewUA(uaOpts...)
	if err != nil {
		return fmt.Errorf("create SIP user agent: %w", err)
	}
	p.ua = ua
	if p.srv, err = sipgo.NewServer(ua, sipgo.WithServerLogger(sipLog)); err != nil {
		return fmt.Errorf("create SIP server: %w", err)
	}
	cl, err := sipgo.NewClient(ua, sipgo.WithClientLogger(sipLog), sipgo.WithClientHostname(p.cfg.Advertise))
	if err != nil {
		return fmt.Errorf("create SIP client: %w", err)
	}
	p.wire = sipgoWire{Client: cl, Server: p.srv}
	for _, m := range []sip.RequestMethod{sip.INVITE, sip.ACK, sip.BYE, sip.OPTIONS, sip.REGISTER,
		sip.INFO, sip.UPDATE, sip.PRACK, sip.REFER, sip.SUBSCRIBE, sip.NOTIFY, sip.MESSAGE, sip.PUBLISH, sip.CANCEL} {
		p.srv.OnRequest(m, p.handle)
	}
	p.srv.OnNoRoute(p.handle)
	stopDoor := make(chan struct{})
	p.closers = append(p.closers, func() error { close(stopDoor); return nil })
	p.startDoorWriter(stopDoor)

	for _, l := range p.listeners {
		if err := p.listen(ctx, l, tlsConf); err != nil {
			p.close()
			return err
		}
	}
	if err := p.awaitUDPServing(ctx); err != nil {
		p.close()
		return err
	}
	p.up.Store(true)
	p.log.Info("SIP listeners up", zap.Strings("listen", p.cfg.Listen), zap.String("advertise", p.cfg.Advertise))
	return nil
}

// awaitUDPServing returns once sipgo serves every UDP listener. Requests
// leave from the SIP port (udpLaddr), and sipgo sends on that socket only
// once ServeUDP has put it in its pool: before that, a request arriving over
// TCP and forwarded to a UDP backend made sipgo bind the port again
// (EADDRINUSE), and the backend was taken for failed.
func (p *Proxy) awaitUDPServing(ctx context.Context) error {
	pool := p.ua.TransportLayer().Pool("udp")
	deadline := time.Now().Add(2 * time.Second)
	for _, la := range p.udpLaddr {
		for pool.Get(la.String()) == nil {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("UDP listener %s: not served by the SIP stack", la.String())
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

func (p *Proxy) listen(ctx context.Context, l Listener, tlsConf *tls.Config) error {
	// IP_FREEBIND lets a listener on the VIP bind before the VIP is on this
	// host: it receives the moment the cluster adds the address.
	lc := net.ListenConfig{Control: freebind}
	addr := l.Addr.String()
	switch l.Transport {
	case "udp":
		conn, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", l, err)
		}
		key := familyKey(l.Addr.Addr())
		if _, ok := p.udpLaddr[key]; !ok {
			local := conn.LocalAddr().(*net.UDPAddr)
			p.udpLaddr[key] = sip.Addr{IP: local.IP, Port: local.Port, Hostname: local.IP.String()}
		}
		p.closers = append(p.closers, conn.Close)
		p.serve(func() error {
			return p.srv.ServeUDP(restoreVia{PacketConn: conn, mark: []byte(";branch=" + p.rfc2543)})
		})
	case "tcp", "tls":
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", l, err)
		}
		p.closers = append(p.closers, ln.Close)
		if l.Transport == "tls" {
			gl := p.conns.listener(ln, tlsConf)
			p.serve(func() error { return p.srv.ServeTLS(gl) })
		} else {
			gl := p.conns.listener(ln, nil)
			p.serve(func() error { return p.srv.ServeTCP(gl) })
		}
	}
	return nil
}

func familyKey(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "4"
	}
	return "6"
}

func (p *Proxy) serve(f func() error) {
	p.serveWG.Add(1)
	go func() {
		defer p.serveWG.Done()
		if err := f(); err != nil && !errors.Is(err, net.ErrClosed) {
			// A listener that died leaves the proxy deaf on it: /healthz
			// must say so, so the pair's monitoring sees it.
			p.up.Store(false)
			p.log.Error("SIP listener stopped", zap.Error(err))
		}
	}()
}

// Ready reports whether the listeners are up and not draining.
func (p *Proxy) Ready() bool { return p.up.Load() && !p.draining.Load() }

// Run serves (it calls Listen unless that was done) until ctx ends, then
// drains: it stops taking new requests (new initial requests get 503;
// TCP/TLS stop accepting connections), lets transactions in flight finish
// for up to the drain timeout or until Abort, answers 503 to those still
// pending (cancelling their INVITEs downstream), and closes everything. A
// drain cut short is its error.
func (p *Proxy) Run(ctx context.Context) error {
	if p.ua == nil {
		if err := p.Listen(ctx); err != nil {
			return err
		}
	}
	<-ctx.Done()
	p.draining.Store(true)
	done := make(chan struct{})
	go func() { p.inflight.Wait(); close(done) }()
	timer := time.NewTimer(p.cfg.DrainTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-done:
	case <-timer.C:
		err = fmt.Errorf("drain: transactions still in flight after %v", p.cfg.DrainTimeout)
	case <-p.abort:
		err = errors.New("drain: aborted")
	}
	if err != nil {
		// Those still pending answer 503 (their INVITEs are cancelled
		// downstream) before the transports close under them.
		p.Abort()
		select {
		case <-done:
		case <-time.After(time.Second):
		}
	}
	p.close()
	return err
}

// Abort cuts a drain short (a second stop signal): transactions still
// pending answer 503 at once.
func (p *Proxy) Abort() { p.abortOnce.Do(func() { close(p.abort) }) }

// close closes listeners and transports at once.
func (p *Proxy) close() {
	p.up.Store(false)
	for _, c := range p.closers {
		_ = c()
	}
	p.closers = nil
	if p.ua != nil {
		_ = p.ua.Close()
	}
	p.serveWG.Wait()
}

// Status is the proxy part of /api/v1/status.
type Status struct {
	Listeners []string  `json:"listeners"`
	Advertise string    `json:"advertise"`
	Ready     bool      `json:"ready"`
	Draining  bool      `json:"draining"`
	Backends  []Backend `json:"backends"`
	Dialogs   int       `json:"dialogs"`
}

// Status reports listeners and backends.
func (p *Proxy) Status() Status {
	return Status{
		Listeners: p.cfg.Listen,
		Advertise: p.cfg.Advertise,
		Ready:     p.Ready(),
		Draining:  p.draining.Load(),
		Backends:  p.Backends(),
		Dialogs:   p.dialogs.len(),
	}
}

// isLocal reports whether a URI names this proxy (advertise or a listen IP,
// on one of its ports).
func (p *Proxy) isLocal(u *sip.Uri) bool {
	if !p.localHosts[strings.ToLower(strings.Trim(u.Host, "[]"))] {
		return false
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if u.IsEncrypted() {
			port = 5061
		}
	}
	return p.localPorts[port]
}

func callID(m sip.Message) string {
	if h := m.CallID(); h != nil {
		return h.Value()
	}
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

func freebind(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("IP_FREEBIND on %s: %w", address, serr)
	}
	return nil
}
