package cluster

import (
	"net/netip"
	"slices"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// emptyTTL is how long an empty answer from the owners is reused, at most.
const emptyTTL = 5 * time.Millisecond

// AnnouncePeers implements hooks.PeerSource. Where the read goes is
// planRead's: an owner whose copy is whole answers from its own store, an
// empty swarm included; any other node asks one owner (hedging to the
// next after half of read_timeout), or, within a trust window, every
// member that may hold part of the swarm, merging their answers and its
// own copy. A copy is kept for read_cache_ttl, by default not at all.
func (c *Cluster) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	v := c.view.Load()
	if ownsAll(v) && c.wholeIn(v) {
		// Every member owns every swarm and this one's copies are whole:
		// no owner lookup.
		c.m.readLocal.Inc()
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	var ask [16]int
	rt := c.readRoute(v, ih, ask[:0])
	if rt.local {
		c.m.readLocal.Inc()
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	snap := c.remote(v, ih, rt)
	if snap == nil {
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	peers, state := snap.choose(announcer, seeder, n, dst)
	return peers, snap.counts, state
}

// Counts implements hooks.PeerSource, for scrapes.
func (c *Cluster) Counts(ih bittorrent.InfoHash) bittorrent.Counts {
	v := c.view.Load()
	if ownsAll(v) && c.wholeIn(v) {
		c.m.readLocal.Inc()
		return c.store.Counts(ih)
	}
	var ask [16]int
	rt := c.readRoute(v, ih, ask[:0])
	if rt.local {
		c.m.readLocal.Inc()
		return c.store.Counts(ih)
	}
	if snap := c.remote(v, ih, rt); snap != nil {
		return snap.counts
	}
	return c.store.Counts(ih)
}

// readRoute plans the read of ih by v, the trust state and the links as
// they are now (planRead).
func (c *Cluster) readRoute(v *ring.View, ih bittorrent.InfoHash, dst []int) readRoute {
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	return planRead(v, c.trust.cur.Load(), ih, owners, c.failingAt(v, c.clock.Now()), dst)
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
// ihs whose local copy does not answer alone (see localAlone) and that
// have no fresh copy fetched, without waiting, so the reads that follow
// find them fetched or on their way. All of them go out together, one
// request per member asked however many swarms it is asked for, so a
// batch of requests (a scrape, a batch of datagrams) waits about one round
// trip, and its reads share one deadline: the fetch started here plus
// read_timeout.
func (c *Cluster) Prefetch(ihs []bittorrent.InfoHash) {
	v := c.view.Load()
	if ownsAll(v) && c.wholeIn(v) {
		return // every swarm is owned here, whole
	}
	now := c.clock.Now()
	var (
		jobs          []fetchJob
		equal, single []int
	)
	for _, ih := range ihs {
		var ask [16]int
		rt := c.readRoute(v, ih, ask[:0])
		if rt.local || len(rt.ask) == 0 {
			continue
		}
		if e, fetch := c.cache.lookup(ih, now, true); fetch {
			if !rt.merge {
				single = append(single, len(jobs))
			}
			jobs = append(jobs, fetchJob{ih: ih, targets: slices.Clone(rt.ask), merge: rt.merge, own: rt.own, e: e})
			equal = append(equal, rt.equal)
		}
	}
	if len(single) > 1 {
		// The batch's single-owner reads ask as few members as they can.
		asks := make([][]int, len(single))
		eq := make([]int, len(single))
		for k, i := range single {
			asks[k], eq[k] = jobs[i].targets, equal[i]
		}
		coverAsks(asks, eq)
	}
	if len(jobs) > 0 {
		c.m.prefetches.Add(float64(len(jobs)))
		c.goFetch(v, jobs)
	}
}

// remote returns a fresh enough copy of the swarm from the members its
// route rt asks, fetching it if needed, or nil if none answered and no
// copy exists; then the caller falls back to the local store. It waits at
// most until the fetch it waits for is read_timeout old, so the reads of
// a prefetched batch together wait at most read_timeout.
func (c *Cluster) remote(v *ring.View, ih bittorrent.InfoHash, rt readRoute) *snapshot {
	if len(rt.ask) == 0 {
		c.m.readFailed.Inc()
		return nil
	}
	now := c.clock.Now()
	e, fetch := c.cache.lookup(ih, now, false)
	switch {
	case !fetch && e.handed:
		c.m.readFetched.Inc() // the copy its batch's prefetch fetched
		return e.snap
	case !fetch && e.snap != nil:
		c.m.readCached.Inc()
		return e.snap
	}
	switch {
	case fetch && !rt.merge:
		// One owner's answer is enough: the fetch runs here, without a
		// goroutine of its own, and ends with the caller's wait.
		c.fetchDirect(v, ih, rt.ask, e)
	case fetch:
		// The fetch runs on its own so that a caller that gives up at
		// read_timeout leaves it to finish and fill the cache for the next.
		c.goFetch(v, []fetchJob{{ih: ih, targets: slices.Clone(rt.ask), merge: rt.merge, own: rt.own, e: e}})
	}
	return c.await(ih, e, now, rt.own)
}

// await waits for the fetch of ih that ticket e is for, at most until it
// is read_timeout old, and returns what it delivered, or else the latest
// copy of ih, or nil. A read that started at now takes what its own fetch
// delivered from the ticket rather than from the cache, which a new view
// may have cleared since. own says this node owns ih, so its own copy
// belongs in a stale answer.
func (c *Cluster) await(ih bittorrent.InfoHash, e *cacheEntry, now time.Time, own bool) *snapshot {
	var snap *snapshot
	if wait := e.fl.started.Add(c.cfg.ReadTimeout).Sub(now); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-e.fl.done:
			snap = e.fl.snap
		case <-t.C:
		}
		t.Stop()
	}
	if snap == nil {
		snap = c.cache.current(ih)
	}
	switch {
	case snap != nil && (snap.at.After(now.Add(-c.cfg.ReadCacheTTL)) || !snap.at.Before(now)):
		c.m.readFetched.Inc()
		return snap
	case snap != nil:
		c.m.readStale.Inc()
		if own {
			// The old copy misses what was written here since.
			return snap.with(c.localReply(ih, c.cfg.ReadMaxPeers), c.cfg.ReadMaxPeers)
		}
		return snap
	}
	c.m.readFailed.Inc()
	return nil
}

// localReply is this node's copy of ih as it answers a fetch: the counts
// and up to maxPeers peers per family.
func (c *Cluster) localReply(ih bittorrent.InfoHash, maxPeers int) *transport.FetchReply {
	snap, counts, _ := c.store.Swarm(ih, maxPeers, nil)
	reply := &transport.FetchReply{Counts: counts, Peers: make([]transport.SwarmPeer, len(snap))}
	for i, ch := range snap {
		reply.Peers[i] = transport.SwarmPeer{Peer: ch.Peer, Seeder: ch.Seeder}
	}
	return reply
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
	var perFamily [3]int
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
