package loadgen

import (
	"sync/atomic"
	"time"
)

// planMode is how clients choose their requests.
type planMode int

const (
	// modeClosed: each client sends its next request, drawn from the
	// workload, as soon as its last one ended.
	modeClosed planMode = iota
	// modeOpen: request k of all clients is due at start + k/rate, and
	// client i sends those with k ≡ i (mod clients); latency counts from
	// when a request was due, so a stalled tracker cannot hide its stall.
	modeOpen
	// modePrime: the clients announce every peer of the population once,
	// in turn, trying each up to primeTries times.
	modePrime
)

// plan says what the clients of every driver send. Safe for concurrent
// use.
type plan struct {
	mode  planMode
	w     *workload
	start time.Time
	rate  float64
	// clients is every driver's clients in all: the open loop's stride.
	clients int

	next   atomic.Int64 // priming: the next peer
	failed atomic.Int64 // priming: peers given up on
}

// due is when request k of the open loop is due.
func (p *plan) due(k int) time.Time {
	return p.start.Add(time.Duration(float64(k) / p.rate * float64(time.Second)))
}

// primeTries is how often priming sends a peer's announce before it
// counts the peer as not announced.
const primeTries = 3

// nextPeer hands out the next peer to prime, and false once all are.
func (p *plan) nextPeer() (int, bool) {
	i := int(p.next.Add(1) - 1)
	return i, i < p.w.peers()
}

// primed counts one attempt at a peer that ended with o, and reports
// whether the client is done with the peer: announced, or given up on
// after primeTries attempts.
func (p *plan) primed(tries *int, o outcome) bool {
	*tries++
	switch {
	case o == ok:
		return true
	case *tries < primeTries:
		return false
	}
	p.failed.Add(1)
	return true
}

// primeResult is what priming took, once the clients have returned: the
// peers never reached (the run was cut short) count as failed too.
func (p *plan) primeResult(took time.Duration) PrimeResult {
	total := p.w.peers()
	reached := min(int(p.next.Load()), total)
	return PrimeResult{Peers: total, Failed: int(p.failed.Load()) + total - reached, Seconds: took.Seconds()}
}

// fillPrime sets a to peer i's priming announce: "started", numwant 0.
func (w *workload) fillPrime(i int, a *announce) {
	w.fillPeer(w.swarmOf(i), i, a)
	a.numWant, a.event = 0, eventStarted
}
