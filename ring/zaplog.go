package ring

import (
	"bytes"
	"sync/atomic"
	"time"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"go.uber.org/zap"
)

// zapWriter turns memberlist's "[LEVEL] memberlist: ..." lines into zap
// entries at the matching level.
type zapWriter struct {
	log *zap.Logger
	// closed silences the writer once gossip is shut down: memberlist does
	// not wait for all of its goroutines, and a late line must not reach
	// a logger that is gone (a test's, say).
	closed atomic.Bool
	// warns rate-limits by the message's first words, which name the kind
	// of event (the rest carries addresses that differ every time).
	warns *ratelog.Keyed
}

func (w *zapWriter) Write(p []byte) (int, error) {
	if w.closed.Load() {
		return len(p), nil
	}
	line := bytes.TrimSpace(p)
	level, msg := "INFO", line
	if len(line) > 2 && line[0] == '[' {
		if end := bytes.IndexByte(line, ']'); end > 0 {
			level, msg = string(line[1:end]), bytes.TrimSpace(line[end+1:])
		}
	}
	switch level {
	case "ERR", "ERROR", "WARN":
		// memberlist's errors are mostly about what other hosts sent
		// (wrong keys, another cluster's label), which may repeat many
		// times a second: warnings, each kind at most once per period.
		if n, ok := w.warns.AllowAt(string(msg[:min(len(msg), 40)]), time.Now()); ok {
			w.log.Warn(string(msg), zap.Uint64("events", n))
		}
	case "DEBUG", "TRACE":
		w.log.Debug(string(msg))
	default:
		w.log.Info(string(msg))
	}
	return len(p), nil
}
