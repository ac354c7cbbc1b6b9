// Package cluster makes a node's swarms part of one cluster-wide tracker:
// it forwards swarm writes to their owners, answers reads for swarms owned
// elsewhere, and moves swarms between nodes when membership changes. The
// ring package says who owns a swarm; this package says how to ask them.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// Views is where the cluster learns placement: *ring.Membership in a node,
// a scripted sequence of views in tests.
type Views interface {
	// View returns the current view, never nil.
	View() *ring.View
	// Changed is signalled after View changes; signals may coalesce.
	Changed() <-chan struct{}
}

// Options are a Cluster's collaborators.
type Options struct {
	Store      store.Store
	Transport  transport.Transport
	Views      Views
	Registerer prometheus.Registerer
	Log        *zap.Logger
	// Clock is the time source of the data plane's grace periods, delays
	// and cache ages; nil means the real clock.
	Clock Clock
}

// Cluster is one node's share of the cluster data plane. It is the node's
// hooks.ChangeSink (writes go to the swarms' owners) and hooks.PeerSource
// (reads come from the owners), and it answers the other nodes' requests.
type Cluster struct {
	cfg   Config
	store store.Store
	tr    transport.Transport
	views Views
	log   *zap.Logger
	m     *metrics
	reg   prometheus.Registerer
	clock Clock

	view  atomic.Pointer[ring.View]
	trust trust // which local copies are whole; see localAlone
	// viewCh is closed, and replaced, each time a new view is installed.
	viewCh atomic.Pointer[chan struct{}]

	destMu sync.Mutex
	dests  map[string]*dest // by data address

	cache readCache
	// batchers gather each member's fetches into shared requests
	// (fetchbatch.go), by data address.
	batchMu  sync.Mutex
	batchers map[string]*fetchBatcher
	links    links       // each member's data channel: see links.go
	sig      signalRelay // WebRTC signaling; see signal.go

	// stream numbers this node's forwards (see dedupe.go); nextSeq hands
	// each dest its range; applied skips forwards received twice.
	stream  uint64
	nextSeq atomic.Uint64
	applied appliedStreams

	rebalance chan struct{} // ask for a handoff pass; cap 1
	// settled is the view of the last handoff pass that moved everything it
	// had to; Drain waits for it to reach the current view.
	settled atomic.Pointer[ring.View]
	handoff handoffState // owned by the handoff loop
	ae      aeState      // anti-entropy's digest sums

	// scrapePage is how many swarms a full scrape reads per page: the
	// scrapePage constant, smaller in tests.
	scrapePage int

	dropLog    *ratelog.Limiter
	unreachLog *ratelog.Limiter
	handoffLog *ratelog.Limiter

	// mu guards the timer of the pass scheduled for stray swarms, and
	// closing, after which neither it nor goroutines start.
	mu         sync.Mutex
	strayTimer Timer
	closing    bool

	stop      chan struct{}
	ctx       context.Context // cancelled at Close, for requests in flight
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New returns a Cluster; Start begins serving.
func New(cfg Config, opts Options) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if opts.Store == nil || opts.Transport == nil || opts.Views == nil {
		return nil, errors.New("cluster: store, transport and views are required")
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	c := &Cluster{
		cfg: cfg, store: opts.Store, views: opts.Views, log: opts.Log,
		m: newMetrics(), reg: opts.Registerer, clock: opts.Clock,
		dests:      map[string]*dest{},
		batchers:   map[string]*fetchBatcher{},
		rebalance:  make(chan struct{}, 1),
		scrapePage: scrapePage,
		dropLog:    ratelog.New(10 * time.Second),
		unreachLog: ratelog.New(10 * time.Second),
		handoffLog: ratelog.New(10 * time.Second),
		stop:       make(chan struct{}),
		stream:     rand.Uint64() | 1, // never 0, which means unnumbered
	}
	c.tr = watchedTransport{Transport: opts.Transport, links: &c.links, clock: opts.Clock}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.cache.init(cfg.ReadCacheTTL, cfg.ReadTimeout)
	c.trust.adopt(opts.Views.View(), c.clock.Now())
	c.view.Store(opts.Views.View())
	if err := c.sig.init(opts.Views.View(), c.reg); err != nil {
		return nil, fmt.Errorf("cluster: register metrics: %w", err)
	}
	viewCh := make(chan struct{})
	c.viewCh.Store(&viewCh)
	if c.reg != nil {
		for _, col := range append(c.m.collectors(), queueCollector{c}, linkCollector{c}, cacheCollector{c}) {
			if err := c.reg.Register(col); err != nil {
				return nil, fmt.Errorf("cluster: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Start serves other nodes' requests and follows membership changes.
func (c *Cluster) Start() error {
	if err := c.tr.Serve(c); err != nil {
		return fmt.Errorf("cluster: serve data channel: %w", err)
	}
	c.wg.Add(5)
	go c.watchLoop()
	go c.handoffLoop()
	go c.cacheLoop()
	go c.probeLoop()
	go c.antiEntropyLoop()
	c.goOwned(c.signalLoop)
	c.log.Info("data channel serving", zap.String("addr", c.tr.Addr()))
	return nil
}

// View returns the view the data plane currently routes by.
func (c *Cluster) View() *ring.View { return c.view.Load() }

// viewChanged returns a channel closed when the next view is installed.
func (c *Cluster) viewChanged() <-chan struct{} { return *c.viewCh.Load() }

// watchLoop installs each new view: it retires destinations that left,
// re-routing what they had queued, and asks for a handoff pass.
func (c *Cluster) watchLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case <-c.views.Changed():
		}
		v := c.views.View()
		c.trust.adopt(v, c.clock.Now())
		c.view.Store(v)
		next := make(chan struct{})
		close(*c.viewCh.Swap(&next))
		c.retireDests(v)
		c.cache.clear() // owners may have changed; refetch rather than trust
		c.requestHandoff()
	}
}

func (c *Cluster) requestHandoff() {
	select {
	case c.rebalance <- struct{}{}:
	default:
	}
}

// goOwned runs fn on a goroutine of the cluster's, which Close waits for.
// Once Close has begun it runs nothing and reports false.
func (c *Cluster) goOwned(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// Drain waits until this node holds no swarm and has no forward queued:
// everything it had is with the swarms' owners. It is the middle step of a
// graceful leave, after the node stopped being an owner (its view has Self
// -1) and before it leaves the gossip.
func (c *Cluster) Drain(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c.requestHandoff()
		v := c.view.Load()
		swarms := c.store.Stats().Swarms
		queued := c.queued()
		if len(v.Members()) == 0 {
			if swarms > 0 {
				c.log.Warn("no member left to hand swarms to; they go with this node", zap.Int("swarms", swarms))
			}
			return nil
		}
		if c.settled.Load() == v && swarms == 0 && queued == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: drain: %d swarms and %d queued changes left: %w", swarms, queued, ctx.Err())
		case <-tick.C:
		}
	}
}

// Close stops the data plane: queued forwards are abandoned (Drain first
// to deliver them) and the transport is closed. Safe to call twice.
func (c *Cluster) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		if c.strayTimer != nil {
			c.strayTimer.Stop()
			c.strayTimer = nil
		}
		c.mu.Unlock()
		close(c.stop)
		c.cancel()
		c.wg.Wait()
		c.destMu.Lock()
		ds := c.dests
		c.dests = map[string]*dest{}
		c.destMu.Unlock()
		for _, d := range ds {
			d.close()
		}
		for _, d := range ds {
			if n := d.wait(); n > 0 {
				c.m.forwarded.WithLabelValues("no_owner").Add(float64(n))
				c.log.Warn("forwards abandoned at shutdown", zap.String("peer", d.name), zap.Int("changes", n))
			}
		}
		err = c.tr.Close()
		if c.reg != nil {
			for _, col := range append(c.m.collectors(), queueCollector{c}, linkCollector{c}, cacheCollector{c}) {
				c.reg.Unregister(col)
			}
		}
	})
	return err
}

