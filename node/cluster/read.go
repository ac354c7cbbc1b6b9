package cluster

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// emptyTTL is how long an empty answer from the owners is reused, at most.
const emptyTTL = 5 * time.Millisecond

// gainGrace is how long after a view change an owner that holds nothing
// for a swarm still asks the other owners: it may have just gained the
// swarm, with the handoff on its way. Past it, and once this node's own
// handoff has settled, an owner's store is the truth and an empty swarm is
// answered locally, so a new swarm's first announces cost no round trip.
const gainGrace = 10 * time.Second

// trustLocal reports whether an owner answers from its own store even when
// it holds nothing for the swarm; see gainGrace.
func (c *Cluster) trustLocal(v *ring.View) bool {
	return c.settled.Load() == v && time.Since(time.Unix(0, c.viewAt.Load())) > gainGrace
}

// AnnouncePeers implements hooks.PeerSource. An owner answers from its own
// store; any other node answers from a copy of the swarm fetched from the
// nearest owner and kept for read_cache_ttl. An owner that does not have
// the swarm yet (it has just gained it and the handoff is on its way) asks
// the other owners the same way.
func (c *Cluster) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	v := c.view.Load()
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if isOwner(owners, v.Self) {
		peers, counts, state := c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
		if counts != (bittorrent.Counts{}) || len(owners) == 1 || c.trustLocal(v) {
			c.m.reads.WithLabelValues("local").Inc()
			return peers, counts, state
		}
	}
	snap := c.remote(v, ih, owners)
	if snap == nil {
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	peers, state := snap.choose(announcer, seeder, n, dst)
	return peers, snap.counts, state
}

// Counts implements hooks.PeerSource, for scrapes.
func (c *Cluster) Counts(ih bittorrent.InfoHash) bittorrent.Counts {
	v := c.view.Load()
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if isOwner(owners, v.Self) {
		if counts := c.store.Counts(ih); counts != (bittorrent.Counts{}) || len(owners) == 1 || c.trustLocal(v) {
			c.m.reads.WithLabelValues("local").Inc()
			return counts
		}
	}
	if snap := c.remote(v, ih, owners); snap != nil {
		return snap.counts
	}
	return c.store.Counts(ih)
}

func isOwner(owners []int, self int) bool {
	for _, o := range owners {
		if o == self {
			return true
		}
	}
	return false
}

// otherOwners appends to dst the owners other than this node.
func otherOwners(v *ring.View, owners, dst []int) []int {
	for _, o := range owners {
		if o != v.Self {
			dst = append(dst, o)
		}
	}
	return dst
}

// Prefetch implements hooks.Prefetcher: it starts fetching the swarms of
// ihs that this node does not own and holds no fresh copy of, without
// waiting, so the reads that follow find them fetched or on their way and
// a batch of requests waits about one round trip instead of one each.
func (c *Cluster) Prefetch(ihs []bittorrent.InfoHash) {
	v := c.view.Load()
	now := time.Now()
	for _, ih := range ihs {
		var buf, others [8]int
		owners := v.OwnersOf(ih, buf[:0])
		if isOwner(owners, v.Self) {
			continue
		}
		targets := otherOwners(v, owners, others[:0])
		if len(targets) == 0 {
			continue
		}
		if e, fetch := c.cache.lookup(ih, now, c.cfg.ReadCacheTTL); fetch {
			c.m.prefetches.Inc()
			go c.fetch(v, ih, slices.Clone(targets), e)
		}
	}
}

// remote returns a fresh enough copy of the swarm from its other owners,
// fetching it if needed, or nil if none answered and no copy exists; then
// the caller falls back to the local store. It waits at most read_timeout.
func (c *Cluster) remote(v *ring.View, ih bittorrent.InfoHash, owners []int) *snapshot {
	var others [8]int
	targets := otherOwners(v, owners, others[:0])
	if len(targets) == 0 {
		c.m.reads.WithLabelValues("failed").Inc()
		return nil
	}
	now := time.Now()
	e, fetch := c.cache.lookup(ih, now, c.cfg.ReadCacheTTL)
	if !fetch && e.snap != nil && now.Sub(e.snap.at) < c.cfg.ReadCacheTTL {
		c.m.reads.WithLabelValues("cached").Inc()
		return e.snap
	}
	if fetch {
		// The fetch runs on its own so that a caller that gives up at
		// read_timeout leaves it to finish and fill the cache for the next.
		go c.fetch(v, ih, slices.Clone(targets), e)
	}
	t := time.NewTimer(c.cfg.ReadTimeout)
	defer t.Stop()
	select {
	case <-e.done:
	case <-t.C:
	}
	snap := c.cache.current(ih)
	switch {
	case snap != nil && snap.at.After(now.Add(-c.cfg.ReadCacheTTL)):
		c.m.reads.WithLabelValues("fetched").Inc()
		return snap
	case snap != nil:
		c.m.reads.WithLabelValues("stale").Inc()
		return snap
	}
	c.m.reads.WithLabelValues("failed").Inc()
	return nil
}

