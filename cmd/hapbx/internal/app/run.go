package app

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/hapbx/hapbx/cluster"
	"github.com/hapbx/hapbx/config"
	"github.com/hapbx/hapbx/failover"
	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/admin/statuspage"
	"github.com/hapbx/hapbx/internal/logsample"
	"github.com/hapbx/hapbx/internal/secretfile"
	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/proxy"
	"github.com/hapbx/hapbx/proxy/limits"
	"github.com/hapbx/hapbx/proxy/trunk"
	"github.com/hapbx/hapbx/registrar"
)

// The registrar speaks the proxy's words (the relay's guards are in package
// proxy's tests).
var _ proxy.Registrar = (*registrar.Registrar)(nil)

// The proxy keeps the links the backends' managers report (health/amibridges.go).
var _ health.BridgeSink = (*proxy.Proxy)(nil)

// Health takes the backends' answers to forwarded requests as evidence of life.
var _ proxy.LifeReporter = (*health.Checker)(nil)

// The selector wakes held requests and answers "still routable?" without a
// candidate list: without these the proxy silently falls back to polling.
var (
	_ proxy.ChangeNotifier   = (*failover.Selector)(nil)
	_ proxy.RoutableReporter = (*failover.Selector)(nil)
)

// The limits are the proxy's door.
var (
	_ proxy.Load       = (*limits.Budget)(nil)
	_ proxy.FloodGuard = (*limits.Guard)(nil)
)

// daemon is one running `hapbx run`.
type daemon struct {
	path     string
	cfg      config.File
	log      *zap.Logger
	reg      *prometheus.Registry
	proxy    *proxy.Proxy
	health   *health.Checker
	selector *failover.Selector
	bindings *registrar.Registrar
	relay    *media.Relay          // nil unless media.enabled
	cold     *failover.Coordinator // nil unless cold.enabled
	cluster  *cluster.Cluster      // nil unless cluster.peers is set
	trunks   *trunk.Set            // nil without trunks
	budget   *limits.Budget
	flood    *limits.Guard
	// events are the last events the components reported, for the status
	// page and GET /api/v1/status.
	events  *statuspage.History
	started time.Time
}

func runDaemon(path string, stderr io.Writer) int {
	return command("hapbx", path, config.Load, stderr, func(cfg config.File, log *zap.Logger) error {
		d := &daemon{path: path, cfg: cfg, log: log, started: time.Now(), events: &statuspage.History{}}
		return d.run()
	})
}

