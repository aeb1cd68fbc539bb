package cluster

import (
	"bytes"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logBridge turns the line-oriented loggers of memberlist ("[WARN] memberlist: ...") and
// raft/hclog ("2026-01-01T00:00:00Z [INFO]  raft: ...") into zap entries at the level
// named in brackets. Lines without a level are logged at info.
type logBridge struct{ log *zap.Logger }

func (b logBridge) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(p, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		lvl, msg := parseLogLine(string(line))
		if ce := b.log.Check(lvl, msg); ce != nil {
			var fields []zap.Field
			if isKeyMismatch(msg) {
				fields = append(fields, zap.String("hint", ErrKeyMismatch.Error()))
			}
			ce.Write(fields...)
		}
	}
	return len(p), nil
}

// parseLogLine finds the first "[LEVEL]" and returns the level and the text after it.
func parseLogLine(s string) (zapcore.Level, string) {
	i := strings.IndexByte(s, '[')
	if i < 0 {
		return zapcore.InfoLevel, strings.TrimSpace(s)
	}
	j := strings.IndexByte(s[i:], ']')
	if j < 0 {
		return zapcore.InfoLevel, strings.TrimSpace(s)
	}
	tag := s[i+1 : i+j]
	rest := strings.TrimSpace(s[i+j+1:])
	switch tag {
	case "TRACE", "DEBUG":
		return zapcore.DebugLevel, rest
	case "INFO":
		return zapcore.InfoLevel, rest
	case "WARN":
		return zapcore.WarnLevel, rest
	case "ERR", "ERROR":
		return zapcore.ErrorLevel, rest
	}
	return zapcore.InfoLevel, strings.TrimSpace(s)
}

// isKeyMismatch recognises memberlist's texts for packets our keyring cannot open or
// peers sending clear text to an encrypted node.
func isKeyMismatch(s string) bool {
	l := strings.ToLower(s)
	return strings.Contains(l, "no installed keys could decrypt") ||
		strings.Contains(l, "decrypt") ||
		strings.Contains(l, "encryption is configured but remote state is not encrypted")
}