// maxFetchPeers caps the peers per family one FetchReply carries.
const maxFetchPeers = 10000

// maxFetchManyPeers caps the peers per family of a whole FetchManyReply:
// with 45 bytes a peer, both families stay under 4 MB, a quarter of the
// transport's default frame limit.
const maxFetchManyPeers = 40000

// Handle answers other nodes. A node applies what it is sent even for
// swarms it does not own by its own view (views can briefly disagree);
// the handoff pass moves such swarms on to their owners.
func (c *Cluster) Handle(_ context.Context, req transport.Request) (transport.Reply, error) {
	switch r := req.(type) {
	case *transport.ApplyRequest:
		changes := c.applied.fresh(r.Stream, r.Seq, r.Changes)
		if dup := len(r.Changes) - len(changes); dup > 0 {
			c.m.duplicates.Add(float64(dup))
		}
		c.m.received.Add(float64(len(changes)))
		if v := c.view.Load(); v.Self < 0 && len(v.Members()) > 0 {
			// Leaving: whatever is stored here now would have to be handed
			// over again, perhaps after the last pass; pass it on instead.
			c.route(v, changes)
			return &transport.Ack{}, nil
		}
		c.store.Apply(changes)
		c.checkOwned(len(changes), func(i int) bittorrent.InfoHash { return changes[i].InfoHash })
		return &transport.Ack{}, nil
	case *transport.FetchRequest:
		// A sample is always bounded, whatever the caller asked, so the
		// reply stays far below the transport's frame limit.
		return c.localReply(r.InfoHash, min(max(r.MaxPeers, 1), maxFetchPeers)), nil
	case *transport.FetchManyRequest:
		// The whole reply shares one budget of peers, so asking for many
		// swarms cannot make it larger than asking for one.
		n := min(max(r.MaxPeers, 1), maxFetchPeers, max(maxFetchManyPeers/max(len(r.InfoHashes), 1), 1))
		reply := &transport.FetchManyReply{Swarms: make([]transport.FetchReply, len(r.InfoHashes))}
		for i, ih := range r.InfoHashes {
			reply.Swarms[i] = *c.localReply(ih, n)
		}
		return reply, nil
	case *transport.MergeRequest:
		// Only an owner takes a swarm. When the views differ (one side has
		// not heard of a join or a leave yet), refusing keeps the sender's
		// copy, to be sent again once they agree; taking it would leave a
		// stray here that could travel back while the sender drops its own.
		v := c.view.Load()
		var buf [8]int
		for _, sw := range r.Swarms {
			if !v.Owns(sw.InfoHash, buf[:0]) {
				return nil, fmt.Errorf("cluster: not an owner of %x by view %d; not taking swarms", sw.InfoHash[:4], v.Epoch)
			}
		}
		var changes []bittorrent.Change
		for _, sw := range r.Swarms {
			changes = changes[:0]
			for _, p := range sw.Peers {
				changes = append(changes, bittorrent.Change{InfoHash: sw.InfoHash, Peer: p.Peer, Op: bittorrent.OpPut, Seeder: p.Seeder})
			}
			c.store.Apply(changes)
			c.store.MergeSnatches(sw.InfoHash, sw.Snatches)
		}
		c.trust.received(func(i int) bittorrent.InfoHash { return r.Swarms[i].InfoHash }, len(r.Swarms))
		c.m.handoff.WithLabelValues("received").Add(float64(len(r.Swarms)))
		return &transport.Ack{}, nil
	case *transport.ScrapeRequest:
		return c.scrapePageFor(r), nil
	case *transport.SignalRequest:
		c.receiveSignals(r)
		return &transport.Ack{}, nil
	case *transport.DigestRequest, *transport.CompareRequest, *transport.RepairRequest:
		return c.handleAntiEntropy(r)
	}
	return nil, fmt.Errorf("cluster: unknown request %T", req)
}

