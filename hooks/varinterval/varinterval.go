// Package varinterval raises the announce interval of a random share of
// answers by a random amount, so that clients which started together drift
// apart instead of re-announcing in a storm.
package varinterval

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Name is the hook's name in the `hooks` list of the config file.
const Name = "interval_variation"

// Config is the hook's `options`.
type Config struct {
	// Probability is the share of answers whose interval is raised, in (0, 1].
	Probability float64 `yaml:"probability"`
	// MaxIncrease bounds the random amount added to the interval.
	MaxIncrease time.Duration `yaml:"max_increase"`
	// MinIntervalToo raises the min interval by the same amount, so clients
	// that honour only the min interval are spread too.
	MinIntervalToo bool `yaml:"min_interval_too"`
}

// DefaultConfig raises one answer in five by up to five minutes.
func DefaultConfig() Config {
	return Config{Probability: 0.2, MaxIncrease: 5 * time.Minute, MinIntervalToo: true}
}

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	if !(c.Probability > 0 && c.Probability <= 1) {
		return fmt.Errorf("probability: %v is out of range; want more than 0 and at most 1", c.Probability)
	}
	if c.MaxIncrease < time.Second || c.MaxIncrease > 24*time.Hour {
		return fmt.Errorf("max_increase: %s is out of range; want 1s to 24h", c.MaxIncrease)
	}
	return nil
}

// Hook is the interval-variation PreHook. Safe for concurrent use.
type Hook struct {
	cfg Config
}

// New returns the hook for cfg.
func New(cfg Config) (*Hook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Hook{cfg: cfg}, nil
}

// HandleAnnounce raises resp's intervals with the configured probability.
// math/rand/v2's top-level functions are safe for concurrent use and do not
// contend on a lock.
// It must run before any hook that reads the intervals.
func (h *Hook) HandleAnnounce(_ context.Context, _ *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	if rand.Float64() >= h.cfg.Probability { //nolint:gosec // G404: jitter spreads load; guessing it gains a client nothing
		return nil
	}
	add := uint32(1 + rand.Int64N(int64(h.cfg.MaxIncrease/time.Second))) //nolint:gosec // G404 as above; G115: Validate caps max_increase at 24h
	resp.Interval += add
	if h.cfg.MinIntervalToo {
		resp.MinInterval += add
	}
	return nil
}

// HandleScrape does nothing: scrapes carry no interval.
func (h *Hook) HandleScrape(context.Context, *bittorrent.ScrapeRequest, *bittorrent.ScrapeResponse) error {
	return nil
}
