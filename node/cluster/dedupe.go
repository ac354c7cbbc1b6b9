package cluster

import (
	"sync"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// A forward whose reply is lost is sent again, and the receiver may have
// applied it already. Applying a change twice is harmless for puts and
// removes, but not for everything around them (a complete followed by a
// stop in one batch would count its snatch twice), so each sender numbers
// its forwards and the receiver skips the numbers it has seen.
//
// Numbering: every dest takes a fresh range of sequence numbers from its
// Cluster's stream (seqRange apart), so the numbers one receiver sees from
// one stream only grow, even when a dest is retired and a new one made for
// the same address. A dest's head change keeps its number until it leaves
// the queue, so a retry repeats it.

// seqRange is how far apart the ranges of two dests of one stream start:
// far more changes than one dest will ever send.
const seqRange = 1 << 40

// maxStreams bounds the senders a receiver remembers. Senders are the
// members' processes, so this is only reached through many restarts; then
// the receiver forgets them all, and a retry in that moment could apply
// twice, which the store's own rules (a completion counts once per peer)
// still contain.
const maxStreams = 4096

// appliedStreams remembers, per sender stream, the next sequence number
// not yet applied. Safe for concurrent use.
type appliedStreams struct {
	mu   sync.Mutex
	next map[uint64]uint64
}

// fresh returns the changes of a forward numbered seq onwards in stream
// that have not been applied before, and claims them: a copy of the same
// forward handled at the same time gets nothing. Stream 0 carries no
// numbers and is always fresh.
func (a *appliedStreams) fresh(stream, seq uint64, changes []bittorrent.Change) []bittorrent.Change {
	if stream == 0 || len(changes) == 0 {
		return changes
	}
	end := seq + uint64(len(changes))
	a.mu.Lock()
	defer a.mu.Unlock()
	next, known := a.next[stream]
	if a.next == nil || (!known && len(a.next) >= maxStreams) {
		a.next = make(map[uint64]uint64)
	}
	switch {
	case !known || next <= seq:
		a.next[stream] = end
		return changes
	case next >= end:
		return nil
	default:
		a.next[stream] = end
		return changes[next-seq:]
	}
}
