package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"go.uber.org/zap"
)

// fetchesInFlight is the most fetch requests one node has out to one
// member at a time. Fetches that find them all out wait and go together
// in the next request (group commit): a node whose frontend answers many
// requests at once (HTTP's connections, several UDP readers) sends one
// request per member per round trip, not one per announce.
const fetchesInFlight = 2

// maxWaitingFetches bounds the fetches waiting for one member: a member
// that answers slowly must not grow the queue without end. Past it a
// fetch fails at once, counted, and the read goes to the next owner.
const maxWaitingFetches = 4096

var (
	// errClosing answers the fetches still waiting when the node closes.
	errClosing = errors.New("cluster: closing")
	// errFetchQueueFull answers a fetch that found its member's queue full.
	errFetchQueueFull = errors.New("cluster: fetch queue full")
	// errFetchExpired answers a fetch whose reader stopped waiting before
	// a request could take it: it is not sent.
	errFetchExpired = errors.New("cluster: fetch expired before it was sent")
)

// fetchBatcher gathers the fetches for one member into FetchManyRequests.
// A caller that finds a request slot free sends what waits, its own
// fetch included, and then, if more waits, hands the slot on to a new
// goroutine: one goroutine per request under load, none per fetch.
type fetchBatcher struct {
	c    *Cluster
	addr string

	mu      sync.Mutex
	waiting []*batchedFetch
	flying  int // requests out
}

// batchedFetch is one caller's part of a request.
type batchedFetch struct {
	ihs []bittorrent.InfoHash
	// deadline is when the caller stops waiting; a fetch still queued
	// then is dropped rather than sent (zero: no deadline).
	deadline time.Time
	reps     []transport.FetchReply // one per ihs once answered
	err      error
	done     chan struct{} // closed once reps or err is set
	// notify, if set, receives the fetch once it is done; it must have
	// room, as delivery does not wait.
	notify chan<- *batchedFetch
}

// wake closes done and notifies.
func (bf *batchedFetch) wake() {
	close(bf.done)
	if bf.notify != nil {
		bf.notify <- bf
	}
}

// batcherFor returns the batcher for the member at addr.
func (c *Cluster) batcherFor(addr string) *fetchBatcher {
	c.batchMu.Lock()
	defer c.batchMu.Unlock()
	b := c.batchers[addr]
	if b == nil {
		b = &fetchBatcher{c: c, addr: addr}
		c.batchers[addr] = b
	}
	return b
}

// forgetBatchers drops the batchers of members not in live. A fetch still
// waiting in one is sent by the request slot that holds it.
func (c *Cluster) forgetBatchers(live map[string]bool) {
	c.batchMu.Lock()
	defer c.batchMu.Unlock()
	for addr := range c.batchers {
		if !live[addr] {
			delete(c.batchers, addr)
		}
	}
}

// fetch asks the member for ihs (at most transport.MaxFetchMany) with
// maxPeers per family, together with whatever other fetches wait for it,
// and returns one reply per infohash, or an error. A caller that finds a
// request slot free sends the request itself (no goroutine per request on
// the fetch rounds' path) and so returns when it is answered, at most
// 4 × read_timeout later; any other returns ctx's error once ctx ends,
// and its fetch, if not yet sent by then, is dropped.
func (b *fetchBatcher) fetch(ctx context.Context, ihs []bittorrent.InfoHash) ([]transport.FetchReply, error) {
	deadline, _ := ctx.Deadline()
	bf := &batchedFetch{ihs: ihs, deadline: deadline, done: make(chan struct{})}
	if b.enqueue(bf) {
		b.send()
	}
	return b.wait(ctx, bf)
}

// enqueue adds bf to the next request and reports whether the caller took
// a free request slot, and so must see that the request is sent. A full
// queue fails bf at once.
func (b *fetchBatcher) enqueue(bf *batchedFetch) bool {
	b.mu.Lock()
	if len(b.waiting) >= maxWaitingFetches {
		b.mu.Unlock()
		b.dropped("queue_full", 1)
		bf.err = errFetchQueueFull
		bf.wake()
		return false
	}
	defer b.mu.Unlock()
	b.waiting = append(b.waiting, bf)
	if b.flying >= fetchesInFlight {
		return false
	}
	b.flying++
	return true
}