// strayDelay is how long after receiving a swarm it does not own a node
// waits before moving it on. The sender routed by another view; acting at
// once, before the two views agree again, would send the swarm straight
// back (and each side would drop its copy).
const strayDelay = time.Second

// checkOwned schedules a handoff pass when a request carried a swarm this
// node does not own by its view, so the copy moves on to the owners soon
// rather than at the next repair.
func (c *Cluster) checkOwned(n int, ih func(int) bittorrent.InfoHash) {
	v := c.view.Load()
	if ownsAll(v) {
		return
	}
	var buf [8]int
	for i := range n {
		if !v.Owns(ih(i), buf[:0]) {
			c.mu.Lock()
			if c.strayTimer == nil && !c.closing {
				c.strayTimer = c.clock.AfterFunc(strayDelay, func() {
					c.mu.Lock()
					c.strayTimer = nil
					c.mu.Unlock()
					c.requestHandoff()
				})
			}
			c.mu.Unlock()
			return
		}
	}
}

// ownsAll reports whether every member of v owns every swarm (replicas at
// least the member count, or full_replication), so this node, a member,
// owns whatever it is sent, and a change goes to every member.
func ownsAll(v *ring.View) bool {
	return v.Self >= 0 && v.OwnerCount(v.Replicas) == len(v.Members())
}

