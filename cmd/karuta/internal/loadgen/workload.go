package loadgen

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"sync/atomic"
)

// workload is the population of simulated swarms and peers: swarm s has
// popularity proportional to 1/(s+1)^zipf and a share of the peers in the
// same proportion (at least one). Every peer belongs to one swarm and has a
// stable peer ID, port and key, so repeated announces update the same peer.
// Safe for concurrent use; each caller brings its own *rand.Rand.
type workload struct {
	// cdf[s] is the probability of picking a swarm at or below s.
	cdf []float64
	// first[s] is the index of swarm s's first peer; first[len] = peers.
	first       []int
	seeders     float64
	numWant     int32
	scrapeRatio float64
	// scrapeHashes is how many infohashes one scrape asks about.
	scrapeHashes int
	// started has a bit per peer, set once the peer announced "started".
	started []atomic.Uint64
}

// newWorkload spreads peers over swarms by Zipf exponent s (0 is uniform).
// peers must be at least swarms.
func newWorkload(swarms, peers int, s float64, c *Config) *workload {
	w := &workload{
		cdf:          make([]float64, swarms),
		first:        make([]int, swarms+1),
		seeders:      c.Seeders,
		numWant:      int32(c.NumWant),
		scrapeRatio:  c.ScrapeRatio,
		scrapeHashes: c.ScrapeHashes,
		started:      make([]atomic.Uint64, (peers+63)/64),
	}
	var total float64
	for i := range w.cdf {
		total += math.Pow(float64(i+1), -s)
		w.cdf[i] = total
	}
	for i := range w.cdf {
		w.cdf[i] /= total
	}
	w.cdf[swarms-1] = 1
	// Each swarm gets one peer, then the rest by weight, rounded on the
	// running total so that rounding spreads over the swarms: rounding
	// each swarm's share down and giving the remainder to the first swarm
	// made one swarm of 17 000 peers out of a uniform 500 000 over 50 000,
	// whose two owners then held 16% more than their share at 9 nodes.
	extra := float64(peers - swarms)
	for i := range swarms {
		w.first[i+1] = i + 1 + int(math.Round(extra*w.cdf[i]))
	}
	return w
}

// pickSwarm returns a swarm index drawn by popularity.
func (w *workload) pickSwarm(r *rand.Rand) int {
	u := r.Float64()
	return sort.SearchFloat64s(w.cdf, u)
}

// pickPeer returns a peer of swarm s, uniformly.
func (w *workload) pickPeer(r *rand.Rand, s int) int {
	return w.first[s] + r.IntN(w.first[s+1]-w.first[s])
}

// isScrape draws whether the next request is a scrape.
func (w *workload) isScrape(r *rand.Rand) bool {
	return w.scrapeRatio > 0 && r.Float64() < w.scrapeRatio
}

// fillAnnounce sets a to an announce by a random peer of a random swarm:
// "started" the first time the peer announces, then regular updates.
// Seeders are a fixed share of the peers, chosen by peer index.
func (w *workload) fillAnnounce(r *rand.Rand, a *announce) {
	s := w.pickSwarm(r)
	w.fillPeer(s, w.pickPeer(r, s), a)
}

// peers returns the size of the population.
func (w *workload) peers() int { return w.first[len(w.first)-1] }

// held returns how many distinct peers a tracker holds once every peer
// has announced: on loopback all peers share one address, so a swarm's
// peers are told apart by port alone, and a swarm of more than 65535
// peers holds 65535 (see peerPort).
func (w *workload) held() int {
	n := 0
	for s := range len(w.first) - 1 {
		n += min(w.first[s+1]-w.first[s], 65535)
	}
	return n
}

// swarmOf returns the swarm of peer p.
func (w *workload) swarmOf(p int) int {
	// first is ascending: the last swarm whose first peer is at or below p.
	return sort.SearchInts(w.first[1:], p+1)
}

// fillPeer sets a to an announce by peer p of swarm s.
func (w *workload) fillPeer(s, p int, a *announce) {
	a.infoHash = infoHash(s)
	a.peerID = peerID(p)
	a.port = peerPort(p)
	a.key = uint32(mix(uint64(p) ^ 0x6b6579))
	a.numWant = w.numWant
	a.left = 1 << 20
	if float64(mix(uint64(p))%10000) < w.seeders*10000 {
		a.left = 0
	}
	a.event = eventNone
	word, bit := &w.started[p/64], uint64(1)<<(p%64)
	if word.Load()&bit == 0 && word.Or(bit)&bit == 0 {
		a.event = eventStarted
	}
}

// fillScrape appends to hashes the infohashes of one scrape, drawn by
// popularity, and returns it.
func (w *workload) fillScrape(r *rand.Rand, hashes [][20]byte) [][20]byte {
	for range w.scrapeHashes {
		hashes = append(hashes, infoHash(w.pickSwarm(r)))
	}
	return hashes
}

// mix is the splitmix64 finaliser: a cheap bijection that scatters
// consecutive indexes.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// infoHash returns swarm s's infohash: scattered bits, so swarms spread
// over a cluster's ring as real infohashes do, and "KB" at the front to
// spot them in a tracker's logs.
func infoHash(s int) [20]byte {
	var h [20]byte
	h[0], h[1] = 'K', 'B'
	binary.BigEndian.PutUint64(h[2:], mix(uint64(s)))
	binary.BigEndian.PutUint64(h[10:], mix(uint64(s)^0x5eed))
	binary.BigEndian.PutUint16(h[18:], uint16(s))
	return h
}

// WriteInfoHashes writes the infohashes of a population of swarms in hex,
// one a line, as trackers with a whitelist (opentracker's accesslist)
// read them.
func WriteInfoHashes(w io.Writer, swarms int) error {
	bw := bufio.NewWriter(w)
	var line [41]byte
	line[40] = '\n'
	for s := range swarms {
		h := infoHash(s)
		hex.Encode(line[:40], h[:])
		if _, err := bw.Write(line[:]); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// peerID returns peer p's ID, Azureus style: "-KB0001-" and twelve digits.
func peerID(p int) [20]byte {
	var id [20]byte
	copy(id[:], "-KB0001-")
	for i, v := 19, p; i >= 8; i-- {
		id[i] = '0' + byte(v%10)
		v /= 10
	}
	return id
}

// peerPort returns peer p's port. Trackers key peers by address and port,
// and on loopback every peer has the same address, so the ports of one
// swarm's peers differ (up to 65535 peers a swarm); collisions across
// swarms do no harm.
func peerPort(p int) uint16 { return uint16(1 + p%65535) }
