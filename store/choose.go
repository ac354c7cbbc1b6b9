package store

import (
	"math/rand/v2"
	"net/netip"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// FamilyWebRTC is Family's answer for a WebRTC address.
const FamilyWebRTC = 1

// Family is the address family whose peers an announcer is given: 4 for
// IPv4, including IPv4-mapped IPv6 addresses, 6 for IPv6, FamilyWebRTC
// for a WebRTC address (bittorrent.IsWebRTC), and 0 for an invalid
// address, which is given none.
func Family(announcer netip.AddrPort) int {
	switch ip := announcer.Addr().Unmap(); {
	case ip.Is4():
		return 4
	case bittorrent.IsWebRTCIP(ip):
		return FamilyWebRTC
	case ip.Is6():
		return 6
	}
	return 0
}

// Walk is the peer choice of Store.AnnouncePeers over one address family
// of one swarm, the announcer's, as positions: [0, seeders) seed and
// [seeders, total) leech. Every copy of a swarm, packed records in Memory
// or a swarm fetched from another node, hands out peers by walking one,
// so they all follow one rule:
//   - seeders first for a leecher, leechers first for a seeder, the rest
//     from the other group;
//   - never the announcer's own position;
//   - within a group, a random start and a random stride coprime to the
//     group's size: every position once, in an order that differs between
//     calls, without a shuffle buffer.
//
// It does not allocate. A Walk is used by one goroutine.
type Walk struct {
	self, want int
	// group is the one being walked; next, the other, while it is still
	// to come. i counts the steps taken in group, at pos.
	group, next span
	pos, step   int
	i           int
}

// span is a group of positions [lo, lo+size).
type span struct{ lo, size int }

// Choose starts the walk of up to n of total peers, the first seeders of
// them seeding, for an announcer at position self (-1 when it is not
// among them) that seeds or not. It also returns the announcer's state.
func Choose(seeders, total, self int, seeder bool, n int) (Walk, bittorrent.PeerState) {
	state := bittorrent.Absent
	switch {
	case self < 0 || self >= total:
		self = -1
	case self < seeders:
		state = bittorrent.Seeding
	default:
		state = bittorrent.Leeching
	}
	seeds, leechs := span{0, seeders}, span{seeders, total - seeders}
	w := Walk{self: self, want: max(n, 0), group: seeds, next: leechs}
	if seeder {
		w.group, w.next = leechs, seeds
	}
	w.begin()
	return w, state
}

// begin starts walking w.group.
func (w *Walk) begin() {
	w.i = 0
	if w.group.size > 0 && w.want > 0 {
		w.pos, w.step = randomWalk(w.group.size)
	}
}

// Fill writes the next positions to hand out into buf, as many as fit,
// and returns the part it wrote: empty once n are out or no peer is left.
// Handing positions out a buffer at a time keeps the caller's decoding
// loop free of a call per peer.
func (w *Walk) Fill(buf []int) []int {
	k := 0
	for k < len(buf) && w.want > 0 {
		if w.i == w.group.size {
			if w.next.size == 0 {
				break
			}
			w.group, w.next = w.next, span{}
			w.begin()
		}
		// The walk of one group, on locals: no loads and stores through w
		// per peer.
		lo, size, pos, step, i, self := w.group.lo, w.group.size, w.pos, w.step, w.i, w.self
		k0, end := k, min(len(buf), k+w.want)
		for ; k < end && i < size; i++ {
			if p := lo + pos; p != self {
				buf[k] = p
				k++
			}
			if pos += step; pos >= size {
				pos -= size
			}
		}
		w.want -= k - k0
		w.pos, w.i = pos, i
	}
	return buf[:k]
}

// ChoosePeers walks peers, one family's peers of a swarm with its
// seeders first, and appends to dst the ones handed out. It is Walk for a
// copy of a swarm kept as a slice.
func ChoosePeers(peers []bittorrent.Peer, seeders, self int, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.PeerState) {
	w, state := Choose(seeders, len(peers), self, seeder, n)
	var buf [32]int
	for {
		pos := w.Fill(buf[:])
		for _, i := range pos {
			dst = append(dst, peers[i])
		}
		if len(pos) < len(buf) {
			return dst, state
		}
	}
}

// randomWalk returns a random start in [0, size) and a random step
// coprime to size: stepping from start visits every position once.
func randomWalk(size int) (start, step int) {
	switch {
	case size > 2:
		start = rand.IntN(size)
		step = 1 + rand.IntN(size-1)
		for gcd(step, size) != 1 {
			step++ // terminates: size-1 is coprime to size
		}
		return start, step
	case size == 2:
		return rand.IntN(2), 1
	}
	return 0, 1
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
