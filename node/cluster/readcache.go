package cluster

import (
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// readCache holds fetched swarms. Each entry carries at most one fetch in
// flight, which every reader of that swarm waits on.
//
// With read_cache_ttl 0 no copy is kept for later reads; a copy is held
// only for the reads a prefetch announced (pending): a batch of datagrams
// prefetches its swarms, and its reads, which come one after the other,
// take the copy the prefetch fetched, the last of them removing it. A
// copy that old is not handed out (handFor): a read that comes later
// fetches again.
type readCache struct {
	shards [64]cacheShard
	// ttl is read_cache_ttl; handFor bounds the age of a copy held for
	// the reads of a prefetch, with ttl 0.
	ttl, handFor time.Duration
}

type cacheShard struct {
	mu sync.Mutex
	m  map[bittorrent.InfoHash]*cacheEntry
}

type cacheEntry struct {
	snap *snapshot // last answer; guarded by the shard's mutex
	fl   *flight   // the fetch in flight, or nil
	// pending counts the reads prefetches announced that have not come
	// yet, with ttl 0; guarded by the shard's mutex.
	pending int
	// handed is set on a ticket whose snap is a copy held for a
	// prefetch's reads, not a cached one.
	handed bool
}

// flight is one fetch of a swarm, shared by every reader waiting on it.
type flight struct {
	done    chan struct{} // closed when the fetch ends
	started time.Time
	// snap is what the fetch delivered (nil: nothing); written once,
	// before done is closed, and read only after.
	snap *snapshot
}

func (rc *readCache) init(ttl, handFor time.Duration) {
	rc.ttl, rc.handFor = ttl, handFor
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
// prefetch says the caller is a prefetch, whose reads come later; a read
// takes a copy held for such reads (the ticket is marked handed).
func (rc *readCache) lookup(ih bittorrent.InfoHash, now time.Time, prefetch bool) (*cacheEntry, bool) {
	sh := rc.shard(ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[ih]
	if e == nil {
		e = &cacheEntry{}
		sh.m[ih] = e
	}
	if e.snap != nil && now.Sub(e.snap.at) < rc.ttl {
		return &cacheEntry{snap: e.snap}, false
	}
	if rc.ttl == 0 {
		switch {
		case prefetch:
			e.pending++
		case e.pending > 0:
			e.pending--
			if e.snap != nil && now.Sub(e.snap.at) < rc.handFor {
				snap := e.snap
				if e.pending == 0 && e.fl == nil {
					delete(sh.m, ih)
				}
				return &cacheEntry{snap: snap, handed: true}, false
			}
		}
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
// been cleared since. With ttl 0 the result is kept only for the reads
// prefetches announced; without any, the entry goes.
func (rc *readCache) finish(ih bittorrent.InfoHash, ticket *cacheEntry, snap *snapshot) {
	fl := ticket.fl
	fl.snap = snap
	sh := rc.shard(ih)
	sh.mu.Lock()
	if e := sh.m[ih]; e != nil && e.fl == fl {
		switch {
		case rc.ttl == 0 && e.pending == 0:
			delete(sh.m, ih)
		case snap != nil:
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

// held returns the swarms and peers the cache holds copies of, fresh or
// stale: the memory a node spends on swarms it does not own.
func (rc *readCache) held() (swarms, peers int) {
	for i := range rc.shards {
		sh := &rc.shards[i]
		sh.mu.Lock()
		for _, e := range sh.m {
			if e.snap != nil {
				swarms++
				peers += len(e.snap.fams[0].peers) + len(e.snap.fams[1].peers)
			}
		}
		sh.mu.Unlock()
	}
	return swarms, peers
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
			keep := max(100*c.cfg.ReadCacheTTL, 10*time.Second)
			if c.cfg.ReadCacheTTL == 0 {
				// Copies held for reads that never came.
				keep = c.cache.handFor
			}
			c.cache.expire(c.clock.Now(), keep)
		}
	}
}