// MemberStatus is one member's share of the ring, for /cluster.
type MemberStatus struct {
	Name       string  `json:"name"`
	Datacenter string  `json:"datacenter,omitempty"`
	Zone       string  `json:"zone,omitempty"`
	Data       string  `json:"data"`
	Share      float64 `json:"share"`
	Queue      int     `json:"queue"`
	// Link is the member's data channel as this node sees it (links.go);
	// empty for this node itself. LinkError says why a failing one fails.
	Link      LinkState `json:"link,omitempty"`
	LinkError string    `json:"link_error,omitempty"`
}

// Status is the data plane as this node sees it.
type Status struct {
	Epoch    uint64 `json:"epoch"`
	Self     string `json:"self,omitempty"`
	Replicas int    `json:"replicas"`
	// Owners is how many members own each swarm: Replicas, or more under
	// full_replication (every member) or every_datacenter.
	Owners  int  `json:"owners"`
	Settled bool `json:"settled"`
	// Whole says the node's copies of the swarms it owns are complete: no
	// swarm it gained in a membership change is still waiting for its
	// handoff (see localAlone), and no member's data channel is failing,
	// whose writes would be missing here.
	Whole bool `json:"whole"`
	// FailingLinks counts the members whose data channel is failing.
	FailingLinks int            `json:"failing_links"`
	Members      []MemberStatus `json:"members"`
}

// shareSamples is how many infohashes Status places to estimate each
// member's share; the estimate's error is about 1/sqrt of it per member.
const shareSamples = 1 << 14

// Status reports the current view, each member's estimated share of the
// swarms (as one of their owners) and the forward queues.
func (c *Cluster) Status() Status {
	v := c.view.Load()
	st := Status{Epoch: v.Epoch, Replicas: v.Replicas, Owners: v.OwnerCount(v.Replicas), Settled: c.settled.Load() == v, Whole: c.Trusted()}
	if v.Self >= 0 {
		st.Self = v.Members()[v.Self].Name
	}
	counts := make([]int, len(v.Members()))
	var owners []int
	for i := range shareSamples {
		var ih bittorrent.InfoHash
		ih[0], ih[1], ih[2], ih[19] = byte(i), byte(i>>8), byte(i>>16), 0x5a
		owners = v.OwnersOf(ih, owners[:0])
		for _, o := range owners {
			counts[o]++
		}
	}
	depths := c.QueueDepths()
	now := c.clock.Now()
	for i, m := range v.Members() {
		link, why := c.linkStatus(v, i, now)
		if link == LinkFailing {
			st.FailingLinks++
		}
		st.Members = append(st.Members, MemberStatus{
			Name: m.Name, Datacenter: m.Datacenter, Zone: m.Zone, Data: v.DataAddrs[i],
			Share: float64(counts[i]) / shareSamples, Queue: depths[m.Name], Link: link, LinkError: why,
		})
	}
	st.Whole = st.Whole && st.FailingLinks == 0
	return st
}
