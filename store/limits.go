package store

import (
	"fmt"
	"sync/atomic"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Limits bound what outsiders can make a store hold. Past a limit, Admit
// refuses an announce that would add a swarm or a peer, and Apply leaves
// such a change out; both count the refusal. Swarms and peers already
// held are served and refreshed as before. Zero means no limit; the node
// sizes MaxSwarms and MaxPeers from its memory (see Sized).
type Limits struct {
	// MaxSwarms is the most swarms held.
	MaxSwarms int `yaml:"max_swarms"`
	// MaxPeers is the most peers held, over all swarms and both families.
	MaxPeers int `yaml:"max_peers"`
	// MaxPeersPerSource is the most peers one source (an IPv4 address or
	// an IPv6 /64) may hold in one swarm: one host behind many ports
	// cannot fill a swarm's answers with itself.
	MaxPeersPerSource int `yaml:"max_peers_per_source"`
}

// Failure reasons of refused announces, shown to the client.
var (
	ErrTooManySwarms    error = bittorrent.ClientError("tracker full: no new torrents accepted now; try again later")
	ErrTooManyPeers     error = bittorrent.ClientError("tracker full: no new peers accepted now; try again later")
	ErrTooManyForSource error = bittorrent.ClientError("too many peers from your address in this torrent")
)

// Reasons a change or announce is refused, as karuta_store_refused_total
// labels them.
const (
	reasonSwarms    = "max_swarms"
	reasonPeers     = "max_peers"
	reasonPerSource = "max_peers_per_source"
)

// The most the limits may be: a store's counts are int64, but a shard's
// table indexes at most maxShardSwarms, and one swarm's peer count is an
// int32.
const (
	maxLimit          = 1 << 40
	maxPerSourceLimit = 1 << 16
)

// Memory costs the default limits are sized from, in bytes of live heap,
// allocation slack included, measured with BenchmarkMemory: a swarm with
// one IPv6 peer (the dearest kind of swarm, its peer included) and an
// IPv6 peer in a swarm of ten (the dearest peer). IPv4 costs less of both.
const (
	swarmCost = 208
	peerCost  = 72
)

// storeShare is the part of the memory a process may use that the
// default limits give the store: the rest is the Go runtime's headroom
// for garbage, connections, queues and rate-limit tables.
const storeShare = 0.5

// Sized returns l with a zero MaxSwarms and MaxPeers filled in for a
// process that may use memBytes of memory: storeShare of it, a third for
// the swarms (each at swarmCost) and two thirds for the peers (each at
// peerCost), so a store at both limits holds at most half the memory,
// whatever mix of families and swarm sizes filled it. Limits already set
// are kept.
func (l Limits) Sized(memBytes int64) Limits {
	budget := float64(memBytes) * storeShare
	if l.MaxSwarms == 0 {
		l.MaxSwarms = int(min(max(budget/3/swarmCost, 1), maxLimit))
	}
	if l.MaxPeers == 0 {
		l.MaxPeers = int(min(max(budget*2/3/peerCost, 1), maxLimit))
	}
	return l
}

func (l Limits) validate() error {
	for _, f := range []struct {
		key, zero string
		val, max  int
	}{
		{"max_swarms", "sized from memory", l.MaxSwarms, maxLimit},
		{"max_peers", "sized from memory", l.MaxPeers, maxLimit},
		{"max_peers_per_source", "no limit", l.MaxPeersPerSource, maxPerSourceLimit},
	} {
		if f.val < 0 || f.val > f.max {
			return fmt.Errorf("%s: %d is out of range; want 0 (%s) to %d", f.key, f.val, f.zero, f.max)
		}
	}
	return nil
}

// count is a store-wide total that a limit is checked against.
type count struct {
	n   atomic.Int64
	max atomic.Int64 // 0: no limit
}

// take adds one unless that would pass the limit, and reports whether it
// did. Adding first and undoing keeps the limit exact under concurrent
// writers.
func (c *count) take() bool {
	if n, lim := c.n.Add(1), c.max.Load(); n > lim && lim > 0 {
		c.n.Add(-1)
		return false
	}
	return true
}

// full reports whether one more would pass the limit.
func (c *count) full() bool {
	lim := c.max.Load()
	return lim > 0 && c.n.Load() >= lim
}

func (c *count) give(n int64) { c.n.Add(-n) }
