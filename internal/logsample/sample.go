package logsample

import (
	"sort"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// Config is the sampling: per message and level, First entries a Tick are
// written, the rest counted and reported every Report.
type Config struct {
	Tick   time.Duration
	First  int
	Report time.Duration
}

// DefaultConfig writes 10 identical lines a second, then one report line
// every 10 s with the number suppressed: one overload once wrote 48 832
// identical warnings in 45 s; sampled, that is at most 450 lines plus 5
// reports.
func DefaultConfig() Config {
	return Config{Tick: time.Second, First: 10, Report: 10 * time.Second}
}

// maxKeys bounds the messages counted between reports; messages are the
// program's own texts, so the bound is only a guard.
const maxKeys = 1000

// Wrap returns core sampled as cfg says, its suppressed lines counted and
// reported through core itself.
func Wrap(core zapcore.Core, cfg Config) zapcore.Core {
	st := &state{cfg: cfg, dropped: map[key]int{}, now: time.Now, out: core}
	st.next = st.now().Add(cfg.Report)
	sampled := zapcore.NewSamplerWithOptions(core, cfg.Tick, cfg.First, 0, zapcore.SamplerHook(st.hook))
	return &reporting{Core: sampled, st: st}
}

type key struct {
	level   zapcore.Level
	logger  string
	message string
}

// state is shared by a core and every core derived from it (With).
type state struct {
	cfg     Config
	now     func() time.Time
	mu      sync.Mutex
	dropped map[key]int
	next    time.Time
	// out writes the reports: the core as wrapped, without the fields of
	// any logger derived from it (they describe one line, not the many).
	out zapcore.Core
}

func (s *state) hook(e zapcore.Entry, d zapcore.SamplingDecision) {
	if d&zapcore.LogDropped == 0 {
		return
	}
	k := key{e.Level, e.LoggerName, e.Message}
	s.mu.Lock()
	if _, ok := s.dropped[k]; ok || len(s.dropped) < maxKeys {
		s.dropped[k]++
	} else {
		s.dropped[key{level: e.Level, message: "(other messages)"}]++
	}
	s.mu.Unlock()
}

// take returns the counts to report (all of them when force), resetting them.
func (s *state) take(force bool) map[key]int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.dropped) == 0 || (!force && now.Before(s.next)) {
		return nil
	}
	out := s.dropped
	s.dropped = map[key]int{}
	s.next = now.Add(s.cfg.Report)
	return out
}

// reporting is the sampled core plus the report of what it dropped.
type reporting struct {
	zapcore.Core
	st *state
}

func (r *reporting) With(fs []zapcore.Field) zapcore.Core {
	return &reporting{Core: r.Core.With(fs), st: r.st}
}

func (r *reporting) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	r.report(false)
	return r.Core.Check(e, ce)
}

func (r *reporting) Sync() error {
	r.report(true)
	return r.Core.Sync()
}

func (r *reporting) report(force bool) {
	counts := r.st.take(force)
	if counts == nil {
		return
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return counts[keys[i]] > counts[keys[j]] })
	now := r.st.now()
	for _, k := range keys {
		e := zapcore.Entry{Level: max(k.level, zapcore.InfoLevel), Time: now, LoggerName: k.logger, Message: "repeated log lines suppressed"}
		if !r.st.out.Enabled(e.Level) {
			continue
		}
		_ = r.st.out.Write(e, []zapcore.Field{
			{Key: "suppressed_msg", Type: zapcore.StringType, String: k.message},
			{Key: "level_suppressed", Type: zapcore.StringType, String: k.level.String()},
			{Key: "suppressed", Type: zapcore.Int64Type, Integer: int64(counts[k])},
		})
	}
}