// fetch asks the owners in this node's datacenter for the swarm, and the
// others only if none of those answers.
func (c *Cluster) fetch(v *ring.View, ih bittorrent.InfoHash, owners []int, e *cacheEntry) {
	start := time.Now()
	defer func() { c.m.fetchTime.Observe(time.Since(start).Seconds()) }()
	// Fetches outlive the caller's wait, but not by much: a late answer is
	// still worth caching, a very late one is not.
	ctx, cancel := context.WithTimeout(context.Background(), 4*c.cfg.ReadTimeout)
	defer cancel()
	near, far := owners, []int(nil)
	if v.Self >= 0 {
		dc := v.Members()[v.Self].Datacenter
		near = nil
		for _, o := range owners {
			if v.Members()[o].Datacenter == dc {
				near = append(near, o)
			} else {
				far = append(far, o)
			}
		}
	}
	best := c.ask(ctx, v, ih, near)
	if best == nil && len(far) > 0 {
		best = c.ask(ctx, v, ih, far)
	}
	var snap *snapshot
	if best != nil {
		at := time.Now()
		if size(best.Counts) == 0 {
			// An empty swarm is most often one whose first announce is
			// still on its way to the owners; keep the answer briefly so
			// the peer shows up soon after it lands.
			at = at.Add(-c.cfg.ReadCacheTTL + min(c.cfg.ReadCacheTTL, emptyTTL))
		}
		snap = newSnapshot(best, at)
	}
	c.cache.finish(ih, e, snap)
}

// ask queries owners in parallel and merges their answers. Owners can lag
// one another by a forward (the node that took an announce applies it at
// once and sends it to the other owners a few milliseconds later), and an
// owner that has just gained a swarm may not hold it yet, so the union is
// the freshest view. Once one owner has answered with peers, the others get
// a short grace instead of the whole deadline, so one slow owner does not
// hold every read up.
func (c *Cluster) ask(ctx context.Context, v *ring.View, ih bittorrent.InfoHash, owners []int) *transport.FetchReply {
	switch len(owners) {
	case 0:
		return nil
	case 1: // nothing to wait for in parallel
		return c.askOne(ctx, v.DataAddrs[owners[0]], ih)
	}
	replies := make(chan *transport.FetchReply, len(owners))
	for _, o := range owners {
		go func(addr string) { replies <- c.askOne(ctx, addr, ih) }(v.DataAddrs[o])
	}
	var (
		merged *transport.FetchReply
		grace  <-chan time.Time
	)
	for range owners {
		select {
		case fr := <-replies:
			if fr == nil {
				continue
			}
			merged = mergeReplies(merged, fr, c.cfg.ReadMaxPeers)
			if grace == nil && size(merged.Counts) > 0 {
				grace = time.After(min(c.cfg.ReadTimeout/5, 5*time.Millisecond))
			}
		case <-grace:
			return merged
		case <-ctx.Done():
			return merged
		}
	}
	return merged
}

// askOne fetches the swarm from the owner at addr, or returns nil if it
// did not answer.
func (c *Cluster) askOne(ctx context.Context, addr string, ih bittorrent.InfoHash) *transport.FetchReply {
	reply, err := c.tr.Call(ctx, addr, &transport.FetchRequest{InfoHash: ih, MaxPeers: c.cfg.ReadMaxPeers})
	if fr, ok := reply.(*transport.FetchReply); ok && err == nil {
		return fr
	}
	return nil
}

// mergeReplies is the union of two owners' answers: each count at its
// larger value, and the peers of both, at most maxPerFamily per family.
func mergeReplies(a, b *transport.FetchReply, maxPerFamily int) *transport.FetchReply {
	if a == nil {
		return b
	}
	out := &transport.FetchReply{Counts: bittorrent.Counts{
		Seeders:  max(a.Counts.Seeders, b.Counts.Seeders),
		Leechers: max(a.Counts.Leechers, b.Counts.Leechers),
		Snatches: max(a.Counts.Snatches, b.Counts.Snatches),
	}}
	seen := make(map[netip.AddrPort]bool, len(a.Peers)+len(b.Peers))
	var perFamily [2]int
	for _, list := range [2][]transport.SwarmPeer{a.Peers, b.Peers} {
		for _, p := range list {
			key := netip.AddrPortFrom(p.Addr.Addr().Unmap(), p.Addr.Port())
			fam := familyOf(p.Addr)
			if seen[key] || perFamily[fam] >= maxPerFamily {
				continue
			}
			seen[key] = true
			perFamily[fam]++
			out.Peers = append(out.Peers, p)
		}
	}
	return out
}

func size(c bittorrent.Counts) uint32 { return c.Seeders + c.Leechers + c.Snatches }

// snapshot is a swarm as fetched from an owner, split by family and role
// so choosing peers is a couple of slice walks.
type snapshot struct {
	at     time.Time
	counts bittorrent.Counts
	// groups[family][role]: family 0 is IPv4, 1 IPv6; role 0 seeders,
	// 1 leechers.
	groups [2][2][]bittorrent.Peer
}

