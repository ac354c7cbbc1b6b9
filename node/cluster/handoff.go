package cluster

import (
	"context"
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
	h := &handoff{c: c, v: v, batches: map[int]*mergeBatch{}, failed: map[bittorrent.InfoHash]bool{}}
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
// about mergePeers peers.
type handoff struct {
	c       *Cluster
	v       *ring.View
	batches map[int]*mergeBatch
	failed  map[bittorrent.InfoHash]bool
	sent    int
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

func (h *handoff) flushAll() {
	for to, b := range h.batches {
		if len(b.swarms) > 0 {
			h.flush(to, b)
		}
	}
}

func (h *handoff) flush(to int, b *mergeBatch) {
	ctx, cancel := context.WithTimeout(h.c.ctx, mergeTimeout)
	defer cancel()
	_, err := h.c.tr.Call(ctx, h.v.DataAddrs[to], &transport.MergeRequest{Swarms: b.swarms})
	if err != nil {
		h.c.m.handoffFails.Inc()
		for _, sw := range b.swarms {
			h.failed[sw.InfoHash] = true
		}
		if n, ok := h.c.handoffLog.Allow(); ok {
			h.c.log.Warn("handoff failed; will retry", zap.String("peer", h.v.Members()[to].Name), zap.Int("swarms", len(b.swarms)),
				zap.Uint64("events", n), zap.Error(err))
		}
	} else {
		h.sent += len(b.swarms)
		h.c.m.handoff.WithLabelValues("sent").Add(float64(len(b.swarms)))
	}
	b.swarms, b.peers = nil, 0
}
