package udp

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/frontends"
)

// limiterShards splits the table so that readers rarely wait on one lock.
const limiterShards = 16

// connectLimiter is a token bucket per source address for connect
// requests: the one request that needs no connection ID, so the only one a
// flood from a single source can send at full rate and have answered.
// Connects never reach the hook chain (where the rate_limit hook works), so
// the limit lives here. It holds at most a fixed number of buckets; a full
// table forgets the bucket nearest to full, which at worst forgives that
// source the tokens it spent. Safe for concurrent use.
type connectLimiter struct {
	interval int64 // nanoseconds per token
	depth    int64 // burst × interval: how far past now a bucket's full time may be
	perShard int
	seed     maphash.Seed // keys the shard choice, so sources cannot pick one
	shards   [limiterShards]limiterShard
}

// limiterShard holds, for each source seen lately, the instant its bucket
// is full again (the "virtual scheduling" token bucket: one integer per
// source). A source without an entry has a full bucket, so an entry whose
// instant has passed carries nothing and may be dropped.
type limiterShard struct {
	mu        sync.Mutex
	full      map[netip.Addr]int64
	lastSweep int64
	_         [40]byte // keeps shards on separate cache lines
}

// newConnectLimiter returns a limiter of burst connects refilled at rate a
// second per source, or nil when rate is 0 (no limit).
func newConnectLimiter(rate float64, burst, maxSources int) *connectLimiter {
	if rate == 0 {
		return nil
	}
	l := &connectLimiter{
		interval: max(int64(float64(time.Second)/rate), 1),
		perShard: max(maxSources/limiterShards, 1),
		seed:     maphash.MakeSeed(),
	}
	l.depth = int64(burst) * l.interval
	for i := range l.shards {
		l.shards[i].full = make(map[netip.Addr]int64)
	}
	return l
}

// allow takes a token from ip's bucket at now and reports whether there
// was one. A nil limiter allows everything.
func (l *connectLimiter) allow(ip netip.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	k := frontends.Source(ip)
	t := now.UnixNano()
	s := &l.shards[maphash.Comparable(l.seed, k)%limiterShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	full, ok := s.full[k]
	if !ok {
		if len(s.full) >= l.perShard {
			s.makeRoom(t, l.perShard)
		}
		s.full[k] = t + l.interval
		return true
	}
	next := max(full, t) + l.interval
	if next-t > l.depth {
		return false
	}
	s.full[k] = next
	return true
}

// makeRoom frees an entry in a full shard: every refilled bucket if the
// shard was last swept more than a second ago, else (or if none had
// refilled) the bucket among a few that refills first, so the table stays
// below limit. Called with s.mu held.
func (s *limiterShard) makeRoom(now int64, limit int) {
	if now-s.lastSweep > int64(time.Second) {
		s.lastSweep = now
		for k, full := range s.full {
			if full <= now {
				delete(s.full, k)
			}
		}
		if len(s.full) < limit {
			return
		}
	}
	var victim netip.Addr
	var soonest int64
	n := 0
	for k, full := range s.full { // map order starts at a random entry
		if n == 0 || full < soonest {
			victim, soonest = k, full
		}
		if n++; n == 8 {
			break
		}
	}
	delete(s.full, victim)
}

// sources returns the number of buckets held.
func (l *connectLimiter) sources() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.full)
		s.mu.Unlock()
	}
	return n
}
