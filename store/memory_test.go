package store_test

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"gopkg.in/yaml.v3"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/store"
	"github.com/karuta-tracker/karuta/store/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		cfg := store.DefaultConfig()
		cfg.Shards = 16
		m, err := store.NewMemory(cfg, prometheus.NewRegistry(), zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return m
	})
}

// clock is a settable time source for Config.Clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newMemory returns a store whose clock starts at t0 and that is closed
// when the test ends.
func newMemory(t testing.TB, edit func(*store.Config)) (*store.Memory, *clock, *prometheus.Registry) {
	t.Helper()
	clk := &clock{t: t0}
	cfg := store.DefaultConfig()
	cfg.PeerLifetime = 10 * time.Minute
	cfg.Shards = 8
	cfg.Clock = clk.now
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	m, err := store.NewMemory(cfg, reg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, clk, reg
}

func TestConfigValidate(t *testing.T) {
	if err := store.DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	tests := []struct {
		name string
		edit func(*store.Config)
		want string // the whole message, "" when valid
	}{
		{"shortest lifetime", func(c *store.Config) { c.PeerLifetime, c.GCInterval = time.Second, time.Second }, ""},
		{"longest lifetime", func(c *store.Config) { c.PeerLifetime = 168 * time.Hour }, ""},
		{"one shard", func(c *store.Config) { c.Shards = 1 }, ""},
		{"most shards", func(c *store.Config) { c.Shards = 65536 }, ""},
		{"gc as often as lifetime", func(c *store.Config) { c.GCInterval = c.PeerLifetime }, ""},
		{"zero lifetime", func(c *store.Config) { c.PeerLifetime = 0 },
			"peer_lifetime: 0s is out of range; want 1s to 168h"},
		{"too long lifetime", func(c *store.Config) { c.PeerLifetime = 169 * time.Hour },
			"peer_lifetime: 169h0m0s is out of range; want 1s to 168h"},
		{"zero gc interval", func(c *store.Config) { c.GCInterval = 0 },
			"gc_interval: 0s is out of range; want 1s to peer_lifetime (31m0s)"},
		{"gc interval beyond lifetime", func(c *store.Config) { c.GCInterval = time.Hour },
			"gc_interval: 1h0m0s is out of range; want 1s to peer_lifetime (31m0s)"},
		{"zero shards", func(c *store.Config) { c.Shards = 0 },
			"shards: 0 is not a power of two from 1 to 65536"},
		{"negative shards", func(c *store.Config) { c.Shards = -4 },
			"shards: -4 is not a power of two from 1 to 65536"},
		{"shards not a power of two", func(c *store.Config) { c.Shards = 1000 },
			"shards: 1000 is not a power of two from 1 to 65536"},
		{"too many shards", func(c *store.Config) { c.Shards = 1 << 17 },
			"shards: 131072 is not a power of two from 1 to 65536"},
		{"snapshot file", func(c *store.Config) { c.SnapshotFile = "/var/lib/karuta/swarms" }, ""},
		{"snapshot interval too short", func(c *store.Config) { c.SnapshotInterval = time.Second },
			"snapshot_interval: 1s is out of range; want 10s to 24h"},
		{"snapshot interval too long", func(c *store.Config) { c.SnapshotInterval = 25 * time.Hour },
			"snapshot_interval: 25h0m0s is out of range; want 10s to 24h"},
		{"snapshot file is a directory", func(c *store.Config) { c.SnapshotFile = "/var/lib/karuta/" },
			`snapshot_file: "/var/lib/karuta/" names a directory; want a file path such as /var/lib/karuta/swarms`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := store.DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v, want nil", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Fatalf("Validate: %v, want %q", err, tt.want)
			}
			_, err = store.NewMemory(cfg, nil, nil)
			if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("NewMemory: %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigYAML(t *testing.T) {
	cfg := store.DefaultConfig()
	doc := "peer_lifetime: 45m\ngc_interval: 30s\nshards: 64\n"
	if err := yaml.Unmarshal([]byte(doc), &cfg); err != nil {
		t.Fatal(err)
	}
	want := store.Config{PeerLifetime: 45 * time.Minute, GCInterval: 30 * time.Second, Shards: 64}
	if cfg.PeerLifetime != want.PeerLifetime || cfg.GCInterval != want.GCInterval || cfg.Shards != want.Shards {
		t.Errorf("decoded %+v, want %+v", cfg, want)
	}
	out, err := yaml.Marshal(store.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "clock") {
		t.Errorf("Clock is written to YAML:\n%s", out)
	}
}

func peer(addr string) bittorrent.Peer {
	return bittorrent.Peer{ID: bittorrent.PeerID{'-', 'T'}, Addr: netip.MustParseAddrPort(addr)}
}

var (
	ih1 = bittorrent.InfoHash{1}
	ih2 = bittorrent.InfoHash{2}
)

func TestGC(t *testing.T) {
	type event struct {
		at     time.Duration // after t0
		change bittorrent.Change
	}
	put := func(at time.Duration, ih bittorrent.InfoHash, addr string, seeder bool) event {
		return event{at, bittorrent.Change{InfoHash: ih, Peer: peer(addr), Op: bittorrent.OpPut, Seeder: seeder}}
	}
	op := func(at time.Duration, ih bittorrent.InfoHash, addr string, op bittorrent.ChangeOp) event {
		return event{at, bittorrent.Change{InfoHash: ih, Peer: peer(addr), Op: op}}
	}
	const life = 10 * time.Minute
	tests := []struct {
		name        string
		events      []event
		gcAt        time.Duration
		wantRemoved int
		wantStats   store.Stats
		wantCounts  bittorrent.Counts // of ih1
	}{
		{
			name:       "fresh peer is kept",
			events:     []event{put(0, ih1, "10.0.0.1:1", true)},
			gcAt:       life,
			wantStats:  store.Stats{Swarms: 1, Seeders4: 1},
			wantCounts: bittorrent.Counts{Seeders: 1},
		},
		{
			name:        "peer one second past its lifetime is removed with its swarm",
			events:      []event{put(0, ih1, "10.0.0.1:1", true)},
			gcAt:        life + time.Second,
			wantRemoved: 1,
		},
		{
			name:       "re-announce refreshes",
			events:     []event{put(0, ih1, "10.0.0.1:1", false), put(5*time.Minute, ih1, "10.0.0.1:1", false)},
			gcAt:       life + time.Minute,
			wantStats:  store.Stats{Swarms: 1, Leechers4: 1},
			wantCounts: bittorrent.Counts{Leechers: 1},
		},
		{
			name: "expired go, fresh stay",
			events: []event{
				put(0, ih1, "10.0.0.1:1", true),
				put(0, ih1, "[2001:db8::1]:1", false),
				put(0, ih2, "10.0.0.2:1", false),
				put(5*time.Minute, ih1, "10.0.0.3:1", false),
				put(5*time.Minute, ih1, "[2001:db8::3]:1", true),
			},
			gcAt:        12 * time.Minute,
			wantRemoved: 3,
			wantStats:   store.Stats{Swarms: 1, Leechers4: 1, Seeders6: 1},
			wantCounts:  bittorrent.Counts{Seeders: 1, Leechers: 1},
		},
		{
			name:        "all of one family expire",
			events:      []event{put(0, ih1, "[2001:db8::1]:1", false), put(5*time.Minute, ih1, "10.0.0.1:1", true)},
			gcAt:        12 * time.Minute,
			wantRemoved: 1,
			wantStats:   store.Stats{Swarms: 1, Seeders4: 1},
			wantCounts:  bittorrent.Counts{Seeders: 1},
		},
		{
			name:   "empty swarm is removed and forgets its snatches",
			events: []event{op(0, ih1, "10.0.0.1:1", bittorrent.OpComplete), op(0, ih1, "10.0.0.1:1", bittorrent.OpRemove)},
			gcAt:   0,
		},
		{
			name:       "time before the epoch removes nothing",
			events:     []event{put(0, ih1, "10.0.0.1:1", true)},
			gcAt:       -time.Hour,
			wantStats:  store.Stats{Swarms: 1, Seeders4: 1},
			wantCounts: bittorrent.Counts{Seeders: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, clk, reg := newMemory(t, func(c *store.Config) { c.PeerLifetime = life })
			for _, e := range tt.events {
				clk.set(t0.Add(e.at))
				m.Apply([]bittorrent.Change{e.change})
			}
			if got := m.GC(t0.Add(tt.gcAt)); got != tt.wantRemoved {
				t.Errorf("GC removed %d, want %d", got, tt.wantRemoved)
			}
			if got := m.Stats(); got != tt.wantStats {
				t.Errorf("Stats = %+v, want %+v", got, tt.wantStats)
			}
			if got := m.Counts(ih1); got != tt.wantCounts {
				t.Errorf("Counts = %+v, want %+v", got, tt.wantCounts)
			}
			if got := metricValue(t, reg, "karuta_store_gc_removed_peers_total"); got != float64(tt.wantRemoved) {
				t.Errorf("karuta_store_gc_removed_peers_total = %v, want %d", got, tt.wantRemoved)
			}
			if got := m.GC(t0.Add(tt.gcAt)); got != 0 {
				t.Errorf("second GC removed %d, want 0", got)
			}
		})
	}
}

// metricValue returns the value of the counter or gauge named name, which
// must have a single series.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		if c := mf.GetMetric()[0].GetCounter(); c != nil {
			return c.GetValue()
		}
		return mf.GetMetric()[0].GetGauge().GetValue()
	}
	t.Fatalf("metric %s with one series not found", name)
	return 0
}

