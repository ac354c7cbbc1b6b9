package ring

import (
	"fmt"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// benchLayouts are the topologies the benchmarks run: a flat cluster, three
// zones, and three datacenters with an owner in each.
var benchLayouts = []struct {
	name     string
	dcs      int
	zones    int
	everyDC  bool
	replicas int
}{
	{"flat", 1, 1, false, 3},
	{"zones", 1, 3, false, 3},
	{"everydc", 3, 2, true, 2},
}

// BenchmarkOwners looks up random infohashes; the key set is larger than
// the caches so the figure includes the memory misses a busy node sees.
func BenchmarkOwners(b *testing.B) {
	keys := randomInfoHashes(1, 1<<16)
	for _, n := range []int{3, 10, 100} {
		for _, l := range benchLayouts {
			b.Run(fmt.Sprintf("nodes=%d/%s", n, l.name), func(b *testing.B) {
				r := mustNew(b, cluster(n, l.dcs, l.zones), Options{EveryDatacenter: l.everyDC})
				dst := make([]int, 0, r.OwnerCount(l.replicas))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					dst = r.Owners(keys[i&(len(keys)-1)], l.replicas, dst[:0])
					i++
				}
			})
		}
	}
}

// BenchmarkNew is the cost of a membership change: hashing and sorting
// every vnode.
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{3, 10, 100} {
		ms := cluster(n, 1, 3)
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				mustNew(b, ms, Options{})
			}
		})
	}
}

var sinkOwners []int

// BenchmarkOwnersSequential repeats one key: the cache-hot cost of the
// walk itself, without memory misses.
func BenchmarkOwnersSequential(b *testing.B) {
	var ih bittorrent.InfoHash
	r := mustNew(b, cluster(100, 1, 3), Options{})
	dst := make([]int, 0, 3)
	b.ReportAllocs()
	for b.Loop() {
		dst = r.Owners(ih, 3, dst[:0])
	}
	sinkOwners = dst
}
