package hooks

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// recordingPre records what it saw and optionally fails.
type recordingPre struct {
	err     error
	numWant uint32
	calls   int
}

func (h *recordingPre) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, _ *bittorrent.AnnounceResponse) error {
	h.calls++
	h.numWant = req.NumWant
	return h.err
}

func (h *recordingPre) HandleScrape(context.Context, *bittorrent.ScrapeRequest, *bittorrent.ScrapeResponse) error {
	h.calls++
	return h.err
}

// collectingPost collects announces, optionally blocking until released.
type collectingPost struct {
	mu      sync.Mutex
	got     []bittorrent.AnnounceRequest
	batches int
	gate    chan struct{}
}

func (h *collectingPost) AfterAnnounces(_ context.Context, reqs []bittorrent.AnnounceRequest) {
	if h.gate != nil {
		<-h.gate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, reqs...)
	h.batches++
}

func (h *collectingPost) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.got)
}

func newTestChain(t *testing.T, cfg Config, pre []PreHook, post []PostHook) (*Chain, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(cfg, pre, post, reg, zap.NewNop())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, reg
}

func TestChainNumWant(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DefaultNumWant = 30
	cfg.MaxNumWant = 100
	tests := []struct {
		name string
		set  bool
		in   uint32
		want uint32
	}{
		{"unset gets default", false, 0, 30},
		{"zero stays zero", true, 0, 0},
		{"within cap", true, 80, 80},
		{"capped", true, 5000, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pre := &recordingPre{}
			c, _ := newTestChain(t, cfg, []PreHook{pre}, nil)
			req := &bittorrent.AnnounceRequest{NumWant: tt.in, NumWantSet: tt.set}
			var resp bittorrent.AnnounceResponse
			if err := c.Announce(context.Background(), req, &resp); err != nil {
				t.Fatal(err)
			}
			if pre.numWant != tt.want {
				t.Errorf("hook saw numwant %d, want %d", pre.numWant, tt.want)
			}
			if resp.Interval != 1800 || resp.MinInterval != 900 {
				t.Errorf("intervals = %d/%d, want 1800/900", resp.Interval, resp.MinInterval)
			}
		})
	}
}

func TestChainStopsAtFirstError(t *testing.T) {
	first := &recordingPre{err: bittorrent.ClientError("denied")}
	second := &recordingPre{}
	c, _ := newTestChain(t, DefaultConfig(), []PreHook{first, second}, nil)
	err := c.Announce(context.Background(), &bittorrent.AnnounceRequest{}, &bittorrent.AnnounceResponse{})
	if bittorrent.FailureReason(err) != "denied" {
		t.Fatalf("err = %v, want denied", err)
	}
	if second.calls != 0 {
		t.Errorf("second hook ran %d times after the first failed", second.calls)
	}
}

func TestChainScrapeLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxScrapeHashes = 2
	pre := &recordingPre{}
	c, _ := newTestChain(t, cfg, []PreHook{pre}, nil)
	tests := []struct {
		n       int
		wantErr error
	}{
		{0, bittorrent.ErrMissingInfoHash},
		{1, nil},
		{2, nil},
		{3, bittorrent.ErrTooManyHashes},
	}
	for _, tt := range tests {
		req := &bittorrent.ScrapeRequest{InfoHashes: make([]bittorrent.InfoHash, tt.n)}
		err := c.Scrape(context.Background(), req, &bittorrent.ScrapeResponse{})
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%d hashes: err = %v, want %v", tt.n, err, tt.wantErr)
		}
	}
}

func TestChainPostHooksSeeAnnouncesInOrder(t *testing.T) {
	post := &collectingPost{}
	c, _ := newTestChain(t, DefaultConfig(), nil, []PostHook{post})
	const n = 1000
	for i := range n {
		req := bittorrent.AnnounceRequest{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(i+1))}
		c.AfterAnnounce(&req)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if post.count() != n {
		t.Fatalf("post hook saw %d announces, want %d", post.count(), n)
	}
	for i, r := range post.got {
		if int(r.Addr.Port()) != i+1 {
			t.Fatalf("announce %d has port %d: order lost", i, r.Addr.Port())
		}
	}
}

