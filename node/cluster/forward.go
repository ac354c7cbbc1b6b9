package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// forwardCallTimeout bounds one forwarded batch's round trip; a node that
// takes longer is treated as unreachable for that attempt.
const forwardCallTimeout = 2 * time.Second

// Apply routes changes to their swarms' owners: this node's share goes to
// the local store at once, the rest to per-destination queues that batch
// and send in the background. It never blocks on the network.
func (c *Cluster) Apply(changes []bittorrent.Change) {
	c.route(c.view.Load(), changes)
}

func (c *Cluster) route(v *ring.View, changes []bittorrent.Change) {
	if ownsAll(v) {
		// Every member owns every swarm: no lookups, the whole batch goes
		// to each.
		c.store.Apply(changes)
		for o := range v.Members() {
			if o != v.Self && !c.destFor(v, o).enqueue(changes) {
				// Retired while we routed by an older view, as below.
				c.route(c.view.Load(), changes)
			}
		}
		return
	}
	var (
		local  []bittorrent.Change
		groups map[int][]bittorrent.Change
		buf    [8]int
		orphan int
	)
	for i := range changes {
		owners := v.OwnersOf(changes[i].InfoHash, buf[:0])
		if len(owners) == 0 {
			orphan++
			continue
		}
		for _, o := range owners {
			if o == v.Self {
				local = append(local, changes[i])
				continue
			}
			if groups == nil {
				groups = make(map[int][]bittorrent.Change, len(v.Members()))
			}
			groups[o] = append(groups[o], changes[i])
		}
	}
	if len(local) > 0 {
		c.store.Apply(local)
	}
	for o, chs := range groups {
		if !c.destFor(v, o).enqueue(chs) {
			// The queue was retired while we routed by an older view.
			c.route(c.view.Load(), chs)
		}
	}
	if orphan > 0 {
		c.m.forwarded.WithLabelValues("no_owner").Add(float64(orphan))
		if n, ok := c.dropLog.Allow(); ok {
			c.log.Warn("changes dropped: no member owns their swarms", zap.Uint64("events", n))
		}
	}
}

// destFor returns the queue for member o of v, starting it if needed.
// Queues are keyed by data address, so a node that comes back elsewhere
// gets a fresh queue and the old one is retired with the view.
func (c *Cluster) destFor(v *ring.View, o int) *dest {
	addr := v.DataAddrs[o]
	c.destMu.Lock()
	defer c.destMu.Unlock()
	if d := c.dests[addr]; d != nil {
		return d
	}
	d := newDest(c, v.Members()[o].Name, addr)
	c.dests[addr] = d
	go d.run()
	return d
}

// retireDests stops the queues of nodes that are no longer members and
// routes what they still held by the new view, so changes queued for a
// failed owner reach the owners that replace it.
func (c *Cluster) retireDests(v *ring.View) {
	live := make(map[string]bool, len(v.DataAddrs))
	for _, a := range v.DataAddrs {
		live[a] = true
	}
	c.forgetBatchers(live)
	var gone []*dest
	c.destMu.Lock()
	for addr, d := range c.dests {
		if !live[addr] {
			gone = append(gone, d)
			delete(c.dests, addr)
		}
	}
	c.destMu.Unlock()
	for _, d := range gone {
		d.close()
		d.wait()
		left := d.take()
		if len(left) > 0 {
			c.log.Info("re-routing changes queued for a departed node", zap.String("peer", d.name), zap.Int("changes", len(left)))
			c.route(v, left)
		}
	}
}

// QueueDepths returns the changes waiting per destination node name.
func (c *Cluster) QueueDepths() map[string]int {
	c.destMu.Lock()
	defer c.destMu.Unlock()
	out := make(map[string]int, len(c.dests))
	for _, d := range c.dests {
		out[d.name] += d.depth()
	}
	return out
}

func (c *Cluster) queued() int {
	n := 0
	for _, d := range c.QueueDepths() {
		n += d
	}
	return n
}

// dest is the bounded queue and sender for one destination node. One batch
// is in flight at a time, which keeps a node's changes in order; a change
// leaves the queue only when delivered or given up on, so a retired queue
// can hand its unsent changes back.
type dest struct {
	c          *Cluster
	name, addr string

	mu     sync.Mutex
	queue  []bittorrent.Change
	head   int    // queue[head:] is waiting
	seq    uint64 // the sequence number of queue[head]
	closed bool   // retired: take has emptied the queue for good

	signal chan struct{} // cap 1: the queue grew
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newDest(c *Cluster, name, addr string) *dest {
	ctx, cancel := context.WithCancel(context.Background())
	return &dest{c: c, name: name, addr: addr, seq: c.nextSeq.Add(seqRange),
		signal: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (d *dest) depth() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue) - d.head
}

// enqueue adds what fits and drops and counts the rest. It returns false,
// taking nothing, if the queue has been retired.
func (d *dest) enqueue(chs []bittorrent.Change) bool {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return false
	}
	waiting := len(d.queue) - d.head
	room := d.c.cfg.ForwardQueue - waiting
	take := min(room, len(chs))
	if take > 0 {
		if d.head > 0 && d.head >= waiting {
			// Compact once the sent prefix outweighs what waits: each
			// change is copied at most once more, so it stays O(1) each.
			n := copy(d.queue, d.queue[d.head:])
			clear(d.queue[n:])
			d.queue, d.head = d.queue[:n], 0
		}
		d.queue = append(d.queue, chs[:take]...)
	}
	d.mu.Unlock()
	if take > 0 {
		select {
		case d.signal <- struct{}{}:
		default:
		}
	}
	if dropped := len(chs) - max(take, 0); dropped > 0 {
		d.c.m.forwarded.WithLabelValues("queue_full").Add(float64(dropped))
		if n, ok := d.c.dropLog.Allow(); ok {
			d.c.log.Warn("forward queue full; changes dropped", zap.String("peer", d.name), zap.Int("queue", d.c.cfg.ForwardQueue), zap.Uint64("events", n))
		}
	}
	return true
}

