package proxy

import (
	"context"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// slogBridge carries sipgo's slog records into zap. It also counts the
// messages sipgo drops as malformed: sipgo reports a parse failure only by
// logging it, so the log record is the one place to see it. Those records
// go to debug level, so a flood of garbage cannot flood the log.
type slogBridge struct {
	slog.Handler
	malformed *prometheus.CounterVec
}

func newSlogBridge(log *zap.Logger, malformed *prometheus.CounterVec) slog.Handler {
	return slogBridge{Handler: zapslog.NewHandler(log.Core()), malformed: malformed}
}

func (b slogBridge) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError || b.Handler.Enabled(ctx, l)
}

func (b slogBridge) Handle(ctx context.Context, r slog.Record) error {
	if reason := malformedReason(r); reason != "" {
		b.malformed.WithLabelValues(reason).Inc()
		r.Level = slog.LevelDebug
	}
	if !b.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return b.Handler.Handle(ctx, r)
}

func malformedReason(r slog.Record) string {
	switch r.Message {
	case "failed to parse":
		reason := "parse"
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" && strings.Contains(a.Value.String(), "exceeds") {
				reason = "oversize"
			}
			return true
		})
		return reason
	case "Server tx failed to handle request":
		reason := ""
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "error" && strings.Contains(a.Value.String(), "make key failed") {
				reason = "no_transaction_key" // answered 400 by sipgo
			}
			return true
		})
		return reason
	}
	return ""
}

func (b slogBridge) WithAttrs(as []slog.Attr) slog.Handler {
	return slogBridge{Handler: b.Handler.WithAttrs(as), malformed: b.malformed}
}

func (b slogBridge) WithGroup(name string) slog.Handler {
	return slogBridge{Handler: b.Handler.WithGroup(name), malformed: b.malformed}
}
