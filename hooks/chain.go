package hooks

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// PreHook takes part in building an answer. PreHooks run in order on the
// frontend's goroutine, so they must be fast and must not block on I/O
// without a deadline. Returning an error stops the chain; a
// bittorrent.ClientError becomes the client's failure reason.
type PreHook interface {
	HandleAnnounce(ctx context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error
	HandleScrape(ctx context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error
}

// Reloader is a hook whose data lives outside the config file (an allow
// list, a key file, a JWKS). The node calls Reload on SIGHUP; a hook may
// also reload on its own when the source changes. A failed reload keeps
// the data in force.
type Reloader interface {
	Reload() error
}

// Closer is a hook with background work (a file watcher, a JWKS refresher)
// to stop when the node shuts down.
type Closer interface {
	Close() error
}

// PostHook acts on announces after their clients have been answered. It
// receives them in batches, in arrival order, on a chain worker goroutine;
// it must not keep the slice after returning.
type PostHook interface {
	AfterAnnounces(ctx context.Context, reqs []bittorrent.AnnounceRequest)
}

// maxPostBatch bounds how many queued announces one PostHook call sees, so
// batches amortise per-call cost without delaying the queue.
const maxPostBatch = 256

// Chain runs PreHooks to answer requests and feeds answered announces to
// PostHooks through a bounded queue. It implements Tracker and is safe for
// concurrent use.
type Chain struct {
	cfg  atomic.Pointer[Config]
	pre  []PreHook
	post []PostHook
	log  *zap.Logger
	// prefetch holds what the PreHooks read through that prefetches,
	// found once in New so batches skip the work when there is none.
	prefetch []Prefetcher
	// lister is the Responder's PeerSource when it can list swarms, for
	// full scrapes; nil otherwise.
	lister SwarmLister

	queue   *postQueue
	dropped prometheus.Counter
	dropLog *ratelog.Limiter
	ctx     context.Context
	cancel  context.CancelFunc
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  atomic.Bool
}

// New builds a chain and starts its post-queue workers; Close stops them.
// The last PreHook is normally a Responder, which fills peers and counts.
func New(cfg Config, pre []PreHook, post []PostHook, reg prometheus.Registerer, log *zap.Logger) (*Chain, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("hooks: %w", err)
	}
	c := &Chain{
		pre:   pre,
		post:  post,
		log:   log,
		queue: newPostQueue(cfg.PostQueueSize),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "karuta", Subsystem: "hooks", Name: "post_dropped_total",
			Help: "Answered announces dropped because the post-hook queue was full.",
		}),
		dropLog: ratelog.New(10 * time.Second),
	}
	c.cfg.Store(&cfg)
	for _, h := range pre {
		if r, ok := h.(*Responder); ok {
			if p, ok := r.src.(Prefetcher); ok {
				c.prefetch = append(c.prefetch, p)
			}
			if l, ok := r.src.(SwarmLister); ok {
				c.lister = l
			}
		} else if p, ok := h.(Prefetcher); ok {
			c.prefetch = append(c.prefetch, p)
		}
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "karuta", Subsystem: "hooks", Name: "post_queue_depth",
		Help: "Answered announces waiting for the post hooks.",
	}, func() float64 { return float64(c.queue.len()) })
	capacity := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "karuta", Subsystem: "hooks", Name: "post_queue_capacity",
		Help: "Size of the post-hook queue.",
	}, func() float64 { return float64(len(c.queue.ring)) })
	for _, col := range []prometheus.Collector{c.dropped, depth, capacity} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("hooks: register metrics: %w", err)
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.stop = make(chan struct{})
	for range cfg.PostWorkers {
		c.wg.Add(1)
		go c.work()
	}
	return c, nil
}

// Prefetch implements Prefetcher by passing ihs to every PreHook that
// prefetches and to the Responder's PeerSource, if it does.
func (c *Chain) Prefetch(ihs []bittorrent.InfoHash) {
	for _, p := range c.prefetch {
		p.Prefetch(ihs)
	}
}

// PrefetcherOf returns what a frontend should hand batches of infohashes
// to, or nil when nothing behind t prefetches and the frontend can skip
// gathering them.
func PrefetcherOf(t Tracker) Prefetcher {
	switch t := t.(type) {
	case *Chain:
		if len(t.prefetch) == 0 {
			return nil
		}
		return t
	case Prefetcher:
		return t
	}
	return nil
}

// SetConfig swaps the announce policy, for reloads. The queue size and
// worker count keep their values from New.
func (c *Chain) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("hooks: %w", err)
	}
	c.cfg.Store(&cfg)
	return nil
}

