package cluster

import (
	"fmt"
	"time"
)

// Config holds the data-plane keys of the `cluster` section; membership
// and placement keys are ring.Config, inlined beside these.
type Config struct {
	// ForwardBatch is the most changes sent to one node in one request.
	ForwardBatch int `yaml:"forward_batch"`
	// ForwardDelay is the least time between two requests to one owner,
	// and so the longest a change waits for others to share its request.
	// A change for an owner sent nothing for that long goes at once, and
	// changes queued while a request is in flight go in the next one
	// (group commit): an idle cluster gets one round trip of latency, a
	// busy one batches, and a steady trickle of announces does not cost a
	// request each. 0 sends whenever nothing is in flight.
	ForwardDelay time.Duration `yaml:"forward_delay"`
	// ForwardQueue is the most changes waiting for one node; beyond it new
	// changes for that node are dropped and counted.
	ForwardQueue int `yaml:"forward_queue"`
	// ForwardRetry is how long a batch is retried while its node cannot be
	// reached; then it is kept in this node's store, counted, and handed
	// over by the repair pass once the node answers.
	ForwardRetry time.Duration `yaml:"forward_retry"`
	// ReadCacheTTL is how long a node reuses the peers it fetched for a
	// swarm it does not own. 0 (the default) keeps no copy: every read
	// goes to an owner, so a node holds only its share of the swarms and
	// hands out a peer as soon as an owner has it; reads of one swarm
	// that wait at the same time still share one fetch.
	ReadCacheTTL time.Duration `yaml:"read_cache_ttl"`
	// ReadTimeout bounds the fetch from an owner an announce may wait for;
	// past it the node answers with what it has. A read that asks one
	// owner asks the next after half of it (hedgeDelay). The default,
	// 500ms, is long because what makes a fetch slow is mostly a busy
	// owner's queue (at 6 nodes on one core, 200ms left a few reads in
	// 100 000 without an answer under a saturating HTTP load), and an
	// answer without peers costs a client more than a late one; an owner
	// that cannot be reached is asked last once its link fails (links.go).
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// ReadMaxPeers is the most peers per address family fetched from an
	// owner for one swarm: what a non-owner can hand out in one answer.
	// The default, 64, covers the default numwant (50) with room for the
	// announcer; raise it towards max_numwant for clients that ask more.
	ReadMaxPeers int `yaml:"read_max_peers"`
	// RepairInterval is how often a node checks, without a membership
	// change, that every swarm it holds is where placement wants it, and
	// compares its copies with the other owners' (antientropy.go). It
	// also bounds the trust window after a change (see trustWindow).
	RepairInterval time.Duration `yaml:"repair_interval"`
}

// DefaultConfig returns the data-plane defaults.
func DefaultConfig() Config {
	return Config{
		ForwardBatch:   4096,
		ForwardDelay:   0,
		ForwardQueue:   65536,
		ForwardRetry:   10 * time.Second,
		ReadCacheTTL:   0,
		ReadTimeout:    500 * time.Millisecond,
		ReadMaxPeers:   64,
		RepairInterval: 30 * time.Second,
	}
}

// Validate reports the first bad value, naming its key.
func (c Config) Validate() error {
	ints := []struct {
		key      string
		val      int
		min, max int
	}{
		{"forward_batch", c.ForwardBatch, 1, 65536},
		{"forward_queue", c.ForwardQueue, 1, 1 << 24},
		{"read_max_peers", c.ReadMaxPeers, 1, 10000},
	}
	for _, f := range ints {
		if f.val < f.min || f.val > f.max {
			return fmt.Errorf("%s: %d is out of range; want %d to %d", f.key, f.val, f.min, f.max)
		}
	}
	if c.ForwardQueue < c.ForwardBatch {
		return fmt.Errorf("forward_queue: %d is smaller than forward_batch (%d); want at least one batch", c.ForwardQueue, c.ForwardBatch)
	}
	durs := []struct {
		key      string
		val      time.Duration
		min, max time.Duration
	}{
		{"forward_delay", c.ForwardDelay, 0, time.Second},
		{"forward_retry", c.ForwardRetry, 100 * time.Millisecond, time.Hour},
		{"read_cache_ttl", c.ReadCacheTTL, 0, time.Minute},
		{"read_timeout", c.ReadTimeout, time.Millisecond, 10 * time.Second},
		{"repair_interval", c.RepairInterval, time.Second, 24 * time.Hour},
	}
	for _, f := range durs {
		if f.val < f.min || f.val > f.max {
			return fmt.Errorf("%s: %s is out of range; want %s to %s", f.key, f.val, f.min, f.max)
		}
	}
	return nil
}
