package limits

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Guard is the per-source flood guard (Kamailio's pike): it counts the
// requests of each source address over a sliding window; a source past
// the rate is answered once (503) and then ignored for the cool-down. The
// table is bounded (max_sources): when it is full, new sources pass
// unchecked and are counted, rather than evicting the ones being watched.
// Which sources are exempt (backends, the twin) is the caller's business.
type Guard struct {
	cfg   FloodConfig
	log   *zap.Logger
	m     *floodMetrics
	epoch time.Time
	now   func() int64 // ns since epoch; a test's clock

	mu    sync.Mutex
	table map[netip.Addr]*source
}

// source is one address's counts. The rate is the previous window's count,
// weighted by how much of it the sliding window still covers, plus the
// current one's (the estimate nginx's and Cloudflare's limiters use):
// constant memory and work per request.
type source struct {
	start     int64 // start of the current window, ns since epoch
	cur, prev int
	last      int64 // last request
	until     int64 // blocked until; 0 when not blocked
	answered  bool  // the block has been answered (503 once)
	dropped   int   // requests ignored while blocked
}

// NewGuard builds the guard; Run releases blocked sources and forgets idle
// ones. With cfg.Rate 0 it lets everything pass.
func NewGuard(cfg FloodConfig, log *zap.Logger, reg prometheus.Registerer) *Guard {
	if log == nil {
		log = zap.NewNop()
	}
	g := &Guard{cfg: cfg, log: log, m: newFloodMetrics(reg), epoch: time.Now(), table: map[netip.Addr]*source{}}
	g.now = func() int64 { return int64(time.Since(g.epoch)) }
	return g
}

// Allow counts one request from src. ok: take it. Otherwise answer says
// whether to answer it (503: the first answerable request past the rate;
// an ACK is not) or to drop it silently (the source is blocked).
func (g *Guard) Allow(src netip.Addr, answerable bool) (ok, answer bool) {
	if g.cfg.Rate <= 0 {
		return true, false
	}
	now := g.now()
	w := int64(g.cfg.Window)
	g.mu.Lock()
	s := g.table[src]
	if s == nil {
		if len(g.table) >= g.cfg.MaxSources {
			g.mu.Unlock()
			g.m.tableFull.Inc()
			return true, false
		}
		s = &source{start: now}
		g.table[src] = s
	}
	s.last = now
	if s.until != 0 {
		if answerable && !s.answered {
			s.answered = true
			g.mu.Unlock()
			return false, true
		}
		s.dropped++
		g.mu.Unlock()
		g.m.dropped.Inc()
		return false, false
	}
	if el := now - s.start; el >= w {
		s.prev = s.cur
		if el >= 2*w {
			s.prev = 0
		}
		s.cur = 0
		s.start = now - el%w
	}
	s.cur++
	rate := s.cur + int(int64(s.prev)*(w-(now-s.start))/w)
	if rate <= g.cfg.Rate {
		g.mu.Unlock()
		return true, false
	}
	s.until = now + int64(g.cfg.Cooldown)
	s.answered = answerable
	if !answerable {
		s.dropped++
		g.m.dropped.Inc()
	}
	g.mu.Unlock()
	g.m.blocked.Inc()
	g.log.Warn("source blocked: request rate over limits.flood",
		zap.Stringer("source", src), zap.Int("requests", rate), zap.Duration("window", g.cfg.Window),
		zap.Duration("cooldown", g.cfg.Cooldown))
	return false, answerable
}

// Run sweeps the table until ctx ends.
func (g *Guard) Run(ctx context.Context) error {
	if g.cfg.Rate <= 0 {
		<-ctx.Done()
		return nil
	}
	every(ctx, min(time.Second, g.cfg.Window/2), func() { g.sweep(g.now()) })
	return nil
}

// sweep releases the sources whose cool-down is over (a log line with the
// requests dropped meanwhile) and forgets those idle for two windows.
func (g *Guard) sweep(now int64) {
	type release struct {
		src     netip.Addr
		dropped int
	}
	var released []release
	blocked := 0
	g.mu.Lock()
	for a, s := range g.table {
		switch {
		case s.until != 0 && now >= s.until:
			released = append(released, release{a, s.dropped})
			delete(g.table, a)
		case s.until != 0:
			blocked++
		case now-s.last >= 2*int64(g.cfg.Window):
			delete(g.table, a)
		}
	}
	n := len(g.table)
	g.mu.Unlock()
	g.m.sources.Set(float64(n))
	g.m.blockedNow.Set(float64(blocked))
	for _, r := range released {
		g.log.Info("source released: cool-down over",
			zap.Stringer("source", r.src), zap.Int("dropped", r.dropped), zap.Duration("cooldown", g.cfg.Cooldown))
	}
}
