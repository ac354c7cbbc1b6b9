package cluster

import (
	"context"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

const (
	// mergePeers is roughly how many peers one handoff request carries.
	mergePeers = 8192
	// mergeTimeout bounds one handoff request.
	mergeTimeout = 10 * time.Second
	// handoffRetry is the pause before a pass that could not deliver
	// everything runs again.
	handoffRetry = 500 * time.Millisecond
	// dropGrace is how long a node keeps a swarm it has handed over
	// before the second pass sends it again and drops it.
	dropGrace = time.Second
	// handoffGap is the least time between two passes, so a stream of
	// requests for swarms owned elsewhere cannot keep a node walking its
	// store back to back.
	handoffGap = 50 * time.Millisecond
)

// handoffLoop moves swarms to where placement wants them, after every
// membership change and every repair_interval, one pass at a time; see
// handoffPlan for what a pass decides.
func (c *Cluster) handoffLoop() {
	defer c.wg.Done()
	repair := time.NewTicker(c.cfg.RepairInterval)
	defer repair.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-c.stop:
			return
		case <-c.rebalance:
		case <-repair.C:
		case <-retry:
		}
		retry = nil
		v := c.view.Load()
		if c.handoffPass(v) {
			c.settled.Store(v)
			switch wait := c.trust.settle(v, c.clock.Now(), c.trustWindow()); {
			case wait == 0:
				c.log.Info("local copies whole again", zap.Uint64("epoch", v.Epoch))
			case wait > 0:
				retry = time.After(wait) // look again when the window has passed
			}
		} else {
			retry = time.After(handoffRetry)
		}
		select {
		case <-c.stop:
			return
		case <-time.After(handoffGap):
		}
	}
}

// handoffPass carries out one pass planned by handoffPlan: it walks the
// local swarms, sends each where the plan says, then drops what the plan
// lets go of. It reports whether the pass settled.
func (c *Cluster) handoffPass(v *ring.View) bool {
	start := c.clock.Now()
	p := newHandoffPlan(c.handoff, v, start)
	h := &handoff{c: c, v: v, batches: map[int]*mergeBatch{}, inflight: map[int]chan struct{}{},
		failed: map[bittorrent.InfoHash]bool{}, down: map[int]bool{}}
	var snap []bittorrent.Change
	c.store.Range(func(ih bittorrent.InfoHash) bool {
		m := p.swarm(ih)
		if len(m.to) == 0 && !m.release {
			return true
		}
		if len(m.to) > 0 {
			var counts bittorrent.Counts
			var ok bool
			snap, counts, ok = c.store.Swarm(ih, 0, snap[:0])
			if !ok {
				return true
			}
			sw := transport.Swarm{InfoHash: ih, Snatches: counts.Snatches, Peers: make([]transport.SwarmPeer, len(snap))}
			for i, ch := range snap {
				sw.Peers[i] = transport.SwarmPeer{Peer: ch.Peer, Seeder: ch.Seeder}
			}
			for _, t := range m.to {
				h.add(t, sw)
			}
		}
		p.record(m)
		select {
		case <-c.stop:
			return false
		default:
			return true
		}
	})
	h.flushAll()
	drop, next, settled := p.finish(h.failed)
	for _, ih := range drop {
		c.store.Drop(ih)
	}
	c.handoff = next
	took := c.clock.Now().Sub(start)
	c.m.handoff.WithLabelValues("dropped").Add(float64(len(drop)))
	c.m.handoffTime.Observe(took.Seconds())
	if h.sent > 0 || len(drop) > 0 || len(h.failed) > 0 {
		c.log.Info("handoff pass", zap.Uint64("epoch", v.Epoch), zap.Int("sent", h.sent), zap.Int("dropped", len(drop)),
			zap.Int("to_drop", len(next.pending)), zap.Int("failed", len(h.failed)), zap.Duration("took", took))
	}
	return settled
}

