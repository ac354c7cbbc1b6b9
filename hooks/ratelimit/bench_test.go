package ratelimit

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkAllow measures the per-request cost with both limits on: a
// repeat client, clients spread over 64k addresses from many goroutines,
// and a stream of new addresses into full tables, where each one evicts.
func BenchmarkAllow(b *testing.B) {
	// newBench builds a hook without a sweeper on the clock now, or on the
	// real clock.
	newBench := func(b *testing.B, maxEntries int, now func() int64) *Hook {
		cfg := DefaultConfig()
		cfg.PerIP = Limit{Rate: 1e6, Burst: 1e6}
		cfg.PerSubnet = Limit{Rate: 1e6, Burst: 1e6}
		cfg.MaxEntries = maxEntries
		if now == nil {
			start := time.Now()
			now = func() int64 { return int64(time.Since(start)) }
		}
		h, err := newHook(cfg, prometheus.NewRegistry(), now)
		if err != nil {
			b.Fatal(err)
		}
		return h
	}
	addrs := make([]netip.Addr, 1<<16)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
	}
	a := netip.MustParseAddr("192.0.2.1")
	b.Run("one_ip_allowed", func(b *testing.B) {
		var ns int64
		h := newBench(b, 1<<20, func() int64 { ns += 1000; return ns }) // a token per call
		b.ReportAllocs()
		for b.Loop() {
			if h.allow(a) != nil {
				b.Fatal("refused")
			}
		}
	})
	b.Run("one_ip_refused", func(b *testing.B) {
		h := newBench(b, 1<<20, func() int64 { return 0 })
		spent := 0
		for h.allow(a) == nil {
			spent++
		}
		if spent == 0 {
			b.Fatal("the first request was refused; want a burst to spend")
		}
		b.ReportAllocs()
		for b.Loop() {
			_ = h.allow(a)
		}
	})
	b.Run("64k_ips_parallel", func(b *testing.B) {
		h := newBench(b, 1<<20, nil)
		var seed atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := seed.Add(7919)
			for pb.Next() {
				_ = h.allow(addrs[i&0xffff])
				i++
			}
		})
	})
	b.Run("new_ips_at_cap", func(b *testing.B) {
		h := newBench(b, 1024, nil)
		base := netip.MustParseAddr("2001:db8::").As16()
		var i uint32
		b.ReportAllocs()
		for b.Loop() {
			k := base
			k[4], k[5], k[6], k[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
			_ = h.allow(netip.AddrFrom16(k))
			i++
		}
	})
}