func (d *daemon) run() error {
	// The memory budget is the soft memory limit too: the collector works
	// harder as the process nears it, and the proxy sheds new requests
	// before live state fills it. GOMEMLIMIT in the environment still wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(d.cfg.Limits.Memory))
	}
	d.reg = newRegistry()
	d.budget = limits.NewBudget(d.cfg.Limits, d.log.Named("limits"), d.reg)
	// hapbx's live heap is small (tens of MB) while every SIP message it
	// parses allocates: with Go's default GOGC=100 the collector took about
	// 30% of the proxy's CPU at 3000 calls/s (pprof). The budget sets GOGC
	// from 400 down to 100 as the live state grows. GOGC in the environment
	// still wins.
	if os.Getenv("GOGC") == "" {
		d.budget.TuneGC()
	}
	d.flood = limits.NewGuard(d.cfg.Limits.Flood, d.log.Named("flood"), d.reg)
	// sipgo's UDP size limits are process-wide variables (no per-transport
	// option in v1.7.2): lift them once, before any SIP socket (health
	// probes included) is opened, so messages of any size a phone sends
	// are read and forwarded, never refused as "larger than MTU".
	proxy.LiftTransportLimits()
	proxy.TakeOverTrying()
	proxy.ShortenRetention()

	targets, err := healthTargets(d.cfg.Backends)
	if err != nil {
		return err
	}
	if d.health, err = health.New(d.cfg.Health, targets, d.log.Named("health"), d.reg,
		health.WithLocalLoad(d.budget), health.WithEvents(d.events)); err != nil {
		return fmt.Errorf("health: %w", err)
	}
	if d.selector, err = failover.New(d.cfg.Failover, backendNames(d.cfg.Backends), d.log.Named("failover"), d.reg,
		failover.WithStartupSettle(failover.StartupSettle(d.cfg.Health)), failover.WithHealth(d.health), failover.WithEvents(d.events)); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	if err := d.setupCluster(); err != nil {
		return err
	}
	if err := d.setupCold(); err != nil {
		return err
	}
	// A damaged store is reported and set aside by the registrar, which then
	// starts empty: phones re-register, calls keep working.
	if d.bindings, err = registrar.New(d.cfg.Registrar, d.cfg.Node.Name, d.log.Named("registrar"), d.reg,
		registrar.WithLocalHosts(d.localHosts()...)); err != nil {
		return fmt.Errorf("registrar: %w", err)
	}
	defer d.bindings.Close() // unless it ran
	secret, err := proxy.DialogSecret(d.cfg.SIP.DialogSecretFile, d.cfg.Registrar.DataDir)
	if err != nil {
		return fmt.Errorf("dialog secret: %w", err)
	}
	opts := []proxy.Option{proxy.WithFailureReporter(d.health), proxy.WithRegistrar(d.bindings), proxy.WithDialogSecret(secret),
		proxy.WithDoor(proxy.Door{Load: d.budget, Flood: d.flood, MaxTransactions: d.cfg.Limits.MaxTransactions, Exempt: d.peerAddrs()})}
	if d.cfg.Media.Enabled {
		mc := d.cfg.Media
		if mc.Address == "" {
			mc.Address = d.cfg.SIP.Advertise
		}
		if d.relay, err = media.New(mc, d.log.Named("media"), d.reg); err != nil {
			return fmt.Errorf("media: %w", err)
		}
		defer d.relay.Close() // unless it ran
		opts = append(opts, proxy.WithMediaAnchor(d.relay))
	}
	if err := d.replicate(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	routes := &trunkRoutes{} // filled by setupTrunks: the trunks send through the proxy
	if len(d.cfg.Trunks) > 0 {
		opts = append(opts, proxy.WithTrunks(routes))
	}
	if d.proxy, err = proxy.New(d.cfg.SIP, proxyBackends(d.cfg.Backends), d.selector, d.log.Named("proxy"), d.reg, opts...); err != nil {
		return err
	}
	// The backends' managers tell the proxy which calls they bridge
	// (transfers, re-bridges), bounded like the dialogs.
	d.health.FollowBridges(d.proxy, d.cfg.SIP.MaxDialogs)
	if err := d.replicateDialogs(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := d.setupTrunks(); err != nil {
		return err
	}
	routes.set = d.trunks
	// Listeners first: they receive on the VIP the moment the cluster adds it.
	if err := d.proxy.Listen(context.Background()); err != nil {
		return err
	}

	// Stopping goes in stages: the proxy drains while this proxy still holds
	// the VIP; then the cluster (releasing the VIP), the checks and the admin
	// interface stop; the registrar and the relay, which the cluster
	// replicates into, close last. A component that fails stops the others
	// in the same order.
	var g errgroup.Group
	mid := []func(context.Context) error{d.health.Run, d.selector.Run, d.hangUpDeadBackends, d.budget.Run, d.flood.Run}
	if d.cluster != nil {
		mid = append(mid, d.cluster.Run, d.proxy.DialogReplica().Run)
	}
	if d.cold != nil {
		mid = append(mid, d.cold.Run)
	}
	if d.trunks != nil {
		mid = append(mid, d.trunks.Run)
	}
	if d.cfg.Admin.Listen != "" {
		mid = append(mid, func(ctx context.Context) error {
			serve, err := serveAdmin(d.cfg.Admin, d.adminHandler(), d.log)
			if err != nil {
				return err
			}
			return serve(ctx)
		})
	}
	last := []func(context.Context) error{d.bindings.Run}
	if d.relay != nil {
		last = append(last, d.relay.Run)
	}
	// Signals are caught before anything serves: a SIGHUP sent as soon as
	// the admin interface answers must reload, not kill (its default).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	stop := inStages(&g, []func(context.Context) error{d.runProxy}, mid, last)
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	d.log.Info("hapbx running", zap.String("version", version), zap.String("config", d.path))

	stopping := false
	for {
		select {
		case err := <-done:
			return err
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP && !stopping:
				d.reload()
			case sig == syscall.SIGHUP:
				// no reload while stopping
			case !stopping:
				stopping = true
				d.log.Info("stopping: draining transactions", zap.String("signal", sig.String()), zap.Duration("drain_timeout", d.cfg.SIP.DrainTimeout))
				stop()
			default:
				d.log.Warn("second signal: stopping at once")
				d.proxy.Abort()
			}
		}
	}
}

// inStages runs the components of each stage in g. stop ends the first
// stage's context; each next stage's ends once every component of the one
// before returned. A component that returns an error calls stop.
func inStages(g *errgroup.Group, stages ...[]func(context.Context) error) (stop func()) {
	next, stop := context.WithCancel(context.Background())
	for _, stage := range stages {
		ctx := next
		var end context.CancelFunc
		next, end = context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, run := range stage {
			wg.Add(1)
			g.Go(func() error {
				defer wg.Done()
				err := run(ctx)
				if err != nil {
					stop()
				}
				return err
			})
		}
		go func() { wg.Wait(); end() }()
	}
	return stop
}

// runProxy runs the proxy; a drain cut short is logged, not a failure.
func (d *daemon) runProxy(ctx context.Context) error {
	if err := d.proxy.Run(ctx); err != nil {
		d.log.Warn("stopped before every transaction finished", zap.Error(err))
	} else {
		d.log.Info("stopped cleanly")
	}
	return nil
}

