package node

import (
	"fmt"

	"go.uber.org/zap"

	httpfront "github.com/karuta-tracker/karuta/frontends/http"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/ratelimit"
	"github.com/karuta-tracker/karuta/node/memlimit"
	"github.com/karuta-tracker/karuta/store"
)

// defaultRateLimit is the `rate_limit` section's default: 30 announces and
// scrapes a second from each address (an IPv6 /64), in bursts of 300, and
// no limit per subnet. docs/security.md argues the numbers: they serve the
// largest carrier-grade NAT address while one host cannot fill the store
// or the post queue.
func defaultRateLimit() ratelimit.Config {
	c := ratelimit.DefaultConfig()
	c.PerIP = ratelimit.Limit{Rate: 30, Burst: 300}
	c.PerSubnet = ratelimit.Limit{}
	c.MaxEntries = 0
	return c
}

// validateRateLimit checks the `rate_limit` section, where both limits off
// means no limiting at all.
func validateRateLimit(c ratelimit.Config) func() error {
	return func() error {
		if c.Off() {
			return nil
		}
		return c.Validate()
	}
}

// fallbackMemory is what sizing assumes when the memory the process may
// use cannot be read.
const fallbackMemory = 1 << 30

// HTTP connections get this share of the memory at httpConnCost bytes
// each (frontends/http's BenchmarkIdleConnMemory measures about 21.7 KB),
// at least one connection per allowed from one address and at most
// frontends/http's default.
const (
	httpConnShare = 0.15
	httpConnCost  = 24 << 10
)

// Rate-limit tables get this share of the memory, at rateLimitBucketCost
// bytes a bucket (hooks/ratelimit's TestBytesPerBucket measures about 54),
// within these bounds.
const (
	rateLimitShare      = 0.04
	rateLimitBucketCost = 64
	minRateLimitEntries = 1 << 16
	maxRateLimitEntries = 1 << 24
)

// sized are the parts of a config whose limits sizedLimits filled in.
type sized struct {
	store     store.Config
	rateLimit ratelimit.Config
	http      httpfront.Config
}

// sizedLimits returns the store, rate_limit and HTTP frontend sections with
// the limits the config leaves at 0 filled in from the memory the process
// may use: the store's swarms and peers (store.Limits.Sized), the rate
// limiter's buckets and the HTTP connections. It logs what is in force.
// The config itself keeps its zeros, so a reload compares like with like.
func sizedLimits(c Config, mem memlimit.Limit, log *zap.Logger) sized {
	cfg := &c
	if mem.Bytes == 0 {
		var err error
		if mem, err = memlimit.Detect(memlimit.ThisProcess()); err != nil {
			log.Warn("cannot tell how much memory this process may use; sizing limits for 1 GiB", zap.Error(err))
			mem = memlimit.Limit{Bytes: fallbackMemory, Source: "fallback"}
		}
	}
	cfg.Store.Limits = cfg.Store.Limits.Sized(mem.Bytes)
	if cfg.RateLimit.MaxEntries == 0 {
		cfg.RateLimit.MaxEntries = int(min(max(float64(mem.Bytes)*rateLimitShare/rateLimitBucketCost, minRateLimitEntries), maxRateLimitEntries))
	}
	if h := &cfg.Frontends.HTTP; h.MaxConnections == 0 {
		h.MaxConnections = int(min(max(float64(mem.Bytes)*httpConnShare/httpConnCost, float64(h.MaxConnectionsPerIP)), httpfront.DefaultMaxConnections))
	}
	log.Info("limits sized from memory", zap.Int64("memory_bytes", mem.Bytes), zap.String("memory_source", mem.Source),
		zap.Int("max_swarms", cfg.Store.MaxSwarms), zap.Int("max_peers", cfg.Store.MaxPeers),
		zap.Int("max_peers_per_source", cfg.Store.MaxPeersPerSource), zap.Int("rate_limit_max_entries", cfg.RateLimit.MaxEntries),
		zap.Int("http_max_connections", cfg.Frontends.HTTP.MaxConnections))
	return sized{store: cfg.Store, rateLimit: cfg.RateLimit, http: cfg.Frontends.HTTP}
}

// addRateLimit puts the limiter of the `rate_limit` section rl before the
// configured hooks, exempting the HTTP frontend's trusted proxies, unless
// the section turns both limits off.
func (n *Node) addRateLimit(rl ratelimit.Config, trustedProxies []string, pre []hooks.PreHook) ([]hooks.PreHook, error) {
	if rl.Off() {
		n.log.Warn("rate_limit is off: one address may send announces and scrapes as fast as it likes")
		return pre, nil
	}
	rl.Exempt = append(append([]string(nil), rl.Exempt...), trustedProxies...)
	h, err := ratelimit.New(rl, n.reg)
	if err != nil {
		return pre, fmt.Errorf("rate_limit: %w", err)
	}
	n.hooks.closers = append(n.hooks.closers, h)
	return append([]hooks.PreHook{h}, pre...), nil
}
