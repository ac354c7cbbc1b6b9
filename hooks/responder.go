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

// Responder is the last PreHook: it fills an announce's peers and counts,
// and a scrape's counts, from a PeerSource.
type Responder struct {
	src PeerSource
}

// NewResponder returns a Responder reading from src.
func NewResponder(src PeerSource) *Responder { return &Responder{src: src} }

// HandleAnnounce fills resp. Because the announce itself is applied to the
// swarm only after the answer (by the swarm-write PostHook), the counts are
// adjusted here to include the announcer as it will be once applied.
func (r *Responder) HandleAnnounce(_ context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	n := int(req.NumWant)
	if req.Event == bittorrent.EventStopped {
		n = 0 // a peer that is leaving needs no peers
	}
	peers, counts, self := r.src.AnnouncePeers(req.InfoHash, req.Addr, req.Seeder(), n, resp.Peers[:0])
	resp.Peers = peers
	counts = CountsAfter(counts, self, bittorrent.ChangeFor(req))
	resp.Complete = counts.Seeders
	resp.Incomplete = counts.Leechers
	return nil
}

// HandleScrape fills one entry per requested infohash, in request order.
func (r *Responder) HandleScrape(_ context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error {
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
		counts.Snatches++
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
