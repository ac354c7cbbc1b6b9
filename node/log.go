package node

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the process logger from the log section: JSON or
// console, at the configured level, with zap's sampling so a flood of one
// message cannot swamp the output. The returned level can be changed later.
func NewLogger(cfg LogConfig) (*zap.Logger, *zap.AtomicLevel, error) {
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
	log, err := zc.Build()
	if err != nil {
		return nil, nil, fmt.Errorf("log: %w", err)
	}
	return log, &level, nil
}
