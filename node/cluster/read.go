package cluster

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
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
	return c.settled.Load() == v && c.clock.Now().Sub(time.Unix(0, c.viewAt.Load())) > gainGrace
}

// AnnouncePeers implements hooks.PeerSource. An owner answers from its own
// store; any other node answers from a copy of the swarm fetched from the
// nearest owner and kept for read_cache_ttl. An owner that does not have
// the swarm yet (it has just gained it and the handoff is on its way) asks
// the other owners the same way.
func (c *Cluster) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	v := c.view.Load()
	if ownsAll(v) && c.trustLocal(v) {
		// Every member owns every swarm and this one's copy is whole: no
		// owner lookup.
		c.m.readLocal.Inc()
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if isOwner(owners, v.Self) {
		peers, counts, state := c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
		if counts != (bittorrent.Counts{}) || len(owners) == 1 || c.trustLocal(v) {
			c.m.readLocal.Inc()
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
	if ownsAll(v) && c.trustLocal(v) {
		c.m.readLocal.Inc()
		return c.store.Counts(ih)
	}
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if isOwner(owners, v.Self) {
		if counts := c.store.Counts(ih); counts != (bittorrent.Counts{}) || len(owners) == 1 || c.trustLocal(v) {
			c.m.readLocal.Inc()
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
// waiting, so the reads that follow find them fetched or on their way.
// All of them go out together, one request per owner however many swarms
// it is asked for, so a batch of requests (a scrape, a batch of datagrams)
// waits about one round trip, and its reads share one deadline: the fetch
// started here plus read_timeout.
func (c *Cluster) Prefetch(ihs []bittorrent.InfoHash) {
	v := c.view.Load()
	if ownsAll(v) {
		return // every swarm is owned here
	}
	now := c.clock.Now()
	var jobs []fetchJob
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
			jobs = append(jobs, fetchJob{ih: ih, targets: slices.Clone(targets), e: e})
		}
	}
	if len(jobs) > 0 {
		c.m.prefetches.Add(float64(len(jobs)))
		c.goFetch(v, jobs)
	}
}

// remote returns a fresh enough copy of the swarm from its other owners,
// fetching it if needed, or nil if none answered and no copy exists; then
// the caller falls back to the local store. It waits at most until the
// fetch it waits for is read_timeout old, so the reads of a prefetched
// batch together wait at most read_timeout.
func (c *Cluster) remote(v *ring.View, ih bittorrent.InfoHash, owners []int) *snapshot {
	var others [8]int
	targets := otherOwners(v, owners, others[:0])
	if len(targets) == 0 {
		c.m.readFailed.Inc()
		return nil
	}
	now := c.clock.Now()
	e, fetch := c.cache.lookup(ih, now, c.cfg.ReadCacheTTL)
	if !fetch && e.snap != nil && now.Sub(e.snap.at) < c.cfg.ReadCacheTTL {
		c.m.readCached.Inc()
		return e.snap
	}
	if fetch {
		// The fetch runs on its own so that a caller that gives up at
		// read_timeout leaves it to finish and fill the cache for the next.
		c.goFetch(v, []fetchJob{{ih: ih, targets: slices.Clone(targets), e: e}})
	}
	if wait := e.started.Add(c.cfg.ReadTimeout).Sub(now); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-e.done:
		case <-t.C:
		}
		t.Stop()
	}
	snap := c.cache.current(ih)
	switch {
	case snap != nil && snap.at.After(now.Add(-c.cfg.ReadCacheTTL)):
		c.m.readFetched.Inc()
		return snap
	case snap != nil:
		c.m.readStale.Inc()
		return snap
	}
	c.m.readFailed.Inc()
	return nil
}

// goFetch runs fetch on a goroutine Close waits for; once Close has begun
// it fetches nothing and wakes the jobs' waiters at once.
func (c *Cluster) goFetch(v *ring.View, jobs []fetchJob) {
	if !c.goOwned(func() { c.fetch(v, jobs) }) {
		for _, j := range jobs {
			c.cache.finish(j.ih, j.e, nil)
		}
	}
}

// fetchJob is one swarm of a fetch: the owners to ask and the cache
// ticket to finish.
type fetchJob struct {
	ih      bittorrent.InfoHash
	targets []int
	e       *cacheEntry
}

// fetch asks the owners for the swarms of jobs, one request per owner (per
// MaxFetchMany swarms), all in parallel under one deadline: first the
// owners in this node's datacenter, then, for swarms none of those
// answered, the others. Owners can lag one another by a forward (the node
// that took an announce applies it at once and sends it to the other
// owners a moment later), and an owner that has just gained a swarm may
// not hold it yet, so a swarm's answers are merged. Once one owner has
// answered for a swarm, the others get a short grace instead of the whole
// deadline, so one slow owner does not hold every read up.
func (c *Cluster) fetch(v *ring.View, jobs []fetchJob) {
	start := time.Now()
	defer func() { c.m.fetchTime.Observe(time.Since(start).Seconds()) }()
	// Fetches outlive the caller's wait, but not by much: a late answer is
	// still worth caching, a very late one is not.
	ctx, cancel := context.WithTimeout(c.ctx, 4*c.cfg.ReadTimeout)
	defer cancel()
	f := &fetchRound{c: c, v: v, jobs: jobs, merged: make([]*transport.FetchReply, len(jobs)), done: make([]bool, len(jobs))}
	dc := ""
	if v.Self >= 0 {
		dc = v.Members()[v.Self].Datacenter
	}
	near := func(o int) bool { return v.Self < 0 || v.Members()[o].Datacenter == dc }
	f.run(ctx, near)
	f.run(ctx, func(o int) bool { return !near(o) })
	for i := range jobs {
		f.finish(i)
	}
}

// fetchRound is the state of one fetch: each job's merged answer, and
// whether its cache ticket is finished. It is owned by fetch's goroutine.
type fetchRound struct {
	c      *Cluster
	v      *ring.View
	jobs   []fetchJob
	merged []*transport.FetchReply
	done   []bool
}

// ownerAnswer is one owner's answer to a request for jobs idx: one reply
// per job, or nil if the owner did not answer.
type ownerAnswer struct {
	idx  []int
	reps []transport.FetchReply
}

// run asks the owners that pick selects for the jobs not finished yet,
// one request per owner and MaxFetchMany jobs, and merges the answers as
// they come, until all are in, the grace after the first ends, or ctx.
func (f *fetchRound) run(ctx context.Context, pick func(o int) bool) {
	groups := map[int][]int{}
	for i, j := range f.jobs {
		if f.done[i] || f.merged[i] != nil {
			continue // answered by a nearer owner
		}
		for _, o := range j.targets {
			if pick(o) {
				groups[o] = append(groups[o], i)
			}
		}
	}
	if len(groups) == 0 {
		return
	}
	type call struct {
		addr string
		idx  []int
	}
	var calls []call
	pending := make([]int, len(f.jobs)) // requests still out per job
	for o, idx := range groups {
		for chunk := range slices.Chunk(idx, transport.MaxFetchMany) {
			for _, i := range chunk {
				pending[i]++
			}
			calls = append(calls, call{f.v.DataAddrs[o], chunk})
		}
	}
	// Buffered for every answer, so callers left behind at the deadline
	// never block.
	answers := make(chan ownerAnswer, len(calls))
	for _, cl := range calls {
		if !f.c.goOwned(func() { answers <- ownerAnswer{cl.idx, f.askMany(ctx, cl.addr, cl.idx)} }) {
			answers <- ownerAnswer{idx: cl.idx}
		}
	}
	var grace <-chan time.Time
	for range calls {
		select {
		case a := <-answers:
			for k, i := range a.idx {
				pending[i]--
				if a.reps != nil {
					f.merged[i] = mergeReplies(f.merged[i], &a.reps[k], f.c.cfg.ReadMaxPeers)
				}
				if pending[i] == 0 && f.merged[i] != nil {
					f.finish(i)
				} else if grace == nil && f.merged[i] != nil && size(f.merged[i].Counts) > 0 {
					grace = time.After(min(f.c.cfg.ReadTimeout/5, 5*time.Millisecond))
				}
			}
		case <-grace:
			for i := range f.jobs {
				if f.merged[i] != nil {
					f.finish(i)
				}
			}
			grace = nil
		case <-ctx.Done():
			return
		}
	}
}

// askMany fetches the swarms of jobs idx from the owner at addr, one reply
// per job in order, or nil if it did not answer. An owner that does not
// know FetchManyRequest (an older version, during a rolling upgrade) is
// asked one swarm at a time.
func (f *fetchRound) askMany(ctx context.Context, addr string, idx []int) []transport.FetchReply {
	req := &transport.FetchManyRequest{InfoHashes: make([]bittorrent.InfoHash, len(idx)), MaxPeers: f.c.cfg.ReadMaxPeers}
	for k, i := range idx {
		req.InfoHashes[k] = f.jobs[i].ih
	}
	reply, err := f.c.tr.Call(ctx, addr, req)
	if fr, ok := reply.(*transport.FetchManyReply); ok && err == nil && len(fr.Swarms) == len(idx) {
		return fr.Swarms
	}
	if !errors.As(err, new(transport.RemoteError)) {
		return nil
	}
	out := make([]transport.FetchReply, len(idx))
	for k, ih := range req.InfoHashes {
		reply, err := f.c.tr.Call(ctx, addr, &transport.FetchRequest{InfoHash: ih, MaxPeers: f.c.cfg.ReadMaxPeers})
		fr, ok := reply.(*transport.FetchReply)
		if !ok || err != nil {
			return nil
		}
		out[k] = *fr
	}
	return out
}

// finish records job i's answer in the cache, once, and wakes its readers.
func (f *fetchRound) finish(i int) {
	if f.done[i] {
		return
	}
	f.done[i] = true
	var snap *snapshot
	if best := f.merged[i]; best != nil {
		at := f.c.clock.Now()
		if size(best.Counts) == 0 {
			// An empty swarm is most often one whose first announce is
			// still on its way to the owners; keep the answer briefly so
			// the peer shows up soon after it lands.
			at = at.Add(-f.c.cfg.ReadCacheTTL + min(f.c.cfg.ReadCacheTTL, emptyTTL))
		}
		snap = newSnapshot(best, at)
	}
	f.c.cache.finish(f.jobs[i].ih, f.jobs[i].e, snap)
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

// snapshot is a swarm as fetched from an owner, each family's peers
// seeders first, the layout store.Choose walks.
type snapshot struct {
	at     time.Time
	counts bittorrent.Counts
	// fams[0] is IPv4, fams[1] IPv6.
	fams [2]snapFamily
}

type snapFamily struct {
	peers   []bittorrent.Peer
	seeders int
}

func newSnapshot(r *transport.FetchReply, at time.Time) *snapshot {
	s := &snapshot{at: at, counts: r.Counts}
	var size [2]int
	for _, p := range r.Peers {
		fam := familyOf(p.Addr)
		size[fam]++
		if p.Seeder {
			s.fams[fam].seeders++
		}
	}
	var next [2][2]int // next[family]: where the next seeder and leecher go
	for fam := range s.fams {
		s.fams[fam].peers = make([]bittorrent.Peer, size[fam])
		next[fam] = [2]int{0, s.fams[fam].seeders}
	}
	for _, p := range r.Peers {
		fam, role := familyOf(p.Addr), 1
		if p.Seeder {
			role = 0
		}
		s.fams[fam].peers[next[fam][role]] = p.Peer
		next[fam][role]++
	}
	return s
}

// familyOf is the index into snapshot.fams of a's family.
func familyOf(a netip.AddrPort) int {
	if store.Family(a) == 6 {
		return 1
	}
	return 0
}

// choose hands out up to n peers by the store's rule (store.Walk), so a
// swarm read from a copy answers as the owner's store would. The
// announcer's state is exact when the snapshot holds its whole family.
func (s *snapshot) choose(announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.PeerState) {
	if store.Family(announcer) == 0 {
		return dst, bittorrent.Absent
	}
	f := &s.fams[familyOf(announcer)]
	self := -1
	if announcer.Port() != 0 {
		me := netip.AddrPortFrom(announcer.Addr().Unmap(), announcer.Port())
		self = slices.IndexFunc(f.peers, func(p bittorrent.Peer) bool { return samePeer(p.Addr, me) })
	}
	return store.ChoosePeers(f.peers, f.seeders, self, seeder, n, dst)
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
	snap    *snapshot     // last answer; guarded by the shard's mutex
	done    chan struct{} // closed when the fetch in flight ends
	started time.Time     // when the fetch in flight started
	busy    bool          // a fetch is in flight
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
		return &cacheEntry{done: e.done, started: e.started}, false
	}
	e.busy, e.done, e.started = true, make(chan struct{}), now
	return &cacheEntry{done: e.done, started: now}, true
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
		case <-t.C:
			c.cache.expire(c.clock.Now(), max(100*c.cfg.ReadCacheTTL, 10*time.Second))
		}
	}
}
