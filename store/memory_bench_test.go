package store_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

// benchHash spreads swarm numbers over the infohash space like SHA-1 does.
func benchHash(i int) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	x := uint64(i)*0x9e3779b97f4a7c15 + 1
	for o := 0; o < len(ih); o += 8 {
		x ^= x >> 31
		x *= 0xbf58476d1ce4e5b9
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], x)
		copy(ih[o:], b[:])
	}
	return ih
}

// benchAddr returns the address of peer number i of the given family,
// each in a network of its own (an IPv6 /64 is one subscriber's).
func benchAddr(i int, v6 bool) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 4: byte(i >> 24), 5: byte(i >> 16), 6: byte(i >> 8), 7: byte(i), 15: 1}), 6881)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(10 + i>>24), byte(i >> 16), byte(i >> 8), byte(i)}), 6881)
}

// fill puts perSwarm peers into each of swarms swarms, a third of them
// seeders, in batches through one reused buffer so the benchmark's own
// garbage does not show in heap measurements.
func fill(s store.Store, swarms, perSwarm int, v6 bool) {
	batch := make([]bittorrent.Change, 0, 1024)
	for sw := range swarms {
		ih := benchHash(sw)
		for p := range perSwarm {
			i := sw*perSwarm + p
			c := bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: i%3 == 0}
			c.Peer.Addr = benchAddr(i, v6)
			binary.BigEndian.PutUint64(c.Peer.ID[12:], uint64(i))
			copy(c.Peer.ID[:], "-KB0001-")
			batch = append(batch, c)
			if len(batch) == cap(batch) {
				s.Apply(batch)
				batch = batch[:0]
			}
		}
	}
	s.Apply(batch)
}

func benchMemory(b *testing.B) *store.Memory {
	b.Helper()
	m, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkApply measures writes to a store of 100k peers in 10k swarms:
// re-announces one change per call and in batches of 256 as the swarm
// writer sends them, and a peer joining and leaving a swarm.
func BenchmarkApply(b *testing.B) {
	const swarms, perSwarm = 10_000, 10
	m := benchMemory(b)
	fill(m, swarms, perSwarm, false)
	changes := make([]bittorrent.Change, swarms*perSwarm)
	for i := range changes {
		changes[i] = bittorrent.Change{InfoHash: benchHash(i / perSwarm), Peer: bittorrent.Peer{Addr: benchAddr(i, false)}, Op: bittorrent.OpPut, Seeder: i%3 == 0}
	}
	// Visit peers in an order that jumps between swarms, like real traffic.
	order := func(k int) int { return (k * 7919) % len(changes) }

	b.Run("reannounce", func(b *testing.B) {
		b.ReportAllocs()
		for k := 0; b.Loop(); k++ {
			i := order(k)
			m.Apply(changes[i : i+1])
		}
	})
	b.Run("batch256", func(b *testing.B) {
		batch := make([]bittorrent.Change, 256)
		b.ReportAllocs()
		for k := 0; b.Loop(); k++ {
			for j := range batch {
				batch[j] = changes[order(k*256+j)]
			}
			m.Apply(batch)
		}
	})
	b.Run("join-leave", func(b *testing.B) {
		b.ReportAllocs()
		for k := 0; b.Loop(); k++ {
			c := changes[order(k)]
			c.Peer.Addr = benchAddr(swarms*perSwarm+1, false)
			m.Apply([]bittorrent.Change{c})
			c.Op = bittorrent.OpRemove
			m.Apply([]bittorrent.Change{c})
		}
	})
}

// BenchmarkAnnouncePeers measures choosing 50 peers for a leecher in the
// swarm, with a reused buffer.
func BenchmarkAnnouncePeers(b *testing.B) {
	for _, size := range []int{10, 10_000, 1_000_000} {
		b.Run(fmt.Sprintf("swarm=%d", size), func(b *testing.B) {
			m := benchMemory(b)
			fill(m, 1, size, false)
			ih, self := benchHash(0), benchAddr(1, false) // peer 1 leeches
			dst := make([]bittorrent.Peer, 0, 50)
			b.ReportAllocs()
			for b.Loop() {
				dst, _, _ = m.AnnouncePeers(ih, self, false, 50, dst[:0])
			}
			if want := min(50, size-1); len(dst) != want {
				b.Fatalf("got %d peers, want %d", len(dst), want)
			}
		})
	}
}

// BenchmarkGC measures collections over 1M IPv4 peers in 100k swarms: a
// scan that finds nothing expired, and one that removes everything.
func BenchmarkGC(b *testing.B) {
	const swarms, perSwarm = 100_000, 10
	peers := float64(swarms * perSwarm)
	b.Run("scan", func(b *testing.B) {
		m := benchMemory(b)
		fill(m, swarms, perSwarm, false)
		b.ReportAllocs()
		for b.Loop() {
			if n := m.GC(time.Now()); n != 0 {
				b.Fatalf("removed %d", n)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/peers, "ns/peer")
	})
	b.Run("expire-all", func(b *testing.B) {
		m := benchMemory(b)
		b.ReportAllocs()
		var took time.Duration
		for b.Loop() {
			b.StopTimer()
			fill(m, swarms, perSwarm, false)
			b.StartTimer()
			start := time.Now()
			if n := m.GC(time.Now().Add(time.Hour)); n != int(peers) {
				b.Fatalf("removed %d, want %d", n, int(peers))
			}
			took += time.Since(start)
		}
		b.ReportMetric(float64(took.Nanoseconds())/float64(b.N)/peers, "ns/peer")
	})
}

// BenchmarkMemory measures the heap a store holds per peer, everything
// included: shards, swarm tables, swarms and records. The targets are 1M
// IPv4 peers in 100k swarms (10 each, a third seeding) and a swarm of one
// IPv4 peer; the others show how the cost moves with swarm size and
// family (and size the default limits: see store.swarmCost).
func BenchmarkMemory(b *testing.B) {
	tests := []struct {
		name             string
		swarms, perSwarm int
		v6               bool
	}{
		{"ipv4", 100_000, 10, false},
		{"ipv6", 100_000, 10, true},
		{"ipv4-one-peer-swarms", 1_000_000, 1, false},
		{"ipv6-one-peer-swarms", 1_000_000, 1, true},
		{"ipv4-big-swarms", 10, 100_000, false},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			var perPeer float64
			b.ReportAllocs()
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				m, err := store.NewMemory(store.DefaultConfig(), nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				fill(m, tt.swarms, tt.perSwarm, tt.v6)
				runtime.GC()
				runtime.ReadMemStats(&after)
				perPeer = float64(after.HeapAlloc-before.HeapAlloc) / float64(tt.swarms*tt.perSwarm)
				runtime.KeepAlive(m)
				m.Close()
			}
			b.ReportMetric(perPeer, "B/peer")
		})
	}
}