func newSnapshot(r *transport.FetchReply, at time.Time) *snapshot {
	s := &snapshot{at: at, counts: r.Counts}
	for _, p := range r.Peers {
		fam, role := familyOf(p.Addr), 1
		if p.Seeder {
			role = 0
		}
		s.groups[fam][role] = append(s.groups[fam][role], p.Peer)
	}
	return s
}

func familyOf(a netip.AddrPort) int {
	if a.Addr().Unmap().Is4() {
		return 0
	}
	return 1
}

// choose appends up to n peers of the announcer's family, the other role
// first, never the announcer, starting at a random offset so announcers
// sharing a snapshot get different peers. It also finds the announcer's
// state, which is exact when the snapshot holds the whole family.
func (s *snapshot) choose(announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.PeerState) {
	fam := familyOf(announcer)
	self := netip.AddrPortFrom(announcer.Addr().Unmap(), announcer.Port())
	state := bittorrent.Absent
	for role, st := range [2]bittorrent.PeerState{bittorrent.Seeding, bittorrent.Leeching} {
		for _, p := range s.groups[fam][role] {
			if samePeer(p.Addr, self) {
				state = st
			}
		}
	}
	first := 0 // leechers want seeders first
	if seeder {
		first = 1
	}
	for _, role := range [2]int{first, 1 - first} {
		g := s.groups[fam][role]
		if len(g) == 0 {
			continue
		}
		off := rand.IntN(len(g))
		for i := range g {
			if n <= 0 {
				return dst, state
			}
			p := g[(off+i)%len(g)]
			if samePeer(p.Addr, self) {
				continue
			}
			dst = append(dst, p)
			n--
		}
	}
	return dst, state
}

func samePeer(a, self netip.AddrPort) bool {
	return a.Port() == self.Port() && a.Addr().Unmap() == self.Addr()
}

// readCache holds fetched swarms. Each entry carries at most one fetch in
// flight, which every reader of that swarm waits on.
type readCache struct {
	shards [64]cacheShard
}

type cacheShard struct {
	mu sync.Mutex
	m  map[bittorrent.InfoHash]*cacheEntry
}

type cacheEntry struct {
	snap *snapshot     // last answer; guarded by the shard's mutex
	done chan struct{} // closed when the fetch in flight ends
	busy bool          // a fetch is in flight
}

func (rc *readCache) init() {
	for i := range rc.shards {
		rc.shards[i].m = map[bittorrent.InfoHash]*cacheEntry{}
	}
}

func (rc *readCache) shard(ih bittorrent.InfoHash) *cacheShard {
	return &rc.shards[ih[0]%byte(len(rc.shards))]
}

// lookup returns the entry for ih and whether the caller must start a
// fetch. A fresh snapshot means no fetch; so does a fetch in flight, whose
// done channel the caller may wait on.
func (rc *readCache) lookup(ih bittorrent.InfoHash, now time.Time, ttl time.Duration) (*cacheEntry, bool) {
	sh := rc.shard(ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[ih]
	if e == nil {
		e = &cacheEntry{}
		sh.m[ih] = e
	}
	if e.snap != nil && now.Sub(e.snap.at) < ttl {
		return &cacheEntry{snap: e.snap}, false
	}
	if e.busy {
		return &cacheEntry{done: e.done}, false
	}
	e.busy, e.done = true, make(chan struct{})
	return &cacheEntry{done: e.done}, true
}

// current returns the latest snapshot of ih, fresh or not.
func (rc *readCache) current(ih bittorrent.InfoHash) *snapshot {
	sh := rc.shard(ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.m[ih]; e != nil {
		return e.snap
	}
	return nil
}

// finish records a fetch's result (nil keeps the older snapshot) and wakes
// its waiters.
func (rc *readCache) finish(ih bittorrent.InfoHash, ticket *cacheEntry, snap *snapshot) {
	sh := rc.shard(ih)
	sh.mu.Lock()
	if e := sh.m[ih]; e != nil && e.done == ticket.done {
		if snap != nil {
			e.snap = snap
		}
		e.busy = false
	}
	sh.mu.Unlock()
	close(ticket.done)
}

// clear forgets every snapshot; fetches in flight still wake their waiters.
func (rc *readCache) clear() {
	for i := range rc.shards {
		sh := &rc.shards[i]
		sh.mu.Lock()
		for ih, e := range sh.m {
			if !e.busy {
				delete(sh.m, ih)
			}
		}
		sh.mu.Unlock()
	}
}

// expire drops snapshots older than maxAge.
func (rc *readCache) expire(now time.Time, maxAge time.Duration) {
	for i := range rc.shards {
		sh := &rc.shards[i]
		sh.mu.Lock()
		for ih, e := range sh.m {
			if !e.busy && (e.snap == nil || now.Sub(e.snap.at) > maxAge) {
				delete(sh.m, ih)
			}
		}
		sh.mu.Unlock()
	}
}

// cacheLoop keeps stale snapshots for a while, as a fallback when owners
// do not answer, then lets them go.
func (c *Cluster) cacheLoop() {
	defer c.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.cache.expire(now, max(100*c.cfg.ReadCacheTTL, 10*time.Second))
		}
	}
}