// handoff accumulates swarms per destination and sends them in requests of
// about mergePeers peers. Destinations are served side by side, one
// request in flight each, so a node that does not answer (cut off, not yet
// declared dead) delays only its own swarms: after its first failure in a
// pass it gets no more requests that pass, and a request to it ends as
// soon as a view without it arrives.
type handoff struct {
	c        *Cluster
	v        *ring.View
	batches  map[int]*mergeBatch
	inflight map[int]chan struct{} // closed when the request to a destination ends

	mu     sync.Mutex // guards the fields below, written by the senders
	failed map[bittorrent.InfoHash]bool
	down   map[int]bool // destinations that failed this pass
	sent   int
}

type mergeBatch struct {
	swarms []transport.Swarm
	peers  int
}

func (h *handoff) add(to int, sw transport.Swarm) {
	// A swarm bigger than one request travels in parts; merging is
	// idempotent, so each part can carry the snatch count.
	for len(sw.Peers) > mergePeers {
		part := sw
		part.Peers = sw.Peers[:mergePeers]
		h.addPart(to, part)
		sw.Peers = sw.Peers[mergePeers:]
	}
	h.addPart(to, sw)
}

func (h *handoff) addPart(to int, sw transport.Swarm) {
	b := h.batches[to]
	if b == nil {
		b = &mergeBatch{}
		h.batches[to] = b
	}
	b.swarms = append(b.swarms, sw)
	b.peers += len(sw.Peers) + 1
	if b.peers >= mergePeers {
		h.flush(to, b)
	}
}

// flushAll sends what is left for every destination and waits for all.
func (h *handoff) flushAll() {
	for to, b := range h.batches {
		if len(b.swarms) > 0 {
			h.flush(to, b)
		}
	}
	for _, done := range h.inflight {
		<-done
	}
}

// flush starts sending b to destination to once its previous request has
// ended, and empties b.
func (h *handoff) flush(to int, b *mergeBatch) {
	swarms := b.swarms
	b.swarms, b.peers = nil, 0
	if prev := h.inflight[to]; prev != nil {
		<-prev
	}
	h.mu.Lock()
	down := h.down[to]
	if down {
		for _, sw := range swarms {
			h.failed[sw.InfoHash] = true
		}
	}
	h.mu.Unlock()
	if down {
		return
	}
	done := make(chan struct{})
	h.inflight[to] = done
	go func() {
		defer close(done)
		h.send(to, swarms)
	}()
}

func (h *handoff) send(to int, swarms []transport.Swarm) {
	addr := h.v.DataAddrs[to]
	ctx, cancel := context.WithTimeout(h.c.ctx, mergeTimeout)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		h.c.cancelWhenGone(ctx, cancel, addr)
	}()
	_, err := h.c.tr.Call(ctx, addr, &transport.MergeRequest{Swarms: swarms})
	cancel()
	<-watched
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.c.m.handoffFails.Inc()
		h.down[to] = true
		for _, sw := range swarms {
			h.failed[sw.InfoHash] = true
		}
		if n, ok := h.c.handoffLog.Allow(); ok {
			h.c.log.Warn("handoff failed; will retry", zap.String("peer", h.v.Members()[to].Name), zap.Int("swarms", len(swarms)),
				zap.Uint64("events", n), zap.Error(err))
		}
		return
	}
	h.sent += len(swarms)
	h.c.m.handoff.WithLabelValues("sent").Add(float64(len(swarms)))
}

// cancelWhenGone calls cancel when the node stops or a view arrives
// without the node at addr (declared dead, or gone), whichever comes
// first, and returns when ctx is done.
func (c *Cluster) cancelWhenGone(ctx context.Context, cancel context.CancelFunc, addr string) {
	for {
		changed := c.viewChanged()
		if !slices.Contains(c.view.Load().DataAddrs, addr) {
			cancel()
			return
		}
		select {
		case <-c.stop:
			cancel()
			return
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
