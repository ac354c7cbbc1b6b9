package loadgen

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 257, 511, 512, 1 << 20, 1<<20 + 12345, 1<<63 - 1, 1<<64 - 1} {
		i := bucket(v)
		if i < prev || i >= nBuckets {
			t.Fatalf("bucket(%d) = %d, previous %d, limit %d", v, i, prev, nBuckets)
		}
		prev = i
		if hi := bucketHigh(i); hi < v || (v >= 256 && float64(hi-v) > float64(v)/subCount) {
			t.Errorf("bucketHigh(bucket(%d)) = %d: not within 1/%d above", v, hi, subCount)
		}
		if i > 0 && bucketHigh(i-1) >= v {
			t.Errorf("value %d also fits bucket %d below its own", v, i-1)
		}
	}
}

func TestQuantiles(t *testing.T) {
	tests := []struct {
		name   string
		values func() []time.Duration
		q      float64
		want   time.Duration
	}{
		{"1..1000us p50", seq(1000, time.Microsecond), 0.50, 500 * time.Microsecond},
		{"1..1000us p99", seq(1000, time.Microsecond), 0.99, 990 * time.Microsecond},
		{"1..1000us p99.9", seq(1000, time.Microsecond), 0.999, 999 * time.Microsecond},
		{"1..1000us p100", seq(1000, time.Microsecond), 1, 1000 * time.Microsecond},
		{"single value", func() []time.Duration { return []time.Duration{42 * time.Millisecond} }, 0.5, 42 * time.Millisecond},
		{"small exact", seq(100, 1), 0.5, 50},
		{"bimodal p99 sees the tail", func() []time.Duration {
			v := make([]time.Duration, 0, 1000)
			for i := range 1000 {
				if i%50 == 0 {
					v = append(v, 100*time.Millisecond)
				} else {
					v = append(v, time.Millisecond)
				}
			}
			rand.Shuffle(len(v), func(i, j int) { v[i], v[j] = v[j], v[i] })
			return v
		}, 0.99, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, v := range tt.values() {
				h.Record(v)
			}
			got := h.Quantile(tt.q)
			if diff := got - tt.want; diff < 0 || float64(diff) > float64(tt.want)/subCount {
				t.Errorf("Quantile(%v) = %v, want %v (within 1/%d above)", tt.q, got, tt.want, subCount)
			}
		})
	}
}

func TestHistogramEmptyAndMerge(t *testing.T) {
	var a, b Histogram
	if a.Quantile(0.99) != 0 || a.Mean() != 0 || a.Max() != 0 {
		t.Error("empty histogram does not report zeros")
	}
	a.Record(time.Millisecond)
	b.Record(3 * time.Millisecond)
	b.Record(-time.Second)
	a.Merge(&b)
	if a.Count() != 3 || a.Max() != 3*time.Millisecond || a.Mean() != 4*time.Millisecond/3 {
		t.Errorf("merged: count %d max %v mean %v", a.Count(), a.Max(), a.Mean())
	}
}

func seq(n int, unit time.Duration) func() []time.Duration {
	return func() []time.Duration {
		v := make([]time.Duration, n)
		for i := range v {
			v[i] = time.Duration(i+1) * unit
		}
		return v
	}
}
