package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// BenchmarkHandoffPlan is a pass's decision for one swarm after a join:
// both views' owners, the pusher and the new owners.
func BenchmarkHandoffPlan(b *testing.B) {
	view := func(n int) *ring.View {
		infos := make([]ring.NodeInfo, n)
		for i := range infos {
			name := fmt.Sprintf("node-%03d", i)
			infos[i] = ring.NodeInfo{Member: ring.Member{Name: name, Zone: fmt.Sprint(i % 3)}, DataAddr: name, Boot: "1"}
		}
		v, err := ring.NewView(infos, "node-000", 3, ring.Options{}, 1)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	keys := make([]bittorrent.InfoHash, 1<<16)
	for i := range keys {
		keys[i] = bittorrent.InfoHash{byte(i), byte(i >> 8), 0xbe, 0x4c}
	}
	for _, n := range []int{3, 10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			p := newHandoffPlan(handoffState{baseline: view(n)}, view(n+1), time.Unix(0, 0))
			moved := 0
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				moved += len(p.swarm(keys[i&(len(keys)-1)]).to)
				i++
			}
			if moved == 0 {
				b.Fatal("a join moved nothing")
			}
		})
	}
}
