package cluster

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// manualClock is a Clock that moves only when the test says, so a test
// sees exactly which timers are set and stopped.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	c       *manualClock
	at      time.Time
	f       func()
	stopped bool
	fired   bool
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.stopped || t.fired {
		return false
	}
	t.stopped = true
	return true
}

// advance moves the clock by d and runs the timers that come due, each on
// its own goroutine as time.AfterFunc would; done is closed when they
// have all returned.
func (c *manualClock) advance(d time.Duration) (done chan struct{}) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*manualTimer
	for _, t := range c.timers {
		if !t.stopped && !t.fired && !t.at.After(c.now) {
			t.fired = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, t := range due {
		wg.Go(t.f)
	}
	done = make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// pending returns the timers set and neither fired nor stopped.
func (c *manualClock) pending() []*manualTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*manualTimer
	for _, t := range c.timers {
		if !t.stopped && !t.fired {
			out = append(out, t)
		}
	}
	return out
}

// fixedViews is a Views that changes once, at the start, to its view.
type fixedViews struct {
	v       *ring.View
	changed chan struct{}
}

func newFixedViews(v *ring.View) fixedViews {
	f := fixedViews{v, make(chan struct{}, 1)}
	f.changed <- struct{}{}
	return f
}

func (f fixedViews) View() *ring.View         { return f.v }
func (f fixedViews) Changed() <-chan struct{} { return f.changed }

// newLoneCluster starts node self of members over net with clock, its
// view fixed; mutate, if not nil, adjusts the config.
func newLoneCluster(t *testing.T, net *transport.MemNet, self string, members []string, clock Clock, mutate ...func(*Config)) (*Cluster, *store.Memory) {
	t.Helper()
	return newLoneClusterOn(t, net.Transport(self), self, members, clock, mutate...)
}

// newLoneClusterOn is newLoneCluster over a transport of the test's own
// (one that loses replies, say).
func newLoneClusterOn(t *testing.T, tr transport.Transport, self string, members []string, clock Clock, mutate ...func(*Config)) (*Cluster, *store.Memory) {
	t.Helper()
	var infos []ring.NodeInfo
	for _, m := range members {
		infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: m, Zone: m}, DataAddr: m, Boot: "1"})
	}
	v, err := ring.NewView(infos, self, 1, ring.Options{VNodes: 64}, 1)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.RepairInterval = time.Hour
	for _, m := range mutate {
		m(&cfg)
	}
	c, err := New(cfg, Options{Store: st, Transport: tr, Views: newFixedViews(v), Log: zaptest.NewLogger(t).Named(self), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = st.Close() })
	// Installing the first view clears the read cache; wait for it, so it
	// cannot race with what the test reads next.
	eventually.True(t, 5*time.Second, self+" takes in its view", func() bool { return c.settled.Load() == c.View() })
	return c, st
}

// ownedBy returns an infohash whose owner in v is member name.
func ownedBy(t *testing.T, v *ring.View, name string) bittorrent.InfoHash {
	t.Helper()
	for i := range 1 << 16 {
		if ih := ihN(i); v.Members()[v.OwnersOf(ih, nil)[0]].Name == name {
			return ih
		}
	}
	t.Fatalf("no infohash owned by %s", name)
	return bittorrent.InfoHash{}
}

func strayWrite(ih bittorrent.InfoHash) *transport.ApplyRequest {
	return &transport.ApplyRequest{Changes: []bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut,
		Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort("10.3.3.3:3")}}}}
}

