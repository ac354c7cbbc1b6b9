package ratelimit

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// clock is a settable time for tests, in nanoseconds.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() int64              { return c.ns.Load() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func key(s string) Key                   { return addr(s).As16() }
func announce(ip string) *bittorrent.AnnounceRequest {
	return &bittorrent.AnnounceRequest{Addr: netip.AddrPortFrom(addr(ip), 6881)}
}

// TestTakeRefill pins the bucket arithmetic: a bucket of 3 gaining 2
// tokens a second, driven by a test clock.
func TestTakeRefill(t *testing.T) {
	tb := newTable(2, 3, 1024)
	k := key("192.0.2.1")
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, true}, {0, true}, {0, true}, // the burst
		{0, false},                      // empty
		{400 * time.Millisecond, false}, // 0.8 tokens
		{500 * time.Millisecond, true},  // 1 token
		{500 * time.Millisecond, false},
		{time.Second, true},                                                          // 0.5 s later: 1 token
		{10 * time.Second, true}, {10 * time.Second, true}, {10 * time.Second, true}, // refilled to 3, not more
		{10 * time.Second, false},
		{10*time.Second + 499*time.Millisecond, false},
		{10*time.Second + 500*time.Millisecond, true},
	}
	for i, s := range steps {
		if got := tb.take(k, int64(s.at)); got != s.want {
			t.Fatalf("step %d: take at %s = %v, want %v", i, s.at, got, s.want)
		}
	}
	// A denied take does not spend a token.
	other := key("192.0.2.2")
	for range 3 {
		tb.take(other, 0)
	}
	for range 100 {
		if tb.take(other, int64(100*time.Millisecond)) {
			t.Fatal("empty bucket allowed a request")
		}
	}
	if !tb.take(other, int64(500*time.Millisecond)) {
		t.Error("refused requests delayed the refill")
	}
}

func TestSubnetKey(t *testing.T) {
	h, err := newHook(DefaultConfig(), prometheus.NewRegistry(), (&clock{}).now)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		a, b string
		same bool
	}{
		{"192.0.2.1", "192.0.2.254", true},
		{"192.0.2.1", "192.0.3.1", false},
		{"::ffff:192.0.2.1", "192.0.2.9", true}, // mapped addresses are IPv4
		{"2001:db8:1::1", "2001:db8:1:ffff:ffff::1", true},
		{"2001:db8:1::1", "2001:db8:2::1", false},
		{"fe80::1%eth0", "fe80::2", true},
		{"0.0.0.0", "::", false},
	}
	for _, tt := range tests {
		t.Run(tt.a+"_"+tt.b, func(t *testing.T) {
			ka, kb := h.subnetKey(addr(tt.a).Unmap()), h.subnetKey(addr(tt.b).Unmap())
			if (ka == kb) != tt.same {
				t.Errorf("subnetKey(%s) = %x, subnetKey(%s) = %x; same = %v, want %v", tt.a, ka, tt.b, kb, ka == kb, tt.same)
			}
		})
	}
	want := netip.MustParsePrefix("2001:db8:1::/48").Addr().As16()
	if got := h.subnetKey(addr("2001:db8:1:2:3:4:5:6")); got != want {
		t.Errorf("subnetKey(2001:db8:1:2:3:4:5:6) = %x, want %x", got, want)
	}
}

func TestHookScopes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PerIP = Limit{Rate: 1, Burst: 2}
	cfg.PerSubnet = Limit{Rate: 1, Burst: 3}
	reg := prometheus.NewRegistry()
	var clk clock
	h, err := newHook(cfg, reg, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	steps := []struct {
		ip    string
		scope string // "" for allowed
	}{
		{"192.0.2.1", ""},
		{"192.0.2.1", ""},
		{"192.0.2.1", "ip"}, // third from one address
		{"192.0.2.2", ""},   // third from the /24
		{"192.0.2.3", "subnet"},
		{"198.51.100.1", ""}, // another /24
		{"2001:db8::1", ""},
	}
	wantIP, wantSubnet := 0.0, 0.0
	for i, s := range steps {
		err := h.HandleAnnounce(ctx, announce(s.ip), nil)
		switch s.scope {
		case "":
			if err != nil {
				t.Fatalf("step %d (%s): %v, want allowed", i, s.ip, err)
			}
		default:
			if !errors.Is(err, ErrLimited) || bittorrent.FailureReason(err) != "rate limit exceeded" {
				t.Fatalf("step %d (%s): %v, want %v", i, s.ip, err, ErrLimited)
			}
			if s.scope == "ip" {
				wantIP++
			} else {
				wantSubnet++
			}
		}
	}
	if err := h.HandleScrape(ctx, &bittorrent.ScrapeRequest{Addr: netip.MustParseAddrPort("192.0.2.1:1")}, nil); !errors.Is(err, ErrLimited) {
		t.Errorf("scrape from a limited address: %v, want %v", err, ErrLimited)
	}
	wantIP++
	if got := testutil.ToFloat64(h.limitedIP); got != wantIP {
		t.Errorf(`rate_limited_total{scope="ip"} = %v, want %v`, got, wantIP)
	}
	if got := testutil.ToFloat64(h.limitedSubnet); got != wantSubnet {
		t.Errorf(`rate_limited_total{scope="subnet"} = %v, want %v`, got, wantSubnet)
	}
	clk.advance(time.Second)
	if err := h.HandleAnnounce(ctx, announce("192.0.2.1"), nil); err != nil {
		t.Errorf("after a second's refill: %v", err)
	}

	// A second hook on the same registry shares the metrics.
	if _, err := newHook(cfg, reg, clk.now); err != nil {
		t.Errorf("second hook on one registry: %v", err)
	}
}

