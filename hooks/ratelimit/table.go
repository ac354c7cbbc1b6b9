package ratelimit

import (
	"sync"
)

// numShards splits a table so that requests from different clients rarely
// wait on the same lock. A power of two, so the shard is the top bits of a
// hash.
const (
	shardBits = 6
	numShards = 1 << shardBits
)

// evictSample is how many entries a full shard looks at to choose one to
// evict for a new key.
const evictSample = 8

// Key identifies a bucket: an address or a masked prefix, in its 16-byte
// form (IPv4 as IPv4-mapped IPv6).
type Key [16]byte

// bucket holds one token bucket as the instant, on the table's clock, at
// which it will be full again. A bucket that is full holds no information
// beyond "full", which is also what a missing entry means, so full buckets
// can be dropped at any time without changing any answer. It has capacity
// burst tokens and gains one every interval:
//
//	tokens(now) = burst - max(0, full-now)/interval
//
// Taking a token moves full one interval later. This is the token bucket
// in the "virtual scheduling" form, which needs one integer per client and
// no floating point.
type bucket = int64

// table is a bounded, sharded set of token buckets sharing one rate and
// burst. Safe for concurrent use.
type table struct {
	interval int64 // nanoseconds per token
	limit    int64 // burst*interval: how far ahead of now full may go
	perShard int   // entry cap of each shard
	shards   [numShards]shard
}

type shard struct {
	mu      sync.Mutex
	m       map[Key]bucket
	peak    int      // largest len(m) since the map was last rebuilt
	evicted uint64   // entries dropped at the cap before they were full
	_       [32]byte // one shard per 64-byte cache line
}

// newTable returns a table of buckets holding burst tokens and gaining
// rate tokens a second, with at most maxEntries buckets in all.
func newTable(rate float64, burst, maxEntries int) *table {
	t := &table{
		interval: max(int64(1e9/rate), 1),
		perShard: max(maxEntries/numShards, 1),
	}
	t.limit = int64(burst) * t.interval
	for i := range t.shards {
		t.shards[i].m = make(map[Key]bucket)
	}
	return t
}

// shardOf spreads keys over the shards. Subnet keys have long runs of zero
// bits, so both halves are mixed before the top bits are taken.
func shardOf(k *Key) int {
	var hi, lo uint64
	for i := range 8 {
		hi = hi<<8 | uint64(k[i])
		lo = lo<<8 | uint64(k[8+i])
	}
	h := hi*0x9e3779b97f4a7c15 ^ lo*0xc2b2ae3d27d4eb4f
	h ^= h >> 31
	h *= 0x94d049bb133111eb
	h ^= h >> 29
	return int(h >> (64 - shardBits))
}

// take removes a token from k's bucket at now (nanoseconds) and reports
// whether there was one.
func (t *table) take(k Key, now int64) bool {
	s := &t.shards[shardOf(&k)]
	s.mu.Lock()
	full, ok := s.m[k]
	if !ok {
		if len(s.m) >= t.perShard {
			s.evictOne(now)
		}
		s.m[k] = now + t.interval
		if n := len(s.m); n > s.peak {
			s.peak = n
		}
		s.mu.Unlock()
		return true
	}
	next := max(full, now) + t.interval
	if next-now > t.limit {
		s.mu.Unlock()
		return false
	}
	s.m[k] = next
	s.mu.Unlock()
	return true
}

// evictOne makes room for a new key in a shard at its cap. It looks at a
// few entries (map iteration starts at a random place) and drops the first
// that is full, or else the one that will be full soonest: the client it
// belonged to is forgiven the tokens it had spent. Called with s.mu held.
func (s *shard) evictOne(now int64) {
	var victim Key
	best := int64(0)
	n := 0
	for k, full := range s.m {
		if full <= now {
			delete(s.m, k)
			return
		}
		if n == 0 || full < best {
			victim, best = k, full
		}
		if n++; n == evictSample {
			break
		}
	}
	if n > 0 {
		delete(s.m, victim)
		s.evicted++
	}
}

// sweep drops the buckets that are full at now, and rebuilds a map that
// has shrunk to a quarter of its peak, since Go maps keep their largest
// size. It returns the entries left and the count of early evictions so
// far.
func (t *table) sweep(now int64) (entries int, evicted uint64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, full := range s.m {
			if full <= now {
				delete(s.m, k)
			}
		}
		if n := len(s.m); s.peak >= 1024 && n < s.peak/4 {
			m := make(map[Key]bucket, n)
			for k, v := range s.m {
				m[k] = v
			}
			s.m, s.peak = m, n
		}
		entries += len(s.m)
		evicted += s.evicted
		s.mu.Unlock()
	}
	return entries, evicted
}

// len returns the number of buckets held.
func (t *table) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
