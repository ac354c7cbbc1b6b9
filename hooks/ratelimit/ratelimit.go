// Package ratelimit refuses announces and scrapes from a client address, or
// from its subnet, that asks more often than a token bucket allows, keeping
// a bounded number of buckets however many addresses it sees.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Name is the hook's name in the `hooks` list of the config file.
const Name = "rate_limit"

// ErrLimited is the failure reason of a refused request. It is held as an
// error so that returning it does not box the string on every refusal.
var ErrLimited error = bittorrent.ClientError("rate limit exceeded")

// Limit is one token bucket's shape.
type Limit struct {
	// Rate is the tokens added per second; 0 turns this limit off.
	Rate float64 `yaml:"rate"`
	// Burst is the bucket's capacity: how many requests a client that has
	// been quiet may send at once.
	Burst int `yaml:"burst"`
}

func (l Limit) enabled() bool { return l.Rate != 0 }

func (l Limit) validate(key string) error {
	if l.Rate == 0 {
		return nil
	}
	if !(l.Rate >= 0.001 && l.Rate <= 1e6) {
		return fmt.Errorf("%s.rate: %v is out of range; want 0 (off) or 0.001 to 1000000 requests a second", key, l.Rate)
	}
	if l.Burst < 1 || l.Burst > 1e6 {
		return fmt.Errorf("%s.burst: %d is out of range; want 1 to 1000000", key, l.Burst)
	}
	return nil
}

// Config is the hook's `options`.
type Config struct {
	// PerIP limits each client address.
	PerIP Limit `yaml:"per_ip"`
	// PerSubnet limits each IPv4Prefix or IPv6Prefix network, for clients
	// that hold many addresses (an IPv6 /64 is one user's).
	PerSubnet Limit `yaml:"per_subnet"`
	// IPv4Prefix and IPv6Prefix are the subnet lengths in bits.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// MaxEntries caps the buckets held for each of per_ip and per_subnet.
	MaxEntries int `yaml:"max_entries"`
	// SweepInterval is how often buckets that have refilled are dropped.
	SweepInterval time.Duration `yaml:"sweep_interval"`
}

// DefaultConfig allows each address 5 requests a second with bursts of
// 100, and each /24 or /48 ten times that, in at most a million buckets
// per scope.
func DefaultConfig() Config {
	return Config{
		PerIP:         Limit{Rate: 5, Burst: 100},
		PerSubnet:     Limit{Rate: 50, Burst: 1000},
		IPv4Prefix:    24,
		IPv6Prefix:    48,
		MaxEntries:    1_000_000,
		SweepInterval: time.Minute,
	}
}

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	if err := c.PerIP.validate("per_ip"); err != nil {
		return err
	}
	if err := c.PerSubnet.validate("per_subnet"); err != nil {
		return err
	}
	if !c.PerIP.enabled() && !c.PerSubnet.enabled() {
		return errors.New("per_ip: both per_ip.rate and per_subnet.rate are 0; want at least one limit on")
	}
	if c.IPv4Prefix < 1 || c.IPv4Prefix > 32 {
		return fmt.Errorf("ipv4_prefix: %d is out of range; want 1 to 32", c.IPv4Prefix)
	}
	if c.IPv6Prefix < 1 || c.IPv6Prefix > 128 {
		return fmt.Errorf("ipv6_prefix: %d is out of range; want 1 to 128", c.IPv6Prefix)
	}
	if c.MaxEntries < 1024 || c.MaxEntries > 1<<30 {
		return fmt.Errorf("max_entries: %d is out of range; want 1024 to %d", c.MaxEntries, 1<<30)
	}
	if c.SweepInterval < time.Second || c.SweepInterval > time.Hour {
		return fmt.Errorf("sweep_interval: %s is out of range; want 1s to 1h", c.SweepInterval)
	}
	return nil
}

