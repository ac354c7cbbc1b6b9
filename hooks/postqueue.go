package hooks

import (
	"sync"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// postQueue is the bounded queue of answered announces between the
// frontends and the post-hook workers: a ring under a mutex, which a
// frontend fills a batch at a time with one lock and at most one wake-up,
// where a channel costs a send (and a receive) per announce. Safe for
// concurrent use.
type postQueue struct {
	mu   sync.Mutex
	ring []bittorrent.AnnounceRequest // fixed size: the capacity
	head int                          // the oldest announce
	n    int                          // announces queued
	// closed refuses every put from Close on, decided under mu so that
	// no put lands after the workers have drained the queue and gone.
	closed bool
	// wake holds a token while there may be announces no worker is
	// taking; a worker with nothing to do waits for it.
	wake chan struct{}
}

func newPostQueue(size int) *postQueue {
	return &postQueue{ring: make([]bittorrent.AnnounceRequest, size), wake: make(chan struct{}, 1)}
}

// put copies as many of reqs as there is room for, in order, and returns
// how many did not fit and whether the queue is now more than half full.
// It never blocks on the workers.
func (q *postQueue) put(reqs []*bittorrent.AnnounceRequest) (dropped int, filling bool) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return len(reqs), false
	}
	fit := min(len(reqs), len(q.ring)-q.n)
	for _, r := range reqs[:fit] {
		q.ring[(q.head+q.n)%len(q.ring)] = *r
		q.n++
	}
	filling = 2*q.n > len(q.ring)
	q.mu.Unlock()
	if fit > 0 {
		q.signal()
	}
	return len(reqs) - fit, filling
}

// signal leaves a token for a waiting worker, unless one is there already.
func (q *postQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take moves up to limit queued announces, oldest first, onto batch. When it
// leaves some behind it signals, so that another worker, if any, helps.
func (q *postQueue) take(batch []bittorrent.AnnounceRequest, limit int) []bittorrent.AnnounceRequest {
	q.mu.Lock()
	k := min(q.n, limit)
	for range k {
		batch = append(batch, q.ring[q.head])
		q.ring[q.head] = bittorrent.AnnounceRequest{} // drop references to params strings
		q.head = (q.head + 1) % len(q.ring)
	}
	q.n -= k
	more := q.n > 0
	q.mu.Unlock()
	if more {
		q.signal()
	}
	return batch
}

// close makes every later put drop (and its caller count) what it is given.
func (q *postQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
}

// len returns how many announces are queued.
func (q *postQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
