package loadgen

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// subBits sets the histogram's precision: each power of two is split into
// 1<<subBits buckets, so a recorded value is known within 1/128 (0.8%).
const subBits = 7

const (
	subCount = 1 << subBits
	// nBuckets covers every uint64: exponents 0..63-subBits, each adding
	// subCount buckets to the 2*subCount of exponent 0.
	nBuckets = (64-subBits-1)*subCount + 2*subCount
)

// Histogram counts durations in log-spaced buckets, HDR style: memory is
// fixed (about 59 KiB) however many values are recorded, and percentiles
// are exact to within 1/128 of the value. Safe for concurrent use; Record
// takes no lock.
type Histogram struct {
	counts [nBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	max    atomic.Uint64
}

// bucket returns the index of v: values below 2*subCount have a bucket
// each; above, v keeps its top subBits+1 bits.
func bucket(v uint64) int {
	e := max(bits.Len64(v)-subBits-1, 0)
	return e*subCount + int(v>>e)
}

// bucketHigh returns the largest value that falls in bucket i.
func bucketHigh(i int) uint64 {
	if i < 2*subCount {
		return uint64(i)
	}
	e := i/subCount - 1
	m := uint64(i - e*subCount)
	return (m+1)<<e - 1
}

// Record adds one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucket(v)].Add(1)
	h.total.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Merge adds the counts of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c > 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	h.sum.Add(o.sum.Load())
	for {
		m, v := h.max.Load(), o.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count returns the number of values recorded.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max returns the largest value recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Mean returns the mean of the values recorded, zero if none.
func (h *Histogram) Mean() time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Quantile returns the value at or below which a fraction q (0..1) of the
// recorded values fall, as the top of its bucket but never above Max; zero
// if nothing was recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	// rank is the 1-based position of the wanted value in sorted order.
	rank := uint64(q*float64(n) + 0.5)
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), h.max.Load()))
		}
	}
	return h.Max()
}