func TestChainFullQueueDropsAndCounts(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PostQueueSize = 4
	post := &collectingPost{gate: make(chan struct{})}
	c, reg := newTestChain(t, cfg, nil, []PostHook{post})
	// The worker takes the first announce and blocks in the hook; four more
	// fill the queue; the rest must drop without blocking.
	req := bittorrent.AnnounceRequest{}
	c.AfterAnnounce(&req)
	eventually.True(t, 5*time.Second, "the worker takes the first announce", func() bool { return c.queue.len() == 0 })
	done := make(chan struct{})
	go func() {
		for range 10 {
			c.AfterAnnounce(&req)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterAnnounce blocked on a full queue")
	}
	if got := testutil.ToFloat64(c.dropped); got != 6 {
		t.Errorf("dropped = %v, want 6", got)
	}
	if got, err := testutil.GatherAndCount(reg, "karuta_hooks_post_queue_depth"); err != nil || got != 1 {
		t.Errorf("queue depth metric: %d series, %v", got, err)
	}
	close(post.gate)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if post.count() != 5 {
		t.Errorf("post hook saw %d announces, want 5", post.count())
	}
	c.AfterAnnounce(&req) // after Close: counted, no panic
	if got := testutil.ToFloat64(c.dropped); got != 7 {
		t.Errorf("dropped after close = %v, want 7", got)
	}
}

// TestChainAfterAnnounceBatch checks that a batch keeps its order among
// single announces, and that a batch larger than the room left queues
// what fits and drops and counts the rest, without blocking.
func TestChainAfterAnnounceBatch(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PostQueueSize = 4
	post := &collectingPost{gate: make(chan struct{})}
	c, _ := newTestChain(t, cfg, nil, []PostHook{post})
	ptrs := announceBatch(8)
	// The worker takes the first and blocks in the hook.
	c.AfterAnnounce(ptrs[0])
	eventually.True(t, 5*time.Second, "the worker takes the first announce", func() bool { return c.queue.len() == 0 })
	c.AfterAnnounceBatch(ptrs[1:3])
	c.AfterAnnounce(ptrs[3])
	c.AfterAnnounceBatch(ptrs[4:8]) // room for one of four
	if got := testutil.ToFloat64(c.dropped); got != 3 {
		t.Errorf("dropped = %v, want 3", got)
	}
	c.AfterAnnounceBatch(nil)
	close(post.gate)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if post.count() != 5 {
		t.Fatalf("post hook saw %d announces, want 5", post.count())
	}
	for i, r := range post.got {
		if int(r.Addr.Port()) != i+1 {
			t.Errorf("announce %d has port %d: order lost", i, r.Addr.Port())
		}
	}
	c.AfterAnnounceBatch(ptrs[:2]) // after Close: counted, no panic
	if got := testutil.ToFloat64(c.dropped); got != 5 {
		t.Errorf("dropped after close = %v, want 5", got)
	}
}

// TestChainManyWorkers has several workers drain a queue filled in
// batches from several goroutines, and checks that every announce arrives
// once, with the race detector watching the ring.
func TestChainManyWorkers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PostWorkers = 4
	post := &collectingPost{}
	c, _ := newTestChain(t, cfg, nil, []PostHook{post})
	const producers, batches, size = 4, 200, 16
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			reqs := make([]bittorrent.AnnounceRequest, size)
			ptrs := make([]*bittorrent.AnnounceRequest, size)
			for b := range batches {
				for i := range reqs {
					reqs[i].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(p), byte(b), byte(i)}), 1)
					ptrs[i] = &reqs[i]
				}
				c.AfterAnnounceBatch(ptrs)
			}
		})
	}
	wg.Wait()
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.AddrPort]bool{}
	for _, r := range post.got {
		if seen[r.Addr] {
			t.Fatalf("%v seen twice", r.Addr)
		}
		seen[r.Addr] = true
	}
	if len(seen) != producers*batches*size {
		t.Errorf("post hooks saw %d distinct announces, want %d", len(seen), producers*batches*size)
	}
}

