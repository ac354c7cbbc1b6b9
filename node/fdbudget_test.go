package node

import (
	"testing"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// TestPlanDescriptors pins the split of the descriptor limit: the
// frontends and the operations listener keep what their caps allow plus
// a margin, the cluster listeners get at most a quarter each of the rest,
// and never more than their defaults.
func TestPlanDescriptors(t *testing.T) {
	for _, tc := range []struct {
		name         string
		limit        uint64
		http         int
		data, gossip int
		tight        bool
	}{
		{"unknown limit", 0, 10000, transport.DefaultMaxPending, transport.DefaultGossipStreams, false},
		{"a large limit", 1 << 20, 10000, transport.DefaultMaxPending, transport.DefaultGossipStreams, false},
		{"the issue's 20000", 20000, 10000, transport.DefaultMaxPending, transport.DefaultGossipStreams, false},
		{"http off", 4096, 0, 832, transport.DefaultGossipStreams, true},
		{"a small limit", 4096, 1024, 576, 512, true},
		{"tighter", 2048, 256, 256, 256, true},
		{"the frontends take it all", 1024, 10000, minClusterPending, minClusterPending, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := planDescriptors(tc.limit, tc.http)
			if b.data != tc.data || b.gossip != tc.gossip || b.tight != tc.tight {
				t.Fatalf("planDescriptors(%d, %d) = data %d, gossip %d, tight %v; want %d, %d, %v", tc.limit, tc.http, b.data, b.gossip, b.tight, tc.data, tc.gossip, tc.tight)
			}
			if tc.limit > 0 && !tc.tight {
				// Frontends, operations listener, margin and both cluster
				// listeners' worst case fit under the limit.
				if used := b.reserved + uint64(b.data+b.gossip); used > tc.limit {
					t.Fatalf("reserved %d + cluster %d exceeds the limit %d", b.reserved, b.data+b.gossip, tc.limit)
				}
			}
		})
	}
}