// wait waits for bf, or for ctx to end.
func (b *fetchBatcher) wait(ctx context.Context, bf *batchedFetch) ([]transport.FetchReply, error) {
	select {
	case <-bf.done:
		return bf.reps, bf.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// start queues a fetch of ihs for the next request and returns at once:
// notify, if set, receives the fetch when it is answered or has failed
// (done is closed either way). If a request slot is free, a goroutine
// takes it and sends what waits: the caller never sends, so it can hedge
// while the request is out, and never waits past its own deadline.
func (b *fetchBatcher) start(ihs []bittorrent.InfoHash, deadline time.Time, notify chan<- *batchedFetch) *batchedFetch {
	bf := &batchedFetch{ihs: ihs, deadline: deadline, done: make(chan struct{}), notify: notify}
	if b.enqueue(bf) && !b.c.goOwned(b.send) {
		b.fail() // closing
	}
	return bf
}

// send sends one request with the fetches waiting, up to MaxFetchMany
// swarms, holding a request slot, and delivers the answers. If fetches
// still wait, a new goroutine keeps the slot and sends them; otherwise
// the slot is freed.
func (b *fetchBatcher) send() {
	now := b.c.clock.Now()
	b.mu.Lock()
	var batch, expired []*batchedFetch
	swarms, n := 0, 0
	for ; n < len(b.waiting); n++ {
		bf := b.waiting[n]
		if !bf.deadline.IsZero() && !now.Before(bf.deadline) {
			expired = append(expired, bf)
			continue
		}
		if len(batch) > 0 && swarms+len(bf.ihs) > transport.MaxFetchMany {
			break
		}
		batch = append(batch, bf)
		swarms += len(bf.ihs)
	}
	// Move the rest down, so the queue's array holds no fetch once gone.
	rest := copy(b.waiting, b.waiting[n:])
	clear(b.waiting[rest:])
	b.waiting = b.waiting[:rest]
	b.mu.Unlock()

	if len(expired) > 0 {
		b.dropped("expired", len(expired))
		for _, bf := range expired {
			bf.err = errFetchExpired
			bf.wake()
		}
	}
	if len(batch) > 0 {
		b.deliver(batch, swarms)
	}

	b.mu.Lock()
	more := len(b.waiting) > 0
	if !more {
		b.flying--
	}
	b.mu.Unlock()
	if more && !b.c.goOwned(b.send) {
		b.fail() // closing: wake every waiter
	}
}

// deliver sends batch's swarms in one request and hands each fetch its
// part of the answer, or the error.
func (b *fetchBatcher) deliver(batch []*batchedFetch, swarms int) {
	req := &transport.FetchManyRequest{InfoHashes: make([]bittorrent.InfoHash, 0, swarms), MaxPeers: b.c.cfg.ReadMaxPeers}
	for _, bf := range batch {
		req.InfoHashes = append(req.InfoHashes, bf.ihs...)
	}
	// The request outlives any one caller's wait, but not by much: a late
	// answer still fills the fetches that wait longest.
	ctx, cancel := context.WithTimeout(b.c.ctx, 4*b.c.cfg.ReadTimeout)
	reply, err := b.c.tr.Call(ctx, b.addr, req)
	cancel()
	fr, _ := reply.(*transport.FetchManyReply)
	if err == nil && (fr == nil || len(fr.Swarms) != len(req.InfoHashes)) {
		err = fmt.Errorf("cluster: fetch from %s: a reply of %T to %d swarms", b.addr, reply, len(req.InfoHashes))
	}
	off := 0
	for _, bf := range batch {
		if err == nil {
			bf.reps = fr.Swarms[off : off+len(bf.ihs) : off+len(bf.ihs)]
		}
		bf.err = err
		off += len(bf.ihs)
		bf.wake()
	}
}

// dropped counts n fetches to this member dropped for reason, and logs
// it at a sane rate.
func (b *fetchBatcher) dropped(reason string, n int) {
	b.c.m.fetchesDropped.WithLabelValues(reason).Add(float64(n))
	if events, ok := b.c.dropLog.Allow(); ok {
		b.c.log.Warn("fetches dropped", zap.String("member", b.addr), zap.String("reason", reason), zap.Uint64("events", events))
	}
}

// fail wakes every waiting fetch with an error and frees the slot.
func (b *fetchBatcher) fail() {
	b.mu.Lock()
	batch := b.waiting
	b.waiting = nil
	b.flying--
	b.mu.Unlock()
	for _, bf := range batch {
		bf.err = errClosing
		bf.wake()
	}
}
