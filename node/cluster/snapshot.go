package cluster

import (
	"net/netip"
	"slices"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/store"
)

// snapshot is a swarm as fetched from an owner, each family's peers
// seeders first, the layout store.Choose walks.
type snapshot struct {
	at     time.Time
	counts bittorrent.Counts
	// fams[0] is IPv4, fams[1] IPv6, fams[2] WebRTC.
	fams [3]snapFamily
}

type snapFamily struct {
	peers   []bittorrent.Peer
	seeders int
}

func newSnapshot(r *transport.FetchReply, at time.Time) *snapshot {
	s := &snapshot{at: at, counts: r.Counts}
	var size [3]int
	for _, p := range r.Peers {
		fam := familyOf(p.Addr)
		size[fam]++
		if p.Seeder {
			s.fams[fam].seeders++
		}
	}
	var next [3][2]int // next[family]: where the next seeder and leecher go
	for fam := range s.fams {
		s.fams[fam].peers = make([]bittorrent.Peer, size[fam])
		next[fam] = [2]int{0, s.fams[fam].seeders}
	}
	for _, p := range r.Peers {
		fam, role := familyOf(p.Addr), 1
		if p.Seeder {
			role = 0
		}
		s.fams[fam].peers[next[fam][role]] = p.Peer
		next[fam][role]++
	}
	return s
}

// with returns a snapshot of the union of s and r, taken when s was.
func (s *snapshot) with(r *transport.FetchReply, maxPerFamily int) *snapshot {
	own := &transport.FetchReply{Counts: s.counts}
	for _, f := range s.fams {
		for i, p := range f.peers {
			own.Peers = append(own.Peers, transport.SwarmPeer{Peer: p, Seeder: i < f.seeders})
		}
	}
	return newSnapshot(mergeReplies(own, r, maxPerFamily), s.at)
}

// familyOf is the index into snapshot.fams of a's family.
func familyOf(a netip.AddrPort) int {
	switch store.Family(a) {
	case 6:
		return 1
	case store.FamilyWebRTC:
		return 2
	}
	return 0
}

// choose hands out up to n peers by the store's rule (store.Walk), so a
// swarm read from a copy answers as the owner's store would. The
// announcer's state is exact when the snapshot holds its whole family.
func (s *snapshot) choose(announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.PeerState) {
	if store.Family(announcer) == 0 {
		return dst, bittorrent.Absent
	}
	f := &s.fams[familyOf(announcer)]
	self := -1
	if announcer.Port() != 0 {
		me := netip.AddrPortFrom(announcer.Addr().Unmap(), announcer.Port())
		self = slices.IndexFunc(f.peers, func(p bittorrent.Peer) bool { return samePeer(p.Addr, me) })
	}
	return store.ChoosePeers(f.peers, f.seeders, self, seeder, n, dst)
}

func samePeer(a, self netip.AddrPort) bool {
	return a.Port() == self.Port() && a.Addr().Unmap() == self.Addr()
}