// peek copies up to limit waiting changes into buf and returns the
// sequence number of the first.
func (d *dest) peek(buf []bittorrent.Change, limit int) ([]bittorrent.Change, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(limit, len(d.queue)-d.head)
	return append(buf[:0], d.queue[d.head:d.head+n]...), d.seq
}

// pop removes n changes from the front.
func (d *dest) pop(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.queue[d.head : d.head+n])
	d.head += n
	d.seq += uint64(n) //nolint:gosec // G115: n is a count of queued changes, never negative
	if d.head == len(d.queue) {
		d.queue, d.head = d.queue[:0], 0
	}
}

// take empties the queue and returns what was waiting. Call after wait.
func (d *dest) take() []bittorrent.Change {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := append([]bittorrent.Change(nil), d.queue[d.head:]...)
	d.queue, d.head, d.closed = nil, 0, true
	return out
}

func (d *dest) close() { d.cancel() }

// wait returns once the sender stopped, with the number of changes left.
func (d *dest) wait() int {
	<-d.done
	return d.depth()
}

func (d *dest) run() {
	defer close(d.done)
	cfg := &d.c.cfg
	var (
		buf       []bittorrent.Change
		failSince time.Time // first failure of the current outage
		backoff   time.Duration
		lastSent  time.Time // when the last batch left
	)
	for {
		if d.depth() == 0 {
			select {
			case <-d.ctx.Done():
				return
			case <-d.signal:
			}
			continue
		}
		// A link idle for forward_delay sends at once; a busy one sends at
		// most one batch per forward_delay, so a stream of announces
		// shares requests instead of paying a round trip each.
		if wait := cfg.ForwardDelay - time.Since(lastSent); d.depth() < cfg.ForwardBatch && wait > 0 && failSince.IsZero() {
			d.gather(cfg.ForwardBatch, wait)
		}
		var seq uint64
		buf, seq = d.peek(buf, cfg.ForwardBatch)
		ctx, cancel := context.WithTimeout(d.ctx, forwardCallTimeout)
		start := time.Now()
		lastSent = start
		_, err := d.c.tr.Call(ctx, d.addr, &transport.ApplyRequest{Stream: d.c.stream, Seq: seq, Changes: buf})
		cancel()
		d.c.m.forwardTime.Observe(time.Since(start).Seconds())
		switch {
		case err == nil:
			d.pop(len(buf))
			d.c.m.forwarded.WithLabelValues("ok").Add(float64(len(buf)))
			if !failSince.IsZero() {
				d.c.log.Info("node reachable again", zap.String("peer", d.name), zap.Duration("after", time.Since(failSince)))
			}
			failSince, backoff = time.Time{}, 0
		case d.ctx.Err() != nil:
			return // retired or closing: the queue is handed back intact
		case !errors.Is(err, transport.ErrUnreachable):
			d.pop(len(buf))
			d.c.m.forwarded.WithLabelValues("rejected").Add(float64(len(buf)))
			if n, ok := d.c.unreachLog.Allow(); ok {
				d.c.log.Warn("node rejected forwarded changes; dropped", zap.String("peer", d.name), zap.Int("changes", len(buf)), zap.Uint64("events", n), zap.Error(err))
			}
		default:
			now := time.Now()
			if failSince.IsZero() {
				failSince = now
			}
			if now.Sub(failSince) >= cfg.ForwardRetry {
				// The outage has outlived the retry budget: give each batch
				// one attempt from now on, so the queue keeps moving, and
				// keep what could not be sent here rather than drop it.
				d.pop(len(buf))
				d.c.park(buf)
				d.c.m.forwarded.WithLabelValues("unreachable").Add(float64(len(buf)))
				if n, ok := d.c.unreachLog.Allow(); ok {
					d.c.log.Warn("owner unreachable; changes kept here until the owners can take them", zap.String("peer", d.name), zap.String("addr", d.addr),
						zap.Duration("for", now.Sub(failSince)), zap.Uint64("events", n), zap.Error(err))
				}
				continue
			}
			backoff = min(max(2*backoff, 10*time.Millisecond), time.Second)
			select {
			case <-d.ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

// park keeps changes that could not be forwarded in this node's own
// store. A node cut off from the owners (isolated, or on the smaller side
// of a partition before it has declared the others dead) keeps taking
// announces; dropping them after forward_retry would lose what its
// clients were told. Held here, a swarm this node does not own is a stray
// that the handoff pass sends to its owners, and keeps retrying, until
// they take it.
func (c *Cluster) park(chs []bittorrent.Change) {
	c.store.Apply(chs)
	c.checkOwned(len(chs), func(i int) bittorrent.InfoHash { return chs[i].InfoHash })
}

// gather waits up to delay for the queue to reach a full batch.
func (d *dest) gather(batch int, delay time.Duration) {
	t := time.NewTimer(delay)
	defer t.Stop()
	for d.depth() < batch {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
			return
		case <-d.signal:
		}
	}
}