// reload re-reads the file on SIGHUP and applies the backend list (in cold
// standby also to the coordinator's nodes). Other changes need a restart;
// calls in progress are untouched either way.
func (d *daemon) reload() {
	cfg, err := config.Load(d.path)
	if err != nil {
		d.log.Error("reload refused: configuration invalid, keeping the running one", zap.String("config", d.path), zap.Error(err))
		return
	}
	targets, err := healthTargets(cfg.Backends)
	if err != nil {
		d.log.Error("reload refused", zap.String("config", d.path), zap.Error(err))
		return
	}
	if d.cold != nil {
		// Cold standby first: it refuses to drop the node holding the
		// group, and then nothing else may change either.
		nodes, err := d.coldNodes(cfg.Backends)
		if err == nil {
			err = d.cold.SetNodes(nodes)
		}
		if err != nil {
			d.log.Error("reload refused: cold standby nodes", zap.String("config", d.path), zap.Error(err))
			return
		}
	}
	// New backends are added to the proxy first and removed from it last,
	// so the selector never names a backend the proxy cannot reach.
	d.proxy.SetBackends(proxyBackends(append(append([]config.Backend(nil), cfg.Backends...), d.cfg.Backends...)))
	if err := d.health.SetTargets(targets); err != nil {
		d.log.Error("reload: health targets", zap.Error(err))
	}
	if err := d.selector.SetBackends(backendNames(cfg.Backends)); err != nil {
		d.log.Error("reload: failover backends", zap.Error(err))
	}
	d.proxy.SetBackends(proxyBackends(cfg.Backends))
	d.cfg.Backends = cfg.Backends
	d.log.Info("reloaded backends", zap.Strings("backends", backendNames(cfg.Backends)))
}

// hangUpDeadBackends ends the calls of a backend declared down, so phones
// do not sit in silent calls.
func (d *daemon) hangUpDeadBackends(ctx context.Context) error {
	for ev := range d.selector.Subscribe(ctx) {
		switch ev.Kind {
		case failover.BackendDown:
			go d.proxy.HangUpBackend(ev.Backend, proxy.HangUpReasonBackendDown)
		case failover.BackendRemoved:
			// Still running: its calls go on; only new ones go elsewhere.
			d.log.Info("backend removed from the configuration; its calls in progress continue", zap.String("backend", ev.Backend))
		case failover.ActiveChanged:
			d.publishActive(ev.Backend)
			d.log.Warn("active backend changed", zap.String("active", ev.Backend), zap.String("previous", ev.Previous), zap.String("reason", ev.Reason))
		}
	}
	return nil
}

// localHosts are the addresses phones and Asterisk use for this proxy:
// the advertised host, the specific listen addresses and the VIP. The
// registrar treats them as local domains (INVITE sip:201@<VIP>).
func (d *daemon) localHosts() []string {
	hosts := []string{d.cfg.SIP.Advertise}
	if ls, err := d.cfg.SIP.Listeners(); err == nil {
		for _, l := range ls {
			hosts = append(hosts, l.Addr.Addr().String())
		}
	}
	if d.cfg.ClusterEnabled() {
		if p, err := netip.ParsePrefix(d.cfg.ClusterConfig().VIP.Address); err == nil {
			hosts = append(hosts, p.Addr().String())
		}
	}
	return hosts
}

// peerAddrs are the cluster peers' addresses (the twin proxy, the
// witness), exempt from the flood guard.
func (d *daemon) peerAddrs() []netip.Addr {
	var out []netip.Addr
	for _, peer := range d.cfg.Cluster.Peers {
		for _, hp := range []string{peer.Gossip, peer.Raft} {
			if ap, err := netip.ParseAddrPort(hp); err == nil {
				out = append(out, ap.Addr())
			}
		}
	}
	return out
}

// healthTargets reads each backend's AMI secret file.
func healthTargets(bs []config.Backend) ([]health.Target, error) {
	out := make([]health.Target, len(bs))
	for i, b := range bs {
		out[i] = health.Target{Name: b.Name, Address: b.Address, Transport: b.Transport}
		if b.AMI != nil {
			secret, err := secretfile.Read(b.AMI.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("backends[%d].ami.secret_file: %w", i, err)
			}
			out[i].AMI = &health.AMITarget{Address: b.AMI.Address, Username: b.AMI.Username, Secret: strings.TrimRight(string(secret), "\r\n")}
		}
	}
	return out, nil
}

func backendNames(bs []config.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Name
	}
	return out
}

func proxyBackends(bs []config.Backend) []proxy.Backend {
	out := make([]proxy.Backend, len(bs))
	for i, b := range bs {
		out[i] = proxy.Backend{Name: b.Name, Address: b.Address, Transport: b.Transport, TCP: b.TCP}
	}
	return out
}

func newLogger(c config.Log) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil // zap's own drops without a count; logsample reports it
	zc.OutputPaths = []string{"stderr"}
	return zc.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return logsample.Wrap(c, logsample.DefaultConfig()) }))
}
