// Package store keeps swarms of peers: the Store interface every backend
// implements, and Memory, the sharded in-memory backend.
package store

import (
	"net/netip"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Store holds swarms. Implementations are safe for concurrent use.
type Store interface {
	// Apply applies changes in order. Changes to an unknown swarm create it;
	// a put for a peer already present (same address and port) refreshes it
	// in place, moving it between seeders and leechers if its state changed.
	Apply(changes []bittorrent.Change)

	// AnnouncePeers appends to dst up to n randomly chosen peers of the
	// swarm that share the announcer's address family, never the announcer
	// itself (matched by address and port). Seeders get leechers first and
	// leechers get seeders first; the rest is filled from the other group.
	// It also returns the swarm's counts and the announcer's current state,
	// so a caller can report counts that include the announcer before its own
	// change is applied.
	AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState)

	// Counts returns a swarm's counts, zero for an unknown swarm.
	Counts(ih bittorrent.InfoHash) bittorrent.Counts

	// Stats returns totals over the whole store.
	Stats() Stats

	// Close stops background work such as garbage collection.
	Close() error
}

// Stats are totals over a whole store.
type Stats struct {
	Swarms    int
	Seeders4  int
	Leechers4 int
	Seeders6  int
	Leechers6 int
}
