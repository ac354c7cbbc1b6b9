package hooks

import (
	"context"
	"net/netip"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// PeerSource is where answers come from: the local store on a single node,
// or, in a cluster, a reader that consults the swarm's owners. *store.Memory
// satisfies it. Implementations are safe for concurrent use.
type PeerSource interface {
	AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState)
	Counts(ih bittorrent.InfoHash) bittorrent.Counts
}

// PeerRanker orders the peers of an answer by preference, so the Responder
// can choose the best n of a larger set of candidates. It works on
// addresses only, so it ranks peers the same whichever node of a cluster
// they were announced to. Implementations are safe for concurrent use and
// must not block: they run on the request path.
type PeerRanker interface {
	// Candidates returns how many peers the ranker wants to choose n from,
	// at least n. The Responder asks its PeerSource for the most any
	// ranker wants.
	Candidates(n int) int

	// RankPeers returns the same peers reordered, most preferred first,
	// keeping the source's (random) order among peers it likes equally.
	// It may reorder peers in place and use the capacity beyond len(peers)
	// as scratch, so that a buffer reused across requests makes ranking
	// allocation-free; it must not keep the slice. n is how many the
	// Responder will keep.
	RankPeers(req *bittorrent.AnnounceRequest, peers []bittorrent.Peer, n int) []bittorrent.Peer
}

// ErrReservedAddr refuses an HTTP or UDP announce from the WebRTC prefix
// (bittorrent.IsWebRTC), which only WebSocket peers are stored under.
var ErrReservedAddr = bittorrent.ClientError("announces from 100::/64 are refused: the prefix is reserved")

// Responder is the last PreHook: it fills an announce's peers and counts,
// and a scrape's counts, from a PeerSource.
type Responder struct {
	src     PeerSource
	rankers []PeerRanker
}

// NewResponder returns a Responder reading from src. With rankers it asks
// src for extra candidates and keeps the numwant best as the rankers order
// them; each ranker reorders the previous one's order, so the last has the
// final word and earlier ones break its ties.
func NewResponder(src PeerSource, rankers ...PeerRanker) *Responder {
	return &Responder{src: src, rankers: rankers}
}

// HandleAnnounce fills resp. Because the announce itself is applied to the
// swarm only after the answer (by the swarm-write PostHook), the counts are
// adjusted here to include the announcer as it will be once applied.
func (r *Responder) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	if bittorrent.IsWebRTC(req.Addr) && !req.Source.IsValid() {
		// Only the WebSocket frontend, which sets Source, may store a
		// peer under a WebRTC address: a real host in that prefix
		// (behind a proxy's header, say) would pose as someone's socket.
		return ErrReservedAddr
	}
	n := int(req.NumWant)
	if req.Event == bittorrent.EventStopped {
		n = 0 // a peer that is leaving needs no peers
	}
	want := n
	if n > 0 {
		for _, rk := range r.rankers {
			want = max(want, rk.Candidates(n))
		}
	}
	peers, counts, self := r.src.AnnouncePeers(req.InfoHash, req.Addr, req.Seeder(), want, resp.Peers[:0])
	if n > 0 && len(r.rankers) > 0 && len(peers) > 1 {
		for _, rk := range r.rankers {
			peers = rk.RankPeers(req, peers, n)
		}
		peers = peers[:min(n, len(peers))]
	}
	resp.Peers = peers
	counts = CountsAfter(counts, self, bittorrent.ChangeFor(req))
	resp.Complete = counts.Seeders
	resp.Incomplete = counts.Leechers
	return nil
}

// HandleScrape fills one entry per requested infohash, in request order.
// A source that prefetches is handed all of them first, so a scrape of
// swarms owned elsewhere costs one round trip per owner and one deadline,
// not one of each per infohash.
func (r *Responder) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error {
	if p, ok := r.src.(Prefetcher); ok && len(req.InfoHashes) > 1 {
		p.Prefetch(req.InfoHashes)
	}
	for _, ih := range req.InfoHashes {
		resp.Files = append(resp.Files, bittorrent.Scrape{InfoHash: ih, Counts: r.src.Counts(ih)})
	}
	return nil
}

// CountsAfter returns what counts will be once change is applied to a swarm
// that has counts now and holds the changing peer in state self.
func CountsAfter(counts bittorrent.Counts, self bittorrent.PeerState, change bittorrent.Change) bittorrent.Counts {
	switch self {
	case bittorrent.Seeding:
		counts.Seeders = dec(counts.Seeders)
	case bittorrent.Leeching:
		counts.Leechers = dec(counts.Leechers)
	}
	switch change.Op {
	case bittorrent.OpRemove:
	case bittorrent.OpComplete:
		counts.Seeders++
		// A seeder's completion is a repeat, which the store does not
		// count (store.Store.Apply).
		if self != bittorrent.Seeding {
			counts.Snatches++
		}
	default:
		if change.Seeder {
			counts.Seeders++
		} else {
			counts.Leechers++
		}
	}
	return counts
}

// dec decrements without wrapping, in case a source's counts lag its state.
func dec(n uint32) uint32 {
	if n == 0 {
		return 0
	}
	return n - 1
}