func TestMetrics(t *testing.T) {
	m, clk, reg := newMemory(t, nil)
	m.Apply([]bittorrent.Change{
		{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: bittorrent.OpPut, Seeder: true},
		{InfoHash: ih1, Peer: peer("10.0.0.2:1"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: peer("10.0.0.3:1"), Op: bittorrent.OpPut},
		{InfoHash: ih2, Peer: peer("[2001:db8::1]:1"), Op: bittorrent.OpComplete},
		{InfoHash: ih2, Peer: peer("10.0.0.9:0"), Op: bittorrent.OpPut},
		{InfoHash: ih2, Peer: peer("10.0.0.9:1"), Op: 42},
	})
	clk.set(t0.Add(time.Hour))
	m.Apply([]bittorrent.Change{
		{InfoHash: ih2, Peer: peer("[2001:db8::2]:1"), Op: bittorrent.OpPut},
		{InfoHash: ih2, Peer: bittorrent.Peer{Addr: bittorrent.WebRTCAddr(7, 9)}, Op: bittorrent.OpPut, Seeder: true},
	})
	m.GC(t0.Add(time.Hour))

	want := `
# HELP karuta_store_gc_removed_peers_total Peers removed by garbage collection because they stopped announcing.
# TYPE karuta_store_gc_removed_peers_total counter
karuta_store_gc_removed_peers_total 4
# HELP karuta_store_gc_removed_swarms_total Swarms removed by garbage collection because they had no peers left.
# TYPE karuta_store_gc_removed_swarms_total counter
karuta_store_gc_removed_swarms_total 1
# HELP karuta_store_ignored_changes_total Changes not applied because they were malformed, by reason.
# TYPE karuta_store_ignored_changes_total counter
karuta_store_ignored_changes_total{reason="invalid_address"} 1
karuta_store_ignored_changes_total{reason="unknown_op"} 1
# HELP karuta_store_peers Peers held, by address family (ipv4, ipv6, webrtc) and kind (seeder, leecher).
# TYPE karuta_store_peers gauge
karuta_store_peers{family="ipv4",kind="leecher"} 0
karuta_store_peers{family="ipv4",kind="seeder"} 0
karuta_store_peers{family="ipv6",kind="leecher"} 1
karuta_store_peers{family="ipv6",kind="seeder"} 0
karuta_store_peers{family="webrtc",kind="leecher"} 0
karuta_store_peers{family="webrtc",kind="seeder"} 1
# HELP karuta_store_swarms Swarms held, including those emptied since the last garbage collection.
# TYPE karuta_store_swarms gauge
karuta_store_swarms 1
`
	names := []string{
		"karuta_store_gc_removed_peers_total", "karuta_store_gc_removed_swarms_total",
		"karuta_store_ignored_changes_total", "karuta_store_peers", "karuta_store_swarms",
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "karuta_store_gc_duration_seconds"); err != nil || n != 1 {
		t.Errorf("karuta_store_gc_duration_seconds: %d series, %v; want 1", n, err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestNewMemoryRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := store.NewMemory(store.DefaultConfig(), reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := store.NewMemory(store.DefaultConfig(), reg, nil); err == nil {
		t.Error("second store on one registry: no error, want a duplicate registration error")
	}
	unregistered, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatalf("nil registry: %v", err)
	}
	unregistered.Apply([]bittorrent.Change{{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: 9}})
	if err := unregistered.Close(); err != nil {
		t.Error(err)
	}
	if err := unregistered.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestBackgroundGC checks that NewMemory's collector runs by itself.
func TestBackgroundGC(t *testing.T) {
	m, clk, _ := newMemory(t, func(c *store.Config) {
		c.PeerLifetime = time.Minute
		c.GCInterval = time.Second
	})
	m.Apply([]bittorrent.Change{{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: bittorrent.OpPut}})
	clk.set(t0.Add(time.Hour))
	eventually.True(t, 5*time.Second, "the collector empties the store", func() bool { return m.Stats() == store.Stats{} })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}
