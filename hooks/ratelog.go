package hooks

import (
	"sync/atomic"
	"time"
)

// RateLog decides when a repeated warning may be logged again, so a flood of
// identical events (queue full, owner unreachable) yields one line per
// period carrying the number of events since the last line. Safe for
// concurrent use; the zero value logs every event.
type RateLog struct {
	period     time.Duration
	next       atomic.Int64 // unix nanoseconds before which nothing is logged
	suppressed atomic.Uint64
}

// NewRateLog returns a RateLog that allows one line per period.
func NewRateLog(period time.Duration) *RateLog { return &RateLog{period: period} }

// Allow reports whether to log now and, if so, how many events happened
// since the previous line, this one included.
func (r *RateLog) Allow() (uint64, bool) {
	return r.AllowAt(time.Now())
}

// AllowAt is Allow with the current time passed in.
func (r *RateLog) AllowAt(now time.Time) (uint64, bool) {
	r.suppressed.Add(1)
	n := now.UnixNano()
	next := r.next.Load()
	if n < next || !r.next.CompareAndSwap(next, n+int64(r.period)) {
		return 0, false
	}
	return r.suppressed.Swap(0), true
}
