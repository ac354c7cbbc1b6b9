package node

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the process logger from the log section: JSON or
// console, at the configured level, with zap's sampling so a flood of one
// message cannot swamp the output, and without stack traces. The returned
// level can be changed later.
func NewLogger(cfg LogConfig) (*zap.Logger, *zap.AtomicLevel, error) {
	return newLogger(cfg, nil)
}

// newLogger is NewLogger writing to the given paths instead of stderr.
func newLogger(cfg LogConfig, paths []string) (*zap.Logger, *zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(cfg.Level)
	if err != nil {
		return nil, nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = level
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Encoding = cfg.Format
	if cfg.Format == "console" {
		zc.EncoderConfig = zap.NewDevelopmentEncoderConfig()
	}
	// Errors are values that say where they come from ("node: listen
	// metrics 127.0.0.1:6880: address already in use"); a Go stack trace
	// under an expected failure tells an operator nothing more. Panics
	// still print theirs.
	zc.DisableStacktrace = true
	if paths != nil {
		zc.OutputPaths = paths
	}
	log, err := zc.Build()
	if err != nil {
		return nil, nil, fmt.Errorf("log: %w", err)
	}
	return log, &level, nil
}
