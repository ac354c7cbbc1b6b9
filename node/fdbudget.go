package node

import "github.com/karuta-tracker/karuta/node/cluster/transport"

// Descriptor reservation. Every connection costs a file descriptor, and
// a process out of them can accept nothing: not a client's announce, not
// an operator's /readyz. The frontends and the operations listener cap
// their own connections, so the descriptors they may need are known; the
// cluster listeners' connections from peers that have proven nothing yet
// are capped to what is left after those, so a flood of either cluster
// port can never take a descriptor a frontend or the operations listener
// could need. (The Go runtime raises the soft RLIMIT_NOFILE to the hard
// limit at start; the budget is planned on that.)

const (
	// fdMargin is kept for everything else a node opens: its UDP
	// sockets, the swarm file, logs, outgoing connections being dialled.
	fdMargin = 512
	// minClusterPending is the least a cluster listener is given even
	// when the limit leaves less: a cluster needs a few connections to
	// form at all.
	minClusterPending = 16
)

// descriptorBudget is what the cluster listeners may hold before
// authentication.
type descriptorBudget struct {
	// limit is the process's descriptor limit, reserved what the
	// frontends, the operations listener and the margin may use.
	limit, reserved uint64
	// data and gossip bound the data channel's connections before
	// authentication and the gossip listener's inbound streams.
	data, gossip int
	// tight reports that the limit left less than the defaults, and at
	// least one bound was cut.
	tight bool
}

// planDescriptors splits limit: the HTTP frontend may hold httpConns
// (its max_connections, 0 when it is off), the operations listener
// opsMaxConns, and fdMargin stays spare; a quarter of the rest goes to
// each cluster listener before authentication, up to its default, and the
// remaining half to authenticated sessions between nodes. limit 0 means
// unknown: the defaults.
func planDescriptors(limit uint64, httpConns int) descriptorBudget {
	b := descriptorBudget{limit: limit, data: transport.DefaultMaxPending, gossip: transport.DefaultGossipStreams}
	if limit == 0 {
		return b
	}
	b.reserved = uint64(max(httpConns, 0)) + opsMaxConns + fdMargin
	share := 0
	if limit > b.reserved {
		share = int(min((limit-b.reserved)/4, 1<<30))
	}
	if share < b.data {
		b.data, b.tight = max(share, minClusterPending), true
	}
	if share < b.gossip {
		b.gossip, b.tight = max(share, minClusterPending), true
	}
	return b
}
