package store_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
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
	storetest.Run(t, func(t *testing.T, lim store.Limits) store.Store {
		cfg := store.DefaultConfig()
		cfg.Shards = 16
		cfg.Limits = lim
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
	cfg.MaxPeersPerSource = 0
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

// TestRefusalMetrics checks that every refusal is counted under its limit
// and stage, that every series exists from the start, and that the limits
// in force are reported.
func TestRefusalMetrics(t *testing.T) {
	m, _, reg := newMemory(t, func(c *store.Config) {
		c.Limits = store.Limits{MaxSwarms: 1, MaxPeers: 3, MaxPeersPerSource: 2}
	})
	m.Apply([]bittorrent.Change{
		{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: peer("10.0.0.1:2"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: peer("10.0.0.1:3"), Op: bittorrent.OpPut}, // per source
		{InfoHash: ih2, Peer: peer("10.0.0.2:1"), Op: bittorrent.OpPut}, // swarms
		{InfoHash: ih1, Peer: peer("10.0.0.3:1"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: peer("10.0.0.4:1"), Op: bittorrent.OpPut}, // peers
	})
	for _, tc := range []struct {
		ih   bittorrent.InfoHash
		addr string
		want error
	}{
		{ih1, "10.0.0.1:4", store.ErrTooManyForSource},
		{ih2, "10.0.0.5:1", store.ErrTooManySwarms},
		{ih1, "10.0.0.5:1", store.ErrTooManyPeers},
		{ih1, "10.0.0.1:1", nil},
	} {
		if err := m.Admit(tc.ih, netip.MustParseAddrPort(tc.addr)); !errors.Is(err, tc.want) {
			t.Errorf("Admit(%x, %s) = %v, want %v", tc.ih[:1], tc.addr, err, tc.want)
		}
	}
	want := `
# HELP karuta_store_limit The store's limits in force (0: none), by limit.
# TYPE karuta_store_limit gauge
karuta_store_limit{limit="max_peers"} 3
karuta_store_limit{limit="max_peers_per_source"} 2
karuta_store_limit{limit="max_swarms"} 1
# HELP karuta_store_refused_total New swarms and peers refused at a limit, by limit (max_swarms, max_peers, max_peers_per_source) and stage (announce: the client got a failure reason; apply: a change was left out).
# TYPE karuta_store_refused_total counter
karuta_store_refused_total{reason="max_peers",stage="announce"} 1
karuta_store_refused_total{reason="max_peers",stage="apply"} 1
karuta_store_refused_total{reason="max_peers_per_source",stage="announce"} 1
karuta_store_refused_total{reason="max_peers_per_source",stage="apply"} 1
karuta_store_refused_total{reason="max_swarms",stage="announce"} 1
karuta_store_refused_total{reason="max_swarms",stage="apply"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "karuta_store_limit", "karuta_store_refused_total"); err != nil {
		t.Error(err)
	}
	m.SetLimits(store.Limits{})
	if err := m.Admit(ih2, netip.MustParseAddrPort("10.0.0.5:1")); err != nil {
		t.Errorf("after lifting the limits: Admit = %v", err)
	}
	if got := metricValue(t, reg, "karuta_store_swarms"); got != 1 {
		t.Errorf("karuta_store_swarms = %v, want 1", got)
	}
}

// TestMergeNeverExtendsLife checks that a merged peer keeps its last-seen
// time, so it expires when it would have on the copy it came from, and
// that expired peers are left out of digests and merges.
func TestMergeNeverExtendsLife(t *testing.T) {
	m, clk, _ := newMemory(t, nil) // peers live 10 minutes
	seen := t0.Add(-8 * time.Minute)
	clk.set(t0)
	if added := m.Merge(ih1, []store.SeenPeer{{Peer: peer("10.0.0.1:1"), Seen: seen}, {Peer: peer("10.0.0.2:1"), Seen: t0}}, 0); added != 2 {
		t.Fatalf("Merge added %d, want 2", added)
	}
	if got := m.GC(t0.Add(time.Minute)); got != 0 {
		t.Errorf("GC a minute later removed %d", got)
	}
	before, _ := m.Digest(ih1)
	clk.set(t0.Add(3 * time.Minute)) // the first peer's lifetime has passed
	after, live := m.Digest(ih1)
	if !live || after == before {
		t.Errorf("digest once a peer expired: %x (live %v), before %x; want it to leave the expired peer out", after, live, before)
	}
	peers, _, _ := m.SeenSwarm(ih1, nil)
	if len(peers) != 1 || peers[0].Addr != peer("10.0.0.2:1").Addr {
		t.Errorf("SeenSwarm lists %+v, want only the live peer", peers)
	}
	if got := m.GC(t0.Add(3 * time.Minute)); got != 1 {
		t.Errorf("GC removed %d, want the merged peer whose lifetime passed", got)
	}
}

// TestMemoryComesBack floods a store with one-peer swarms, lets them
// expire, and checks that the live heap returns to within 20% of its size
// before the flood: the shard tables give their memory back as they empty.
func TestMemoryComesBack(t *testing.T) {
	const flood = 200_000
	m, clk, _ := newMemory(t, func(c *store.Config) { c.Shards = 1024 })
	legit := make([]bittorrent.Change, 0, 1000)
	for i := range cap(legit) {
		legit = append(legit, bittorrent.Change{InfoHash: bittorrent.InfoHash{0x1e, byte(i >> 8), byte(i)}, Peer: peer(fmt.Sprintf("10.1.%d.%d:1", i>>8, i&0xff)), Op: bittorrent.OpPut})
	}
	m.Apply(legit)
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	batch := make([]bittorrent.Change, 0, 1024)
	clk.set(t0.Add(time.Minute))
	for i := range flood {
		c := bittorrent.Change{Op: bittorrent.OpPut}
		binary.BigEndian.PutUint64(c.InfoHash[:], uint64(i)*0x9e3779b97f4a7c15+1)
		c.Peer.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), uint16(1+i%60000))
		if i%3 == 0 {
			c.Peer.Addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 4: byte(i >> 16), 5: byte(i >> 8), 6: byte(i), 15: 1}), 1)
		}
		if batch = append(batch, c); len(batch) == cap(batch) {
			m.Apply(batch)
			batch = batch[:0]
		}
	}
	m.Apply(batch)
	batch = nil
	during := heap()
	// The legitimate peers announce again; the flood's expire.
	clk.set(t0.Add(11 * time.Minute))
	m.Apply(legit)
	if got := m.GC(t0.Add(12 * time.Minute)); got != flood {
		t.Fatalf("GC removed %d, want the %d flooded peers", got, flood)
	}
	after := heap()
	t.Logf("live heap: %d before, %d during the flood, %d after", before, during, after)
	if during < before+flood*50 {
		t.Fatalf("the flood grew the heap only from %d to %d; the test measures nothing", before, during)
	}
	if float64(after) > 1.2*float64(before) {
		t.Errorf("live heap after the flood expired is %d, more than 20%% above %d before it", after, before)
	}
	if st := m.Stats(); st.Swarms != len(legit) {
		t.Errorf("%d swarms left, want the %d legitimate ones", st.Swarms, len(legit))
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
