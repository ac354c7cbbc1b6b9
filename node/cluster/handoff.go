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
// membership change and every repair_interval. A pass compares the view it
// last completed (the baseline) with the current one; until a pass
// delivers everything, the baseline stays, so nothing is forgotten when
// views change again mid-way.
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
			c.baseline = v
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

// owner identifies a member across views: a node that restarted under the
// same name has a new boot and, having lost its store, counts as new.
type owner struct{ name, boot string }

func ownerAt(v *ring.View, i int) owner { return owner{v.Members()[i].Name, v.Boots[i]} }

// handoffPass walks the local swarms once. For each swarm, with its owners
// now and in the baseline:
//   - owners that are new get it from one node: the first current owner
//     that was an owner before, if this is that node;
//   - a node that has stopped owning it and was an owner before also sends
//     it to the new owners, then drops it, in case that first owner lags;
//   - a node that holds it without ever having owned it (a stray write
//     from a node with an older view) sends it to all owners and drops it.
//
// It reports whether every request succeeded.
func (c *Cluster) handoffPass(v *ring.View) bool {
	prev := c.baseline
	if prev == nil {
		prev = v
	}
	start := time.Now()
	pending := map[bittorrent.InfoHash]time.Time{}
	h := &handoff{c: c, v: v, batches: map[int]*mergeBatch{}, failed: map[bittorrent.InfoHash]bool{}}
	var (
		now, before []int
		targets     []int
		snap        []bittorrent.Change
	)
	c.store.Range(func(ih bittorrent.InfoHash) bool {
		now = v.OwnersOf(ih, now[:0])
		if len(now) == 0 {
			return true // no members at all: keep it for when there are
		}
		before = prev.OwnersOf(ih, before[:0])
		wasOwner := v.Self >= 0 && containsOwner(prev, before, ownerAt(v, v.Self))
		if v.Self < 0 {
			// Leaving: this node is in no view of its own; compare by
			// name against the baseline.
			wasOwner = prev.Self >= 0 && containsOwner(prev, before, ownerAt(prev, prev.Self))
		}
		mine := isOwner(now, v.Self)
		targets = targets[:0]
		switch {
		case mine:
			pusher := -1
			for _, o := range now {
				if containsOwner(prev, before, ownerAt(v, o)) {
					pusher = o
					break
				}
			}
			if pusher == v.Self {
				targets = appendNew(targets, v, now, prev, before)
			}
		case wasOwner:
			targets = appendNew(targets, v, now, prev, before)
		default:
			targets = append(targets, now...)
		}
		if len(targets) == 0 && mine {
			return true
		}
		if len(targets) > 0 {
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
			for _, t := range targets {
				h.add(t, sw)
			}
		}
		if !mine {
			// Two passes: the first sends, the second (dropGrace later)
			// sends again and lets go. Writes routed by an older view can
			// still land here for a moment after the view changed; the
			// second copy carries them.
			first, seen := c.pendingDrop[ih]
			switch {
			case seen && time.Since(first) >= dropGrace:
				h.drop = append(h.drop, ih)
			case seen:
				pending[ih] = first
			default:
				pending[ih] = time.Now()
			}
		}
		select {
		case <-c.stop:
			return false
		default:
			return true
		}
	})
	h.flushAll()
	dropped := 0
	for _, ih := range h.drop {
		if h.failed[ih] {
			pending[ih] = c.pendingDrop[ih]
			continue
		}
		c.store.Drop(ih)
		dropped++
	}
	c.pendingDrop = pending
	c.m.handoff.WithLabelValues("dropped").Add(float64(dropped))
	c.m.handoffTime.Observe(time.Since(start).Seconds())
	if h.sent > 0 || dropped > 0 || len(h.failed) > 0 {
		c.log.Info("handoff pass", zap.Uint64("epoch", v.Epoch), zap.Int("sent", h.sent), zap.Int("dropped", dropped),
			zap.Int("to_drop", len(pending)), zap.Int("failed", len(h.failed)), zap.Duration("took", time.Since(start)))
	}
	return len(h.failed) == 0 && len(pending) == 0
}

// appendNew appends the owners in now that were not owners in before.
func appendNew(dst []int, v *ring.View, now []int, prev *ring.View, before []int) []int {
	for _, o := range now {
		if o != v.Self && !containsOwner(prev, before, ownerAt(v, o)) {
			dst = append(dst, o)
		}
	}
	return dst
}

func containsOwner(v *ring.View, owners []int, id owner) bool {
	for _, o := range owners {
		if ownerAt(v, o) == id {
			return true
		}
	}
	return false
}

// handoff accumulates swarms per destination and sends them in requests of
// about mergePeers peers.
type handoff struct {
	c       *Cluster
	v       *ring.View
	batches map[int]*mergeBatch
	failed  map[bittorrent.InfoHash]bool
	drop    []bittorrent.InfoHash
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
	ctx, cancel := context.WithTimeout(context.Background(), mergeTimeout)
	defer cancel()
	go func() {
		select {
		case <-h.c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
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