// Hook is the rate-limit PreHook. Safe for concurrent use; Close stops its
// sweeper.
type Hook struct {
	ip, subnet     *table // nil when that limit is off
	v4bits, v6bits int
	now            func() int64 // nanoseconds on a monotonic clock

	limitedIP, limitedSubnet prometheus.Counter
	entries                  *prometheus.GaugeVec
	evictions                *prometheus.CounterVec
	lastEvicted              [2]uint64 // owned by the sweeper

	sweeping bool // New started the sweeper, which closes done
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// New returns the hook for cfg, registering its metrics with reg, and
// starts the sweeper that Close stops.
func New(cfg Config, reg prometheus.Registerer) (*Hook, error) {
	start := time.Now()
	h, err := newHook(cfg, reg, func() int64 { return int64(time.Since(start)) })
	if err != nil {
		return nil, err
	}
	h.sweeping = true
	go h.sweeper(cfg.SweepInterval)
	return h, nil
}

// newHook builds the hook on the clock now, without a sweeper.
func newHook(cfg Config, reg prometheus.Registerer, now func() int64) (*Hook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Hook{
		v4bits: cfg.IPv4Prefix,
		v6bits: cfg.IPv6Prefix,
		now:    now,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if cfg.PerIP.enabled() {
		h.ip = newTable(cfg.PerIP.Rate, cfg.PerIP.Burst, cfg.MaxEntries)
	}
	if cfg.PerSubnet.enabled() {
		h.subnet = newTable(cfg.PerSubnet.Rate, cfg.PerSubnet.Burst, cfg.MaxEntries)
	}
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "karuta", Subsystem: "hook", Name: "rate_limited_total",
		Help: "Requests refused by the rate_limit hook, by the limit that refused them.",
	}, []string{"scope"})
	h.entries = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "karuta", Subsystem: "hook", Name: "rate_limit_entries",
		Help: "Token buckets held by the rate_limit hook at the last sweep.",
	}, []string{"scope"})
	h.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "karuta", Subsystem: "hook", Name: "rate_limit_evictions_total",
		Help: "Token buckets dropped before they had refilled because max_entries was reached.",
	}, []string{"scope"})
	var err error
	if limited, err = register(reg, limited); err != nil {
		return nil, err
	}
	if h.entries, err = register(reg, h.entries); err != nil {
		return nil, err
	}
	if h.evictions, err = register(reg, h.evictions); err != nil {
		return nil, err
	}
	// Series for the limits in force only, at zero from the start: a
	// limit that is off never moves its series.
	if h.ip != nil {
		h.limitedIP = limited.WithLabelValues("ip")
		h.entries.WithLabelValues("ip")
		h.evictions.WithLabelValues("ip")
	}
	if h.subnet != nil {
		h.limitedSubnet = limited.WithLabelValues("subnet")
		h.entries.WithLabelValues("subnet")
		h.evictions.WithLabelValues("subnet")
	}
	return h, nil
}

// register registers c, or returns the collector already registered under
// its name, so that several rate_limit hooks share their metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	if err != nil {
		return c, fmt.Errorf("register metrics: %w", err)
	}
	return c, nil
}

// HandleAnnounce takes a token from the client's address and subnet.
func (h *Hook) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	return h.allow(req.ClientIP())
}

// HandleScrape takes a token like an announce.
func (h *Hook) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, _ *bittorrent.ScrapeResponse) error {
	return h.allow(req.Addr.Addr())
}

// allow takes a token from each enabled bucket of addr. The subnet bucket
// is not charged for a request the address bucket refused.
func (h *Hook) allow(addr netip.Addr) error {
	addr = addr.Unmap()
	now := h.now()
	if h.ip != nil && !h.ip.take(addr.As16(), now) {
		h.limitedIP.Inc()
		return ErrLimited
	}
	if h.subnet != nil && !h.subnet.take(h.subnetKey(addr), now) {
		h.limitedSubnet.Inc()
		return ErrLimited
	}
	return nil
}

// subnetKey is the network of addr at the configured prefix length.
func (h *Hook) subnetKey(addr netip.Addr) Key {
	bits := h.v6bits
	if addr.Is4() {
		bits = h.v4bits
	}
	p, _ := addr.Prefix(bits) // fails only for the zero Addr, whose key is all zero
	return p.Addr().As16()
}

// sweeper drops refilled buckets every interval until Close.
func (h *Hook) sweeper(interval time.Duration) {
	defer close(h.done)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-tick.C:
			h.sweep()
		}
	}
}

// sweep drops refilled buckets and updates the gauges.
func (h *Hook) sweep() {
	now := h.now()
	for i, s := range []struct {
		t     *table
		scope string
	}{{h.ip, "ip"}, {h.subnet, "subnet"}} {
		if s.t == nil {
			continue
		}
		n, evicted := s.t.sweep(now)
		h.entries.WithLabelValues(s.scope).Set(float64(n))
		h.evictions.WithLabelValues(s.scope).Add(float64(evicted - h.lastEvicted[i]))
		h.lastEvicted[i] = evicted
	}
}

// Close stops the sweeper and waits for it. The hook still answers after
// Close, without sweeping.
func (h *Hook) Close() error {
	h.once.Do(func() {
		close(h.stop)
		if h.sweeping {
			<-h.done
		}
	})
	return nil
}
