// Package ratelog decides when a repeated warning may be logged again, so a
// flood of identical events (queue full, owner unreachable, a peer sending
// garbage) yields one line per period carrying the number of events it
// stands for. It imports nothing of Karuta's, so every layer can share it.
package ratelog

import (
	"sync"
	"sync/atomic"
	"time"
)

// Limiter allows one line per period for one kind of event. Safe for
// concurrent use; the zero value logs every event.
type Limiter struct {
	period     time.Duration
	next       atomic.Int64 // unix nanoseconds before which nothing is logged
	suppressed atomic.Uint64
}

// New returns a Limiter that allows one line per period.
func New(period time.Duration) *Limiter { return &Limiter{period: period} }

// Allow reports whether to log now and, if so, how many events happened
// since the previous line, this one included.
func (r *Limiter) Allow() (uint64, bool) {
	return r.AllowAt(time.Now())
}

// AllowAt is Allow with the current time passed in.
func (r *Limiter) AllowAt(now time.Time) (uint64, bool) {
	r.suppressed.Add(1)
	n := now.UnixNano()
	next := r.next.Load()
	if n < next || !r.next.CompareAndSwap(next, n+int64(r.period)) {
		return 0, false
	}
	return r.suppressed.Swap(0), true
}

// Keyed is a Limiter per kind of event, for a source whose messages say
// their kind themselves (a library's log lines, say). It remembers at most
// maxKinds kinds and forgets them all when a new one would pass that, so
// messages that differ every time cannot grow it without bound. Safe for
// concurrent use.
type Keyed struct {
	period   time.Duration
	maxKinds int
	mu       sync.Mutex
	kinds    map[string]*Limiter
}

// NewKeyed returns a Keyed limiter allowing one line per kind per period.
func NewKeyed(period time.Duration, maxKinds int) *Keyed {
	return &Keyed{period: period, maxKinds: max(maxKinds, 1), kinds: map[string]*Limiter{}}
}

// AllowAt is Limiter.AllowAt for the events of one kind.
func (k *Keyed) AllowAt(kind string, now time.Time) (uint64, bool) {
	k.mu.Lock()
	l := k.kinds[kind]
	if l == nil {
		if len(k.kinds) >= k.maxKinds {
			clear(k.kinds)
		}
		l = New(k.period)
		k.kinds[kind] = l
	}
	k.mu.Unlock()
	return l.AllowAt(now)
}
