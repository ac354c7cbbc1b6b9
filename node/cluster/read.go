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

// AnnouncePeers implements hooks.PeerSource. An owner whose copy is whole
// (localAlone) answers from its own store, an empty swarm included; any
// other node answers from a copy of the swarm fetched from the nearest
// owners and kept for read_cache_ttl. An owner that has just gained the
// swarm, whose handoff may still be on its way, asks the other and the
// previous owners the same way and adds its own copy to their answers.
func (c *Cluster) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	v := c.view.Load()
	if ownsAll(v) && c.wholeIn(v) {
		// Every member owns every swarm and this one's copies are whole:
		// no owner lookup.
		c.m.readLocal.Inc()
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
	}
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if c.localAlone(v, ih, owners) {
		c.m.readLocal.Inc()
		return c.store.AnnouncePeers(ih, announcer, seeder, n, dst)
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
	if ownsAll(v) && c.wholeIn(v) {
		c.m.readLocal.Inc()
		return c.store.Counts(ih)
	}
	var buf [8]int
	owners := v.OwnersOf(ih, buf[:0])
	if c.localAlone(v, ih, owners) {
		c.m.readLocal.Inc()
		return c.store.Counts(ih)
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
	var jobs []fetchJob
	for _, ih := range ihs {
		var buf [8]int
		var others [16]int
		owners := v.OwnersOf(ih, buf[:0])
		if c.localAlone(v, ih, owners) {
			continue
		}
		targets := c.readTargets(v, ih, owners, others[:0])
		if len(targets) == 0 {
			continue
		}
		if e, fetch := c.cache.lookup(ih, now, c.cfg.ReadCacheTTL); fetch {
			jobs = append(jobs, fetchJob{ih: ih, targets: slices.Clone(targets), own: isOwner(owners, v.Self), e: e})
		}
	}
	if len(jobs) > 0 {
		c.m.prefetches.Add(float64(len(jobs)))
		c.goFetch(v, jobs)
	}
}

// remote returns a fresh enough copy of the swarm from the members that
// hold it (readTargets), fetching it if needed, or nil if none answered
// and no copy exists; then the caller falls back to the local store. It
// waits at most until the fetch it waits for is read_timeout old, so the
// reads of a prefetched batch together wait at most read_timeout.
func (c *Cluster) remote(v *ring.View, ih bittorrent.InfoHash, owners []int) *snapshot {
	var others [16]int
	targets := c.readTargets(v, ih, owners, others[:0])
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
	own := isOwner(owners, v.Self)
	if fetch {
		// The fetch runs on its own so that a caller that gives up at
		// read_timeout leaves it to finish and fill the cache for the next.
		c.goFetch(v, []fetchJob{{ih: ih, targets: slices.Clone(targets), own: own, e: e}})
	}
	return c.await(ih, e, now, own)
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
	case snap != nil && snap.at.After(now.Add(-c.cfg.ReadCacheTTL)):
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

// goFetch runs fetch on a goroutine Close waits for; once Close has begun
// it fetches nothing and wakes the jobs' waiters at once.
func (c *Cluster) goFetch(v *ring.View, jobs []fetchJob) {
	if !c.goOwned(func() { c.fetch(v, jobs) }) {
		for _, j := range jobs {
			c.cache.finish(j.ih, j.e, nil)
		}
	}
}

// fetchJob is one swarm of a fetch: the members to ask, whether this node
// owns the swarm, and the cache ticket to finish.
type fetchJob struct {
	ih      bittorrent.InfoHash
	targets []int
	// own: this node owns ih but its copy may lack part of the swarm (it
	// has just gained it), so its copy joins the answers.
	own bool
	e   *cacheEntry
}

// fetch asks the members in targets for the swarms of jobs, one request
// per member (per MaxFetchMany swarms), all in parallel under one
// deadline: first the members in this node's datacenter, then, for swarms
// none of those answered, the others. Owners can lag one another by a
// forward (the node that took an announce applies it at once and sends it
// to the other owners a moment later), and an owner that has just gained a
// swarm may not hold it yet, so a swarm's answers are merged. Once a
// member that held the swarm before the last membership change has
// answered for it with peers, the others get a short grace instead of the
// whole deadline, so one slow owner does not hold every read up; after an
// answer from any other member, they get half the read timeout.
func (c *Cluster) fetch(v *ring.View, jobs []fetchJob) {
	start := time.Now()
	defer func() { c.m.fetchTime.Observe(time.Since(start).Seconds()) }()
	// Fetches outlive the caller's wait, but not by much: a late answer is
	// still worth caching, a very late one is not.
	ctx, cancel := context.WithTimeout(c.ctx, 4*c.cfg.ReadTimeout)
	defer cancel()
	f := &fetchRound{
		c: c, v: v, jobs: jobs,
		merged: make([]*transport.FetchReply, len(jobs)),
		held:   make([]bool, len(jobs)),
		done:   make([]bool, len(jobs)),
	}
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

// fetchRound is the state of one fetch: each job's merged answer, whether
// a member that held the swarm before the last membership change
// answered it, and whether its cache ticket is finished. It is owned by
// fetch's goroutine.
type fetchRound struct {
	c      *Cluster
	v      *ring.View
	jobs   []fetchJob
	merged []*transport.FetchReply
	held   []bool
	done   []bool
}

// memberAnswer is member o's answer to a request for jobs idx: one reply
// per job, or nil if it did not answer.
type memberAnswer struct {
	o    int
	idx  []int
	reps []transport.FetchReply
}

// run asks the members that pick selects for the jobs not finished yet,
// one request per member and MaxFetchMany jobs, and merges the answers as
// they come, until all are in, or ctx ends. A job whose members have all
// answered finishes at once; the others finish when a grace ends (see
// fetch).
func (f *fetchRound) run(ctx context.Context, pick func(o int) bool) {
	groups := map[int][]int{}
	for i, j := range f.jobs {
		if f.done[i] || f.merged[i] != nil {
			continue // answered by a nearer member
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
		o   int
		idx []int
	}
	var calls []call
	pending := make([]int, len(f.jobs)) // requests still out per job
	for o, idx := range groups {
		for chunk := range slices.Chunk(idx, transport.MaxFetchMany) {
			for _, i := range chunk {
				pending[i]++
			}
			calls = append(calls, call{o, chunk})
		}
	}
	// Buffered for every answer, so callers left behind at the deadline
	// never block.
	answers := make(chan memberAnswer, len(calls))
	for _, cl := range calls {
		if !f.c.goOwned(func() { answers <- memberAnswer{cl.o, cl.idx, f.askMany(ctx, f.v.DataAddrs[cl.o], cl.idx)} }) {
			answers <- memberAnswer{o: cl.o, idx: cl.idx}
		}
	}
	// short follows an answer from a member that held the swarm before;
	// long any other, so one member that cannot be reached does not leave
	// the readers with nothing.
	var short, long <-chan time.Time
	for range calls {
		select {
		case a := <-answers:
			for k, i := range a.idx {
				pending[i]--
				if a.reps != nil {
					f.merged[i] = mergeReplies(f.merged[i], &a.reps[k], f.c.cfg.ReadMaxPeers)
					if f.c.heldBefore(f.v, f.jobs[i].ih, a.o) {
						f.held[i] = true
					}
				}
				switch {
				case f.merged[i] == nil:
				case pending[i] == 0:
					f.finish(i)
				case size(f.merged[i].Counts) == 0:
					// An owner that has just gained the swarm may answer
					// first, with a part of it; wait for the others.
				case f.held[i]:
					if short == nil {
						short = time.After(min(f.c.cfg.ReadTimeout/5, 5*time.Millisecond))
					}
				case long == nil:
					long = time.After(f.c.cfg.ReadTimeout / 2)
				}
			}
		case <-short:
			for i := range f.jobs {
				if f.merged[i] != nil && f.held[i] {
					f.finish(i)
				}
			}
			short = nil
		case <-long:
			for i := range f.jobs {
				if f.merged[i] != nil {
					f.finish(i)
				}
			}
			long = nil
		case <-ctx.Done():
			return
		}
	}
}

// askMany fetches the swarms of jobs idx from the member at addr, one
// reply per job in order, or nil if it did not answer. A member that does
// not know FetchManyRequest (an older version, during a rolling upgrade)
// is asked one swarm at a time.
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
	j := &f.jobs[i]
	best := f.merged[i]
	if best != nil && j.own {
		// An owner asks others only while its own copy may lack part of
		// the swarm; what it holds (the writes forwarded to it since it
		// gained the swarm) belongs in the answer too.
		best = mergeReplies(best, f.c.localReply(j.ih, f.c.cfg.ReadMaxPeers), f.c.cfg.ReadMaxPeers)
	}
	var snap *snapshot
	if best != nil {
		at := f.c.clock.Now()
		if size(best.Counts) == 0 {
			// An empty swarm is most often one whose first announce is
			// still on its way to the owners; keep the answer briefly so
			// the peer shows up soon after it lands.
			at = at.Add(-f.c.cfg.ReadCacheTTL + min(f.c.cfg.ReadCacheTTL, emptyTTL))
		}
		snap = newSnapshot(best, at)
	}
	f.c.cache.finish(j.ih, j.e, snap)
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

// with returns a snapshot of the union of s and r, taken when s was.
func (s *snapshot) with(r *transport.FetchReply, maxPerFamily int) *snapshot {
	own := &transport.FetchReply{Counts: s.counts}
	for _, f := range s.fams {
		for i, p := range f.peers {
			own.Peers = append(own.Peers, transport.SwarmPeer{Peer: p, Seeder: i < f.seeders})
		}
	}
	return newSnapshot(mergeReplies(own, r, maxPerFamily), s.at)
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
	snap *snapshot // last answer; guarded by the shard's mutex
	fl   *flight   // the fetch in flight, or nil
}

// flight is one fetch of a swarm, shared by every reader waiting on it.
type flight struct {
	done    chan struct{} // closed when the fetch ends
	started time.Time
	// snap is what the fetch delivered (nil: nothing); written once,
	// before done is closed, and read only after.
	snap *snapshot
}

func (rc *readCache) init() {
	for i := range rc.shards {
		rc.shards[i].m = map[bittorrent.InfoHash]*cacheEntry{}
	}
}

func (rc *readCache) shard(ih bittorrent.InfoHash) *cacheShard {
	return &rc.shards[ih[0]%byte(len(rc.shards))]
}

// lookup returns a ticket for ih and whether the caller must start a
// fetch. A fresh snapshot means no fetch (the ticket holds it); so does a
// fetch in flight, which the ticket's flight lets the caller wait on.
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
	if e.fl != nil {
		return &cacheEntry{fl: e.fl}, false
	}
	e.fl = &flight{done: make(chan struct{}), started: now}
	return &cacheEntry{fl: e.fl}, true
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
// its waiters, who find the result on their tickets even if the cache has
// been cleared since.
func (rc *readCache) finish(ih bittorrent.InfoHash, ticket *cacheEntry, snap *snapshot) {
	fl := ticket.fl
	fl.snap = snap
	sh := rc.shard(ih)
	sh.mu.Lock()
	if e := sh.m[ih]; e != nil && e.fl == fl {
		if snap != nil {
			e.snap = snap
		}
		e.fl = nil
	}
	sh.mu.Unlock()
	close(fl.done)
}

// clear forgets every snapshot; fetches in flight still wake their waiters.
func (rc *readCache) clear() {
	for i := range rc.shards {
		sh := &rc.shards[i]
		sh.mu.Lock()
		for ih, e := range sh.m {
			if e.fl == nil {
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
			if e.fl == nil && (e.snap == nil || now.Sub(e.snap.at) > maxAge) {
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