// BenchmarkGCPause measures the Go collector's stop-the-world pauses with
// 10M IPv4 peers stored (1M swarms of 10), and with an empty store under
// the same load as the baseline that shows what the machine adds. Announces
// keep all but one core busy and the store's expiry scan runs ten times a
// second. Each iteration is one full collection, one started every half
// second; the pauses are read from
// runtime/metrics, whose histogram buckets make the quantiles upper bounds
// within a few percent. A pause includes the wait for every running
// goroutine to stop, so it also shows how promptly the OS (and, on a VM,
// the hypervisor) runs the process's threads.
func BenchmarkGCPause(b *testing.B) {
	const swarms, perSwarm = 1_000_000, 10
	for _, tt := range []struct {
		name string
		fill bool
	}{{"peers=0", false}, {"peers=10M", true}} {
		b.Run(tt.name, func(b *testing.B) {
			m := benchMemory(b)
			if tt.fill {
				fill(m, swarms, perSwarm, false)
			}
			stop := loadStore(m, swarms*perSwarm, perSwarm, tt.fill)
			defer stop()
			measureGCPauses(b)
			runtime.KeepAlive(m)
		})
	}
}

// loadStore asks m for peers on all but one core, re-announcing each peer
// first when write is set (an empty store is kept empty), and scans it for
// expired peers ten times a second, until the returned func is called.
func loadStore(m *store.Memory, peers, perSwarm int, write bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range max(1, runtime.GOMAXPROCS(0)-1) {
		wg.Go(func() {
			dst := make([]bittorrent.Peer, 0, 50)
			ch := make([]bittorrent.Change, 1)
			for k := w; ; k++ {
				select {
				case <-done:
					return
				default:
				}
				i := (k * 7919) % peers
				ch[0] = bittorrent.Change{InfoHash: benchHash(i / perSwarm), Op: bittorrent.OpPut, Seeder: i%3 == 0}
				ch[0].Peer.Addr = benchAddr(i, false)
				if write {
					m.Apply(ch)
				}
				dst, _, _ = m.AnnouncePeers(ch[0].InfoHash, ch[0].Peer.Addr, false, 50, dst[:0])
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				m.GC(time.Now())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// measureGCPauses runs one collection per iteration, starting one every
// half second so runs of different heaps last as long and meet as many of
// the machine's hiccups, and reports quantiles of the stop-the-world pauses
// they caused, and of the part of each pause spent waiting for running
// goroutines to stop (which grows when the OS is slow to run a thread, not
// with the heap).
func measureGCPauses(b *testing.B) {
	sample := []metrics.Sample{{Name: "/sched/pauses/total/gc:seconds"}, {Name: "/sched/pauses/stopping/gc:seconds"}}
	metrics.Read(sample)
	before := [2][]uint64{
		slices.Clone(sample[0].Value.Float64Histogram().Counts),
		slices.Clone(sample[1].Value.Float64Histogram().Counts),
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for b.Loop() {
		runtime.GC()
		<-tick.C
	}
	metrics.Read(sample)

	// quantiles returns the p50, p99 and max of the pauses counted in
	// histogram h since before, as bucket upper bounds in microseconds.
	quantiles := func(h *metrics.Float64Histogram, before []uint64) (n uint64, q [3]float64) {
		counts := make([]uint64, len(h.Counts))
		for i := range counts {
			counts[i] = h.Counts[i] - before[i]
			n += counts[i]
		}
		for j, want := range []float64{0.5, 0.99, 1} {
			var seen uint64
			q[j] = math.Inf(1)
			for i, c := range counts {
				seen += c
				if float64(seen) >= want*float64(n) {
					q[j] = h.Buckets[i+1] * 1e6
					break
				}
			}
		}
		return n, q
	}
	n, total := quantiles(sample[0].Value.Float64Histogram(), before[0])
	if n == 0 {
		b.Fatal("no GC pauses recorded")
	}
	_, stopping := quantiles(sample[1].Value.Float64Histogram(), before[1])
	b.ReportMetric(float64(n)/float64(b.N), "pauses/GC")
	b.ReportMetric(total[0], "p50-pause-µs")
	b.ReportMetric(total[1], "p99-pause-µs")
	b.ReportMetric(total[2], "max-pause-µs")
	b.ReportMetric(stopping[1], "p99-stopping-µs")
}

// BenchmarkSwarmFile writes and reads the swarm file of 100,000 swarms of
// 10 IPv4 peers (a million peers), the cost of store.snapshot_file at
// every snapshot_interval and at start.
func BenchmarkSwarmFile(b *testing.B) {
	const swarms, perSwarm = 100_000, 10
	src, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	fill(src, swarms, perSwarm, false)
	var file bytes.Buffer
	if _, err := src.WriteSwarms(&file); err != nil {
		b.Fatal(err)
	}
	b.Run("Write", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(file.Len()))
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			if _, err := src.WriteSwarms(&buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Read", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(file.Len()))
		for b.Loop() {
			b.StopTimer()
			dst, err := store.NewMemory(store.DefaultConfig(), nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			st, err := dst.ReadSwarms(bytes.NewReader(file.Bytes()), time.Now())
			if err != nil || st.Peers != swarms*perSwarm {
				b.Fatalf("read %+v, %v", st, err)
			}
			b.StopTimer()
			dst.Close()
			b.StartTimer()
		}
	})
}

// BenchmarkScrapeAll lists 100,000 swarms, what a full scrape reads from
// one node's store.
func BenchmarkScrapeAll(b *testing.B) {
	const swarms = 100_000
	m, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	fill(m, swarms, 2, false)
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		_ = m.ScrapeAll(context.Background(), func(files []bittorrent.Scrape) error { n += len(files); return nil })
		if n != swarms {
			b.Fatalf("listed %d swarms, want %d", n, swarms)
		}
	}
}

// BenchmarkDigests lists the digests of 100,000 swarms of 10 IPv4 peers,
// what an anti-entropy pass reads from one node's store every
// repair_interval.
func BenchmarkDigests(b *testing.B) {
	const swarms, perSwarm = 100_000, 10
	m := benchMemory(b)
	fill(m, swarms, perSwarm, false)
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		m.Digests(func(batch []store.SwarmDigest) bool { n += len(batch); return true })
		if n != swarms {
			b.Fatalf("listed %d swarms, want %d", n, swarms)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(swarms*perSwarm), "ns/peer")
}