func TestChainSetConfigValidates(t *testing.T) {
	c, _ := newTestChain(t, DefaultConfig(), nil, nil)
	bad := DefaultConfig()
	bad.MaxNumWant = -1
	if err := c.SetConfig(bad); err == nil {
		t.Fatal("SetConfig accepted max_numwant -1")
	}
	good := DefaultConfig()
	good.AnnounceInterval = time.Hour
	if err := c.SetConfig(good); err != nil {
		t.Fatal(err)
	}
	var resp bittorrent.AnnounceResponse
	if err := c.Announce(context.Background(), &bittorrent.AnnounceRequest{}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Interval != 3600 {
		t.Errorf("interval after reload = %d, want 3600", resp.Interval)
	}
}

func TestConfigValidateNamesKey(t *testing.T) {
	tests := []struct {
		key    string
		mutate func(*Config)
	}{
		{"announce_interval", func(c *Config) { c.AnnounceInterval = 0 }},
		{"min_announce_interval", func(c *Config) { c.MinAnnounceInterval = 2 * c.AnnounceInterval }},
		{"max_numwant", func(c *Config) { c.MaxNumWant = 20000 }},
		{"default_numwant", func(c *Config) { c.DefaultNumWant = c.MaxNumWant + 1 }},
		{"max_scrape_hashes", func(c *Config) { c.MaxScrapeHashes = 0 }},
		{"post_queue_size", func(c *Config) { c.PostQueueSize = 0 }},
		{"post_workers", func(c *Config) { c.PostWorkers = 0 }},
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if err == nil || len(err.Error()) < len(tt.key) || err.Error()[:len(tt.key)+1] != tt.key+":" {
				t.Errorf("Validate() = %v, want an error starting with %q", err, tt.key+":")
			}
		})
	}
}

// countingPost counts the announces it is given.
type countingPost struct{ n atomic.Int64 }

func (h *countingPost) AfterAnnounces(_ context.Context, reqs []bittorrent.AnnounceRequest) {
	h.n.Add(int64(len(reqs)))
}

// countingChain is a chain with a post queue of size whose one post hook
// counts what it is given.
func countingChain(t *testing.T, size int) (*Chain, *countingPost) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.PostQueueSize = size
	post := &countingPost{}
	c, _ := newTestChain(t, cfg, nil, []PostHook{post})
	return c, post
}

// announceBatch is n announces from distinct ports of one address.
func announceBatch(n int) []*bittorrent.AnnounceRequest {
	reqs := make([]bittorrent.AnnounceRequest, n)
	ptrs := make([]*bittorrent.AnnounceRequest, n)
	for i := range reqs {
		reqs[i].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(i+1))
		ptrs[i] = &reqs[i]
	}
	return ptrs
}

// TestChainYieldsToWorkersOnOneCore: a frontend that hands batches over
// in a loop that never blocks, on one P, as a UDP reader under load does
// when the node has one CPU, must not overflow the queue: the workers get
// the core before it is full.
func TestChainYieldsToWorkersOnOneCore(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	c, post := countingChain(t, 1024)
	ptrs := announceBatch(32)
	const batches = 5000
	for range batches {
		c.AfterAnnounceBatch(ptrs)
	}
	if got := testutil.ToFloat64(c.dropped); got != 0 {
		t.Errorf("%v announces dropped; want none, the workers given the core", got)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := post.n.Load(); got != batches*int64(len(ptrs)) {
		t.Errorf("post hook saw %d announces; want %d", got, batches*len(ptrs))
	}
}

// TestChainCloseLosesNothingUncounted: announces handed over while Close
// runs are either run by the post hooks or dropped and counted, never
// neither.
func TestChainCloseLosesNothingUncounted(t *testing.T) {
	c, post := countingChain(t, 256)
	ptrs := announceBatch(8)
	const senders, batches = 4, 2000
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for range batches {
				c.AfterAnnounceBatch(ptrs)
			}
		})
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	got := post.n.Load() + int64(testutil.ToFloat64(c.dropped))
	if want := int64(senders * batches * len(ptrs)); got != want {
		t.Errorf("run %d + dropped %v = %d; want every announce handed over, %d", post.n.Load(), testutil.ToFloat64(c.dropped), got, want)
	}
	// The interleaving that lost them: a sender that saw the chain open
	// reaches the queue only after Close has drained it. The queue itself
	// must refuse, so the sender counts the drop.
	if dropped, _ := c.queue.put(ptrs); dropped != len(ptrs) {
		t.Errorf("a put after Close queued %d of %d announces no worker will run; want all refused", len(ptrs)-dropped, len(ptrs))
	}
}
