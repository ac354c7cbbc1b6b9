// Package store keeps swarms of peers: the Store interface every backend
// implements, and Memory, the sharded in-memory backend.
package store

import (
	"context"
	"net/netip"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Store holds swarms. Implementations are safe for concurrent use.
//
// A peer's identity within a swarm is its IP address and port; an
// IPv4-mapped IPv6 address is the IPv4 address it maps. IPv4, IPv6 and
// WebRTC peers (bittorrent.IsWebRTC) are kept apart: an announcer is only
// ever given peers of its own family, while counts include all three.
type Store interface {
	// Apply applies changes in order. Changes to an unknown swarm create it,
	// except removes, which create nothing. A put for a peer already present
	// (same address and port) refreshes it in place, taking the change's peer
	// ID, and moves it between seeders and leechers if its state changed.
	// An OpComplete leaves the peer seeding and counts one snatch unless
	// the peer has completed or seeded (by OpComplete or a put with Seeder
	// set) since it joined the swarm, so a completion counts once per peer
	// and swarm however often a client repeats it or a batch is applied
	// again, even a batch that also moves the peer back to leeching. A peer
	// that left (OpRemove, or expired) counts again when it completes. Changes without a valid address, with
	// port 0 or with an unknown op are ignored. Apply does not keep the
	// slice.
	Apply(changes []bittorrent.Change)

	// AnnouncePeers appends to dst up to n randomly chosen peers of the
	// swarm that share the announcer's address family, never the announcer
	// itself (matched by address and port). Seeders get leechers first and
	// leechers get seeders first; the rest is filled from the other group.
	// It also returns the swarm's counts and the announcer's current state,
	// so a caller can report counts that include the announcer before its own
	// change is applied. With n <= 0 it appends nothing but still reports
	// counts and state; an announcer without a valid address gets no peers
	// and is Absent.
	AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState)

	// Counts returns a swarm's counts over both address families, zero for
	// an unknown swarm.
	Counts(ih bittorrent.InfoHash) bittorrent.Counts

	// Stats returns totals over the whole store.
	Stats() Stats

	// Swarm appends to dst a snapshot of the swarm's peers as OpPut
	// changes, Seeder set as stored, and returns it with the swarm's counts
	// and whether the swarm exists. It takes up to maxPerFamily peers of
	// each address family, a random sample when the family has more; with
	// maxPerFamily <= 0 it takes all of them. Applying the snapshot to
	// another store recreates the peers (but not the snatch count; see
	// MergeSnatches), which is how a cluster moves and samples swarms.
	Swarm(ih bittorrent.InfoHash, maxPerFamily int, dst []bittorrent.Change) ([]bittorrent.Change, bittorrent.Counts, bool)

	// MergeSnatches raises the swarm's snatch count to n if it is lower,
	// creating the swarm if it does not exist. Taking the larger count
	// rather than adding makes handing a swarm over twice harmless.
	MergeSnatches(ih bittorrent.InfoHash, n uint32)

	// Range calls fn for each swarm's infohash until fn returns false. fn
	// runs without any of the store's locks held, so it may call any other
	// method; swarms created or dropped meanwhile may or may not be
	// visited, and no swarm is visited twice.
	Range(fn func(ih bittorrent.InfoHash) bool)

	// ScrapeAll calls fn with the counts of every swarm that has peers, in
	// batches, each swarm once, until all are listed, fn returns an error
	// or ctx ends, and returns that error. fn runs without the store's
	// locks held and must not keep the slice. It answers full scrapes.
	ScrapeAll(ctx context.Context, fn func([]bittorrent.Scrape) error) error

	// ScrapePage appends to dst the counts of the next swarms with peers,
	// starting at cursor (0 for the first page), reading at least limit
	// swarms unless the store runs out; it returns the cursor of the next
	// page and whether this was the last. Paging through the whole store
	// lists every swarm once, though swarms created or dropped meanwhile
	// may or may not be listed. A cursor means something only to the
	// store that returned it. A cluster node pages this way for others.
	ScrapePage(cursor uint64, limit int, dst []bittorrent.Scrape) ([]bittorrent.Scrape, uint64, bool)

	// Drop deletes a swarm with its peers and snatch count, as when it has
	// been handed to the nodes that own it now. Dropping an unknown swarm
	// does nothing.
	Drop(ih bittorrent.InfoHash)

	// Close stops background work such as garbage collection. It is safe to
	// call more than once.
	Close() error
}

// Stats are totals over a whole store. Swarms may include swarms whose last
// peer left since the backend last collected garbage.
type Stats struct {
	Swarms int
	// Seeders4 and Leechers4 count IPv4 peers, Seeders6 and Leechers6 IPv6
	// peers.
	Seeders4  int
	Leechers4 int
	Seeders6  int
	Leechers6 int
	// SeedersRTC and LeechersRTC count WebRTC peers, reached through the
	// WebSocket of the node holding them (bittorrent.WebRTCAddr).
	SeedersRTC  int
	LeechersRTC int
}