// Config returns the announce policy in force.
func (c *Chain) Config() Config { return *c.cfg.Load() }

// Announce normalises numwant, sets the intervals, then runs the PreHooks.
func (c *Chain) Announce(ctx context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	cfg := c.cfg.Load()
	//nolint:gosec // G115: Validate bounds default_numwant and max_numwant to 0..10000
	if !req.NumWantSet {
		req.NumWant = uint32(cfg.DefaultNumWant)
	} else if req.NumWant > uint32(cfg.MaxNumWant) {
		req.NumWant = uint32(cfg.MaxNumWant)
	}
	resp.Reset()
	resp.Interval = uint32(cfg.AnnounceInterval / time.Second)       //nolint:gosec // G115: Validate bounds it to 1s..24h
	resp.MinInterval = uint32(cfg.MinAnnounceInterval / time.Second) //nolint:gosec // G115: at most announce_interval
	for _, h := range c.pre {
		if err := h.HandleAnnounce(ctx, req, resp); err != nil {
			return err
		}
	}
	return nil
}

// Scrape checks the hash count, then runs the PreHooks.
func (c *Chain) Scrape(ctx context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error {
	if len(req.InfoHashes) > c.cfg.Load().MaxScrapeHashes {
		return bittorrent.ErrTooManyHashes
	}
	if len(req.InfoHashes) == 0 {
		return bittorrent.ErrMissingInfoHash
	}
	resp.Reset()
	for _, h := range c.pre {
		if err := h.HandleScrape(ctx, req, resp); err != nil {
			return err
		}
	}
	return nil
}

// AfterAnnounce queues a copy of req for the PostHooks without blocking.
// After Close it drops and counts, so frontends must be stopped first.
func (c *Chain) AfterAnnounce(req *bittorrent.AnnounceRequest) {
	one := [1]*bittorrent.AnnounceRequest{req}
	c.AfterAnnounceBatch(one[:])
}

// AfterAnnounceBatch queues copies of reqs, in order, with one hand-off
// to the workers; those that do not fit are dropped and counted.
func (c *Chain) AfterAnnounceBatch(reqs []*bittorrent.AnnounceRequest) {
	if len(reqs) == 0 {
		return
	}
	dropped := len(reqs)
	if !c.closed.Load() {
		var filling bool
		dropped, filling = c.queue.put(reqs)
		if filling {
			// A frontend reader that always finds datagrams waiting never
			// blocks, and where it shares its core with the workers
			// (GOMAXPROCS 1, a container of one CPU) they would run only
			// when the scheduler preempts it, every 10 ms: time enough to
			// fill the queue. Giving the core up here lets them drain it
			// before anything is dropped.
			runtime.Gosched()
		}
	}
	if dropped > 0 {
		c.drop(dropped)
	}
}

func (c *Chain) drop(n int) {
	c.dropped.Add(float64(n))
	if since, ok := c.dropLog.Allow(); ok {
		c.log.Warn("post-hook queue full, dropping answered announces",
			zap.Uint64("dropped_since_last_log", since), zap.Int("queue_size", len(c.queue.ring)))
	}
}

func (c *Chain) work() {
	defer c.wg.Done()
	batch := make([]bittorrent.AnnounceRequest, 0, maxPostBatch)
	for {
		if batch = c.queue.take(batch[:0], maxPostBatch); len(batch) > 0 {
			c.run(batch)
			continue
		}
		select {
		case <-c.queue.wake:
		case <-c.stop:
			// Finish what was queued before Close, then exit.
			for {
				if batch = c.queue.take(batch[:0], maxPostBatch); len(batch) == 0 {
					return
				}
				c.run(batch)
			}
		}
	}
}

func (c *Chain) run(batch []bittorrent.AnnounceRequest) {
	for _, h := range c.post {
		h.AfterAnnounces(c.ctx, batch)
	}
	clear(batch) // drop references to params strings
}

// Close stops taking announces, lets the workers finish what is queued (or
// gives up when ctx ends), and waits for them. Call it after the frontends
// have stopped.
func (c *Chain) Close(ctx context.Context) error {
	if c.closed.Swap(true) {
		return nil
	}
	// Refused from here on, counted by the caller: a batch handed over
	// while Close runs is either queued before this, and drained, or dropped.
	c.queue.close()
	close(c.stop)
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
		c.cancel()
		return nil
	case <-ctx.Done():
		c.cancel() // tells post hooks to give up
		<-done
		return fmt.Errorf("hooks: drain post queue: %w", ctx.Err())
	}
}