// A stray write sets one timer, strayDelay long, however many strays
// follow; Close stops it, and after Close no timer is set.
func TestStrayTimerStopsAtClose(t *testing.T) {
	clock := newManualClock()
	b, _ := newLoneCluster(t, transport.NewMemNet(), "b", []string{"a", "b"}, clock)
	ih := ownedBy(t, b.View(), "a")
	for range 3 {
		if _, err := b.Handle(context.Background(), strayWrite(ih)); err != nil {
			t.Fatal(err)
		}
	}
	timers := clock.pending()
	if len(timers) != 1 {
		t.Fatalf("%d timers after three stray writes, want 1", len(timers))
	}
	if got := timers[0].at.Sub(clock.Now()); got != strayDelay {
		t.Errorf("timer due in %s, want strayDelay (%s)", got, strayDelay)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !timers[0].stopped {
		t.Error("Close left the stray timer running")
	}
	if _, err := b.Handle(context.Background(), strayWrite(ih)); err != nil {
		t.Fatal(err)
	}
	if n := len(clock.pending()); n != 0 {
		t.Errorf("%d timers set after Close, want none", n)
	}
}

// The stray timer fires a handoff pass strayDelay after the write: not
// before, and, with repair an hour away, that pass is what moves the swarm
// to its owner. After the fire a new stray sets a new timer.
func TestStrayTimerFiresAPass(t *testing.T) {
	clock := newManualClock()
	net := transport.NewMemNet()
	a, aStore := newLoneCluster(t, net, "a", []string{"a", "b"}, nil)
	b, bStore := newLoneCluster(t, net, "b", []string{"a", "b"}, clock)
	eventually.True(t, 5*time.Second, "both settle", func() bool {
		return a.settled.Load() == a.View() && b.settled.Load() == b.View()
	})
	ih := ownedBy(t, b.View(), "a")
	if _, err := b.Handle(context.Background(), strayWrite(ih)); err != nil {
		t.Fatal(err)
	}
	<-clock.advance(strayDelay - time.Nanosecond)
	if n := len(clock.pending()); n != 1 {
		t.Fatalf("%d timers pending just before strayDelay, want the stray's", n)
	}
	<-clock.advance(time.Nanosecond)
	eventually.True(t, 5*time.Second, "the stray reaches its owner a", func() bool { return aStore.Counts(ih).Leechers == 1 })
	if _, _, onB := bStore.Swarm(ih, 1, nil); !onB {
		t.Error("b dropped the stray at the first pass; it should wait dropGrace")
	}
	if _, err := b.Handle(context.Background(), strayWrite(ih)); err != nil {
		t.Fatal(err)
	}
	if n := len(clock.pending()); n != 1 {
		t.Errorf("%d timers after a stray following the fire, want 1", n)
	}
}

// Timers of the real clock under testing/synctest: the pass that moves a
// stray write on runs strayDelay after it, and the stray is let go
// dropGrace after the first send.
func TestStrayWriteTimersSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewMemNet()
		_, aStore := newLoneCluster(t, net, "a", []string{"a", "b"}, nil)
		b, bStore := newLoneCluster(t, net, "b", []string{"a", "b"}, nil)
		synctest.Wait() // both have run their first pass
		ih := ownedBy(t, b.View(), "a")
		if _, err := b.Handle(context.Background(), strayWrite(ih)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(strayDelay - time.Millisecond)
		synctest.Wait()
		if got := aStore.Counts(ih).Leechers; got != 0 {
			t.Fatalf("a has the stray %s after the write; want it after strayDelay", strayDelay-time.Millisecond)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := aStore.Counts(ih).Leechers; got != 1 {
			t.Fatalf("a has %d leechers at strayDelay, want the stray", got)
		}
		if _, _, onB := bStore.Swarm(ih, 1, nil); !onB {
			t.Fatal("b dropped the stray at once; it should wait dropGrace")
		}
		time.Sleep(dropGrace + 2*handoffRetry)
		synctest.Wait()
		if _, _, onB := bStore.Swarm(ih, 1, nil); onB {
			t.Errorf("b still holds the stray %s after sending it", dropGrace+2*handoffRetry)
		}
	})
}

// The read cache ages by the clock: with read_cache_ttl set, a fetched
// copy answers until it has passed on it, and not a moment longer.
func TestReadCacheAgesByTheClock(t *testing.T) {
	clock := newManualClock()
	net := transport.NewMemNet()
	ttl := func(c *Config) { c.ReadCacheTTL = 50 * time.Millisecond }
	_, aStore := newLoneCluster(t, net, "a", []string{"a", "b"}, nil, ttl)
	b, _ := newLoneCluster(t, net, "b", []string{"a", "b"}, clock, ttl)
	ih := ownedBy(t, b.View(), "a")
	put := func(addr string) {
		aStore.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort(addr)}}})
	}
	read := func() int {
		peers, _, _ := b.AnnouncePeers(ih, reader, false, 50, nil)
		return len(peers)
	}
	put("10.4.4.1:1")
	if n := read(); n != 1 {
		t.Fatalf("first read: %d peers, want 1", n)
	}
	put("10.4.4.2:1")
	if n := read(); n != 1 {
		t.Errorf("read at once: %d peers, want the cached 1", n)
	}
	<-clock.advance(b.cfg.ReadCacheTTL - time.Nanosecond)
	if n := read(); n != 1 {
		t.Errorf("read just before read_cache_ttl: %d peers, want the cached 1", n)
	}
	<-clock.advance(time.Nanosecond)
	if n := read(); n != 2 {
		t.Errorf("read at read_cache_ttl: %d peers, want 2, fetched again", n)
	}
	if got, want := testutil.ToFloat64(b.m.reads.WithLabelValues("cached")), 2.0; got != want {
		t.Errorf("%v cached reads, want %v", got, want)
	}
}

// Close waits for the fetches in flight, and ends them rather than
// waiting out their deadline.
func TestCloseWaitsForFetches(t *testing.T) {
	net := transport.NewMemNet()
	_, aStore := newLoneCluster(t, net, "a", []string{"a", "b"}, nil)
	b, _ := newLoneCluster(t, net, "b", []string{"a", "b"}, nil)
	ih := ownedBy(t, b.View(), "a")
	aStore.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort("10.4.4.1:1")}}})
	net.SetDelay(time.Hour)
	b.Prefetch([]bittorrent.InfoHash{ih})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	sh := b.cache.shard(ih)
	sh.mu.Lock()
	e := sh.m[ih]
	sh.mu.Unlock()
	if e == nil || e.fl != nil {
		t.Errorf("after Close the prefetch is still in flight (entry %+v)", e)
	}
	b.Prefetch([]bittorrent.InfoHash{ih}) // after Close: starts nothing, wakes any waiter
	if e := b.cache.current(ih); e != nil {
		t.Errorf("a fetch after Close filled the cache: %+v", e)
	}
}