// TestSourceAndExempt checks that per_ip counts an IPv6 /64 as one
// address, and that exempt networks are never limited.
func TestSourceAndExempt(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PerIP = Limit{Rate: 0.001, Burst: 2}
	cfg.PerSubnet = Limit{}
	cfg.Exempt = []string{"203.0.113.7", "2001:db8:ee::/48", "::ffff:198.51.100.0/120"}
	var clk clock
	h, err := newHook(cfg, prometheus.NewRegistry(), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []struct {
		ip      string
		allowed bool
	}{
		{"2001:db8:1:1::1", true},
		{"2001:db8:1:1:ffff::2", true},
		{"2001:db8:1:1::3", false}, // third from the /64
		{"2001:db8:1:2::1", true},  // the next /64
		{"203.0.113.7", true}, {"203.0.113.7", true}, {"203.0.113.7", true},
		{"203.0.113.8", true}, {"203.0.113.8", true}, {"203.0.113.8", false},
		{"2001:db8:ee:5::1", true}, {"2001:db8:ee:5::1", true}, {"2001:db8:ee:5::1", true},
		{"198.51.100.9", true}, {"198.51.100.9", true}, {"::ffff:198.51.100.9", true},
	} {
		if err := h.allow(addr(s.ip)); (err == nil) != s.allowed {
			t.Errorf("step %d (%s): %v, want allowed %v", i, s.ip, err, s.allowed)
		}
	}
}

func TestOff(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.Off() {
		t.Error("the defaults are off")
	}
	cfg.PerIP, cfg.PerSubnet = Limit{}, Limit{}
	if !cfg.Off() {
		t.Error("both rates 0 is not off")
	}
}

func TestDisabledScope(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PerIP = Limit{}
	cfg.PerSubnet = Limit{Rate: 1, Burst: 1}
	h, err := newHook(cfg, prometheus.NewRegistry(), (&clock{}).now)
	if err != nil {
		t.Fatal(err)
	}
	if h.ip != nil {
		t.Fatal("per_ip rate 0 built a table")
	}
	if err := h.allow(addr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := h.allow(addr("192.0.2.2")); !errors.Is(err, ErrLimited) {
		t.Fatalf("second address of the /24: %v, want limited", err)
	}
}

func TestSweep(t *testing.T) {
	tb := newTable(1, 2, 1024)
	tb.take(key("192.0.2.1"), 0) // full again at 1s
	tb.take(key("192.0.2.2"), 0)
	tb.take(key("192.0.2.2"), 0) // full again at 2s
	if n, _ := tb.sweep(int64(time.Second) - 1); n != 2 {
		t.Fatalf("sweep before any refill left %d, want 2", n)
	}
	if n, _ := tb.sweep(int64(time.Second)); n != 1 {
		t.Fatalf("sweep at 1s left %d, want 1", n)
	}
	// Dropping a full bucket changes nothing: the client still has a full burst.
	for i := range 2 {
		if !tb.take(key("192.0.2.1"), int64(time.Second)) {
			t.Errorf("take %d: a swept bucket did not start full", i)
		}
	}
	if n, _ := tb.sweep(int64(time.Hour)); n != 0 {
		t.Fatalf("sweep after an hour left %d, want 0", n)
	}
}

func TestEvictAtCap(t *testing.T) {
	tb := newTable(1, 10, numShards) // one entry per shard
	var keys []Key
	for i := 0; len(keys) < 2; i++ {
		k := Key(addr("10.0.0.0").As16())
		k[13], k[14], k[15] = byte(i>>16), byte(i>>8), byte(i)
		if shardOf(&k) == 0 {
			keys = append(keys, k)
		}
	}
	for range 5 {
		tb.take(keys[0], 0)
	}
	tb.take(keys[1], 0) // evicts keys[0], which had spent 5 tokens
	if got := tb.len(); got != 1 {
		t.Fatalf("len = %d, want 1", got)
	}
	if _, evicted := tb.sweep(0); evicted != 1 {
		t.Errorf("evicted = %d, want 1", evicted)
	}
	s := &tb.shards[0]
	if _, ok := s.m[keys[0]]; ok {
		t.Error("the old entry was kept")
	}
}

// TestMemoryBound feeds twenty times the cap in distinct addresses through
// a hook capped at 10k buckets per scope: the table never grows past the
// cap. What matters is the ratio, and every shard's share of the cap still
// fills many times over, so a larger cap would only cost time.
func TestMemoryBound(t *testing.T) {
	const maxEntries = 10_000
	cfg := DefaultConfig()
	cfg.MaxEntries = maxEntries
	cfg.PerIP = Limit{Rate: 0.001, Burst: 1} // buckets stay non-full for 1000 s
	cfg.IPv6Prefix = 128                     // one subnet per address, to fill that table too
	var clk clock
	h, err := newHook(cfg, prometheus.NewRegistry(), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	base := addr("2001:db8::").As16()
	for i := range 20 * maxEntries {
		k := base // one /64 each: a /64 is one address to per_ip
		k[4], k[5], k[6], k[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		if err := h.allow(netip.AddrFrom16(k)); err != nil {
			t.Fatalf("address %d refused: %v", i, err)
		}
		clk.advance(time.Microsecond)
		if i%(maxEntries*5/2) == 0 || i == 20*maxEntries-1 {
			if n := h.ip.len(); n > maxEntries {
				t.Fatalf("after %d addresses per_ip holds %d buckets, cap %d", i+1, n, maxEntries)
			}
			if n := h.subnet.len(); n > maxEntries {
				t.Fatalf("after %d addresses per_subnet holds %d buckets, cap %d", i+1, n, maxEntries)
			}
		}
	}
	n := h.ip.len()
	if n < maxEntries*9/10 {
		t.Errorf("per_ip holds %d buckets, want close to the cap %d", n, maxEntries)
	}
	t.Logf("per_ip holds %d buckets after %d addresses (cap %d)", n, 20*maxEntries, maxEntries)
}

// TestBytesPerBucket measures the heap a full table takes per bucket.
func TestBytesPerBucket(t *testing.T) {
	const n = 1 << 20
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	tb := newTable(1, 1, n)
	for i := range n {
		k := addr("10.0.0.0").As16()
		k[13], k[14], k[15] = byte(i>>16), byte(i>>8), byte(i)
		tb.take(k, 0)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	held := tb.len()
	per := float64(ms.HeapAlloc-before) / float64(held)
	t.Logf("%d buckets take %.1f bytes each", held, per)
	if per > 100 {
		t.Errorf("%.1f bytes per bucket, want under 100", per)
	}
	runtime.KeepAlive(tb)
}

// TestConcurrent hammers one table from many goroutines with the sweeper
// running, under -race. With time frozen, one address gets exactly its burst.
func TestConcurrent(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PerIP = Limit{Rate: 1, Burst: 50}
	cfg.PerSubnet = Limit{Rate: 1, Burst: 1_000_000}
	cfg.MaxEntries = 1024
	var clk clock
	h, err := newHook(cfg, prometheus.NewRegistry(), clk.now)
	if err != nil {
		t.Fatal(err)
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				if h.allow(addr("192.0.2.1")) == nil {
					allowed.Add(1)
				}
				k := addr("2001:db8::").As16()
				k[13], k[14], k[15] = byte(g), byte(i>>8), byte(i)
				_ = h.allow(netip.AddrFrom16(k))
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			h.sweep()
		}
	})
	wg.Wait()
	if got := allowed.Load(); got != 50 {
		t.Errorf("one address got %d requests through, want its burst of 50", got)
	}
	if n := h.ip.len(); n > 1024 {
		t.Errorf("per_ip holds %d, cap 1024", n)
	}
}

func TestNewAndClose(t *testing.T) {
	cfg := DefaultConfig()
	cfg.SweepInterval = time.Second
	h, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.allow(addr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		key    string
	}{
		{"negative rate", func(c *Config) { c.PerIP.Rate = -1 }, "per_ip.rate"},
		{"huge rate", func(c *Config) { c.PerSubnet.Rate = 1e7 }, "per_subnet.rate"},
		{"zero burst", func(c *Config) { c.PerIP.Burst = 0 }, "per_ip.burst"},
		{"both off", func(c *Config) { c.PerIP.Rate, c.PerSubnet.Rate = 0, 0 }, "per_ip"},
		{"v4 prefix", func(c *Config) { c.IPv4Prefix = 33 }, "ipv4_prefix"},
		{"v6 prefix", func(c *Config) { c.IPv6Prefix = 0 }, "ipv6_prefix"},
		{"max entries", func(c *Config) { c.MaxEntries = 10 }, "max_entries"},
		{"exempt", func(c *Config) { c.Exempt = []string{"10.0.0.0/8", "example.org"} }, "exempt[1]"},
		{"sweep", func(c *Config) { c.SweepInterval = time.Millisecond }, "sweep_interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.key)
			}
		})
	}
	off := DefaultConfig()
	off.PerSubnet = Limit{}
	if err := off.Validate(); err != nil {
		t.Errorf("per_subnet off: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}
