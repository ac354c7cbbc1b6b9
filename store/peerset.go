package store

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// A stored peer is a fixed-size record packed into a byte slice, because a
// Go map or a slice of structs per swarm costs more than the peer itself
// (see BenchmarkMemory). Layout, all without padding:
//
//	IPv4 (30 bytes): ip[4] port[2] id[20] seen[4]
//	IPv6 (42 bytes): ip[16] port[2] id[20] seen[4]
//
// ip and port are big-endian, so ip:port is the peer's identity as it appears
// in compact peer lists and compares as plain bytes. seen is little-endian:
// its low 31 bits are the last announce in whole seconds since the store's
// epoch (68 years), its top bit is set once the peer has seeded (seededBit).
// Whether a peer seeds now is not stored in the record but by its position:
// a set keeps its seeders before its leechers.
const (
	idLen     = len(bittorrent.PeerID{})
	seenLen   = 4
	addrLen4  = 4 + 2
	addrLen6  = 16 + 2
	stride4   = addrLen4 + idLen + seenLen
	stride6   = addrLen6 + idLen + seenLen
	maxStride = stride6

	// seededBit in seen marks a peer that has completed or seeded in this
	// swarm since it joined, so its completion is counted once however
	// often it is repeated or applied again. It is sticky: going back to
	// leeching keeps it; only leaving the swarm forgets it.
	seededBit = 1 << 31
	// maxSeen is the largest timestamp the low bits of seen hold.
	maxSeen = seededBit - 1
)

// Sets with more than smallMax records get a hash index. Below that a
// linear scan (at most ~1 KiB, read sequentially) costs at most ~25ns
// against ~14ns for an index lookup (BenchmarkPeerSetFind), while an index
// would add at least 256 bytes to the swarm, about 10 bytes per peer at that
// size. An index is dropped again only at half that size, so a set hovering
// around the threshold does not rebuild it on every change.
const (
	smallMax      = 32
	dropIndexAt   = smallMax / 2
	minIndexSlots = 64
)

// family describes how one address family's peers are packed into records.
type family struct {
	addrLen int
	stride  int
	// srcLen is how much of an address names its source, the unit that
	// max_peers_per_source counts: an IPv4 address, an IPv6 /64, one
	// WebSocket's WebRTC address.
	srcLen int
	v6     bool
	kind   familyKind
	// seed keys the index hash per store, so clients cannot choose
	// addresses that collide.
	seed maphash.Seed
	// perSource is the store's max_peers_per_source (0: no limit), or nil
	// for a limit always on. Without a limit, indexes built from then on
	// hash whole addresses (see index.whole).
	perSource *atomic.Int64
}

// familyKind tells a store's families apart. WebRTC peers are packed like
// IPv6 peers (their addresses are IPv6, see bittorrent.WebRTCAddr) but kept
// in sets of their own.
type familyKind uint8

const (
	kindV4 familyKind = iota
	kindV6
	kindRTC
)

// Source lengths in bytes: a whole IPv4 address, the /64 of an IPv6 one
// (the least a subscriber is given), and a whole WebRTC address: they all
// share one /64 (100::/64, then the node and the socket), and each names
// one client's socket.
const (
	srcLen4   = 4
	srcLen6   = 8
	srcLenRTC = 16
)

func newFamily(v6 bool, seed maphash.Seed) family {
	if v6 {
		return family{addrLen: addrLen6, stride: stride6, srcLen: srcLen6, v6: true, kind: kindV6, seed: seed}
	}
	return family{addrLen: addrLen4, stride: stride4, srcLen: srcLen4, kind: kindV4, seed: seed}
}

func newRTCFamily(seed maphash.Seed) family {
	f := newFamily(true, seed)
	f.kind, f.srcLen = kindRTC, srcLenRTC
	return f
}

// hash places an address in a set's index by its source only, so all the
// ports of one source share a probe run and find can count them on the
// way (see index.lookup). max_peers_per_source bounds how long such a run
// gets; the keyed hash keeps clients from choosing sources that collide.
func (f *family) hash(addr []byte) uint64 { return maphash.Bytes(f.seed, addr[:f.srcLen]) }

// limited reports whether max_peers_per_source is in force, so finds must
// count a source's peers.
func (f *family) limited() bool { return f.perSource == nil || f.perSource.Load() > 0 }

// sameSource reports whether two addresses (or records) share a source.
func (f *family) sameSource(a, b []byte) bool { return string(a[:f.srcLen]) == string(b[:f.srcLen]) }

// decode fills p from a record. It writes in place because building a Peer
// and copying it into the caller's slice costs twice as much.
func (f *family) decode(p *bittorrent.Peer, r []byte) {
	var ip netip.Addr
	if f.v6 {
		ip = netip.AddrFrom16([16]byte(r[:16]))
	} else {
		ip = netip.AddrFrom4([4]byte(r[:4]))
	}
	p.Addr = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(r[f.addrLen-2:f.addrLen]))
	p.ID = bittorrent.PeerID(r[f.addrLen : f.addrLen+idLen])
}

// maxAppend is how many records appendPeers decodes at a time.
const maxAppend = 32

// appendPeers decodes the records at positions pos, at most maxAppend of
// them, onto dst. In a big swarm the chosen records lie far apart, each
// a cache miss; decoding one after another waits for each miss in turn.
// So for IPv4, the answer's common case, a first pass loads the two words
// of each record that cover its address and ID, loads that depend on
// nothing, so their misses overlap, and the second pass builds the peers
// from those words and the cache lines they brought in.
func (s *peerSet) appendPeers(f *family, pos []int, dst []bittorrent.Peer) []bittorrent.Peer {
	if f.v6 || len(pos) > maxAppend {
		for _, i := range pos {
			dst = append(dst, bittorrent.Peer{})
			f.decode(&dst[len(dst)-1], s.rec(f, i))
		}
		return dst
	}
	// head: address, port and the ID's first 2 bytes; tail: the ID's
	// last 8 bytes (the record's bytes 18 to 26).
	const tailAt = addrLen4 + idLen - 8
	var head, tail [maxAppend]uint64
	for j, i := range pos {
		r := s.recs[i*stride4 : i*stride4+stride4]
		head[j] = binary.LittleEndian.Uint64(r)
		tail[j] = binary.LittleEndian.Uint64(r[tailAt:])
	}
	for j, i := range pos {
		r := s.recs[i*stride4 : i*stride4+stride4]
		h := head[j]
		dst = append(dst, bittorrent.Peer{})
		p := &dst[len(dst)-1]
		p.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(h), byte(h >> 8), byte(h >> 16), byte(h >> 24)}),
			uint16(byte(h>>32))<<8|uint16(byte(h>>40)))
		copy(p.ID[:tailAt-addrLen4], r[addrLen4:tailAt])
		binary.LittleEndian.PutUint64(p.ID[tailAt-addrLen4:], tail[j])
	}
	return dst
}

// addrKey is a peer's identity in record form.
type addrKey struct {
	buf [addrLen6]byte
	n   uint8
	rtc bool // a WebRTC address (bittorrent.IsWebRTC)
}

// makeKey encodes ap, unmapping IPv4-mapped IPv6 addresses and dropping any
// IPv6 zone. It reports false for an invalid address; port 0 is encoded, so
// callers decide whether they accept it.
func makeKey(ap netip.AddrPort) (addrKey, bool) {
	var k addrKey
	ip := ap.Addr().Unmap()
	switch {
	case ip.Is4():
		a := ip.As4()
		copy(k.buf[:], a[:])
		k.n = addrLen4
	case ip.Is6():
		a := ip.As16()
		copy(k.buf[:], a[:])
		k.n = addrLen6
		k.rtc = bittorrent.IsWebRTCIP(ip)
	default:
		return k, false
	}
	binary.BigEndian.PutUint16(k.buf[k.n-2:], ap.Port())
	return k, true
}

func (k *addrKey) bytes() []byte { return k.buf[:k.n] }
func (k *addrKey) v6() bool      { return k.n == addrLen6 }
func (k *addrKey) port() uint16  { return binary.BigEndian.Uint16(k.buf[k.n-2 : k.n]) }

// peerSet holds one swarm's peers of one address family: n records in recs,
// the first nseed of them seeders and the rest leechers. Records move when
// peers leave or change group, so positions are not stable.
type peerSet struct {
	recs  []byte // exactly n records; the capacity is the slack for growth
	idx   *index // nil while the set is small enough to scan
	n     int32
	nseed int32
}

func (s *peerSet) rec(f *family, i int) []byte {
	o := i * f.stride
	return s.recs[o : o+f.stride : o+f.stride]
}

func (s *peerSet) addrAt(f *family, i int) []byte {
	o := i * f.stride
	return s.recs[o : o+f.addrLen : o+f.addrLen]
}

func (s *peerSet) seenAt(f *family, i int) uint32 {
	return s.seenWord(f, i) & maxSeen
}

// seeded reports whether the peer at i has completed or seeded since it
// joined the swarm.
func (s *peerSet) seeded(f *family, i int) bool {
	return s.seenWord(f, i)&seededBit != 0
}

func (s *peerSet) seenWord(f *family, i int) uint32 {
	o := (i+1)*f.stride - seenLen
	return binary.LittleEndian.Uint32(s.recs[o : o+seenLen])
}

// seenFor packs a timestamp and the seeded bit into a seen word.
func seenFor(seen uint32, seeded bool) uint32 {
	seen &= maxSeen
	if seeded {
		seen |= seededBit
	}
	return seen
}

func (s *peerSet) seeders() int  { return int(s.nseed) }
func (s *peerSet) leechers() int { return int(s.n - s.nseed) }

// find returns the position of the peer with address key, or -1, and the
// number of other peers of key's source it passed on the way: when the
// peer is absent, that is every peer of its source in the set, which is
// what max_peers_per_source is checked against.
func (s *peerSet) find(f *family, key []byte) (pos, same int) {
	if s.idx != nil {
		_, pos, same = s.idx.lookup(s, f, key, s.idx.hash(f, key))
		if pos < 0 && s.idx.whole && f.limited() {
			// The limit came back since the index was built: count
			// by scanning, until the next change rebuilds the index
			// (fitIndex).
			same = s.countSource(f, key)
		}
		return pos, same
	}
	// Compare the source first, as one word: calling the generic byte
	// comparison for every record costs more than the rest of the scan.
	if !f.v6 {
		// An IPv4 address and port are 6 bytes; a record is longer than
		// 8, so one load and a mask compare both, and the low 32 bits
		// alone the source. Many ports of one address (a NAT, or every
		// client of a benchmark on loopback) then cost no call each.
		want := uint64(binary.LittleEndian.Uint32(key)) | uint64(binary.LittleEndian.Uint16(key[4:]))<<32
		for i, o := 0, 0; i < int(s.n); i, o = i+1, o+stride4 {
			if x := binary.LittleEndian.Uint64(s.recs[o:o+8]) ^ want; uint32(x) == 0 {
				if x&(1<<48-1) == 0 {
					return i, same
				}
				same++
			}
		}
		return -1, same
	}
	want := binary.LittleEndian.Uint64(key)
	for i, o := 0, 0; i < int(s.n); i, o = i+1, o+f.stride {
		r := s.recs[o : o+f.addrLen]
		if binary.LittleEndian.Uint64(r) == want {
			if string(r) == string(key) {
				return i, same
			}
			if f.srcLen == srcLen6 || f.sameSource(r, key) {
				same++
			}
		}
	}
	return -1, same
}

// countSource returns how many peers of key's source the set holds.
func (s *peerSet) countSource(f *family, key []byte) (same int) {
	for i := range int(s.n) {
		if f.sameSource(s.addrAt(f, i), key) {
			same++
		}
	}
	return same
}

// fitIndex rebuilds the index if it hashes the other way than
// max_peers_per_source now asks for: by source while a limit is in force,
// by whole address without one, and reports whether it did. Called with
// the set writable.
func (s *peerSet) fitIndex(f *family) bool {
	if s.idx == nil || s.idx.whole != f.limited() {
		return false
	}
	s.buildIndex(f)
	return true
}

// add appends a peer that is not in the set yet.
func (s *peerSet) add(f *family, key []byte, id *bittorrent.PeerID, seen uint32, seeder bool) {
	i := int(s.n)
	if (i+1)*f.stride > cap(s.recs) {
		// Grow by a quarter: more slack would cost memory in the many
		// small swarms, less would copy too often in the big ones.
		s.resize(f, i+1+i/4)
	}
	s.recs = s.recs[:(i+1)*f.stride]
	r := s.rec(f, i)
	copy(r, key)
	copy(r[f.addrLen:], id[:])
	binary.LittleEndian.PutUint32(r[f.stride-seenLen:], seenFor(seen, seeder))
	s.n++
	switch {
	case s.idx != nil:
		s.idx.insert(i, s.idx.hash(f, key))
		if 2*int(s.n) > len(s.idx.slots) || (s.idx.tagged && int(s.n) >= maxTagged) {
			s.buildIndex(f)
		}
	case s.n > smallMax:
		s.buildIndex(f)
	}
	if seeder {
		s.swap(f, i, int(s.nseed))
		s.nseed++
	}
}

// update refreshes the record at i, marking it seeded if seeder; a peer
// marked seeded stays marked.
func (s *peerSet) update(f *family, i int, id *bittorrent.PeerID, seen uint32, seeder bool) {
	seeded := seeder || s.seeded(f, i)
	r := s.rec(f, i)
	copy(r[f.addrLen:], id[:])
	binary.LittleEndian.PutUint32(r[f.stride-seenLen:], seenFor(seen, seeded))
}

// setSeeder moves the record at i into the seeders or the leechers.
func (s *peerSet) setSeeder(f *family, i int, seeder bool) {
	switch {
	case seeder && i >= int(s.nseed):
		s.swap(f, i, int(s.nseed))
		s.nseed++
	case !seeder && i < int(s.nseed):
		s.swap(f, i, int(s.nseed)-1)
		s.nseed--
	}
}

// remove deletes the record at i. The record that takes position i, if any,
// comes from a higher position. It keeps the memory; call shrink when done
// removing.
func (s *peerSet) remove(f *family, i int) {
	if i < int(s.nseed) {
		// Make it the last seeder, then turn it into the first leecher.
		s.swap(f, i, int(s.nseed)-1)
		i = int(s.nseed) - 1
		s.nseed--
	}
	last := int(s.n) - 1
	s.swap(f, i, last)
	if s.idx != nil {
		slot := s.idx.slotOf(s, f, last)
		if slot < 0 {
			s.buildIndex(f) // cannot happen; heal instead of spinning
			slot = s.idx.slotOf(s, f, last)
		}
		s.idx.deleteSlot(s, f, slot)
	}
	s.n--
	s.recs = s.recs[:int(s.n)*f.stride]
}

// swap exchanges the records at i and j and their index entries.
func (s *peerSet) swap(f *family, i, j int) {
	if i == j {
		return
	}
	if s.idx != nil {
		si, sj := s.idx.slotOf(s, f, i), s.idx.slotOf(s, f, j)
		if si < 0 || sj < 0 {
			s.idx = nil // cannot happen; rebuilt below from the swapped records
		} else {
			// Each slot keeps its tag, its address's, and follows the
			// record to its new position.
			x := s.idx
			x.slots[si], x.slots[sj] = x.slots[si]&^x.posMask()|uint32(j+1), x.slots[sj]&^x.posMask()|uint32(i+1)
		}
	}
	var tmp [maxStride]byte
	ri, rj := s.rec(f, i), s.rec(f, j)
	copy(tmp[:], ri)
	copy(ri, rj)
	copy(rj, tmp[:f.stride])
	if s.idx == nil && s.n > smallMax {
		s.buildIndex(f)
	}
}

// resize moves the records to a buffer for capRecs records. The buffer is
// rounded up to the allocator's size class, and the rounding is kept as
// slack instead of being wasted.
func (s *peerSet) resize(f *family, capRecs int) {
	nb := slices.Grow([]byte(nil), capRecs*f.stride)
	nb = nb[:len(s.recs)]
	copy(nb, s.recs)
	s.recs = nb
}

// shrink gives memory back after removals: the index once the set is small
// or the index mostly empty, the records once less than half the capacity
// is used.
func (s *peerSet) shrink(f *family) {
	if s.idx != nil {
		switch {
		case s.n <= dropIndexAt:
			s.idx = nil
		case 8*int(s.n) < len(s.idx.slots) && len(s.idx.slots) > minIndexSlots:
			s.buildIndex(f)
		}
	}
	if s.n == 0 {
		s.recs = nil
		return
	}
	capRecs := cap(s.recs) / f.stride
	if n := int(s.n); 2*n < capRecs && capRecs > 4 {
		s.resize(f, n+n/4+1)
	}
}

// buildIndex replaces the index with a fresh one sized for the set, at most
// a third full so probe sequences stay short until it is half full.
func (s *peerSet) buildIndex(f *family) {
	size := minIndexSlots
	for size < 3*int(s.n) {
		size *= 2
	}
	x := &index{slots: make([]uint32, size), whole: !f.limited(), tagged: int(s.n) < maxTagged}
	for i := range int(s.n) {
		x.insert(i, x.hash(f, s.addrAt(f, i)))
	}
	s.idx = x
}

// index maps addresses to record positions for big sets: open addressing
// with linear probing over 4-byte slots, each 0 (empty) or position+1. It is
// kept at most half full, so a lookup probes about two slots.
//
// A tagged index keeps the top 8 bits of each entry's hash in the slot's
// top 8 bits (positions then fit in 24), so a probe passes the entries of
// other addresses (other sources) without reading their records: in a big
// swarm every record read is a cache miss, and most probes of an absent
// peer would read one or two. Sets of maxTagged peers or more are indexed
// untagged.
type index struct {
	slots  []uint32 // length is a power of two
	tagged bool
	// whole: addresses hash whole, port included, rather than by source.
	// Hashing by source lets a lookup count a source's peers on its way,
	// which max_peers_per_source needs, but makes all of a source's peers
	// one probe run: without the limit, many clients behind one address
	// (a NAT, a benchmark on loopback) would make every lookup in a big
	// swarm walk them all.
	whole bool
}

// hash places addr in the index: by whole address or by source (see whole).
func (x *index) hash(f *family, addr []byte) uint64 {
	if x.whole {
		return maphash.Bytes(f.seed, addr[:f.addrLen])
	}
	return f.hash(addr)
}

// maxTagged is the size from which a set's index is untagged: a tagged
// slot holds positions below 2^24, and the set may double before its
// index is rebuilt.
const maxTagged = 1 << 23

// posMask is the part of a slot that holds position+1.
func (x *index) posMask() uint32 {
	if x.tagged {
		return 1<<24 - 1
	}
	return 1<<32 - 1
}

// tag is the part of a slot that comes from the entry's hash h: zero in an
// untagged index.
func (x *index) tag(h uint64) uint32 {
	if x.tagged {
		return uint32(h>>56) << 24
	}
	return 0
}

// pos returns the position a non-empty slot value points at.
func (x *index) pos(v uint32) int { return int(v&x.posMask()) - 1 }

// lookup returns the slot holding key and its position, or the empty slot
// where the probe ended and -1, and the peers of key's source it passed.
// In an index by source, every peer of a source hashes to the same home
// slot, and linear probing keeps an entry between its home and the next
// empty slot, so a probe that ends empty has passed all of them; an index
// of whole addresses counts none.
//
// In a tagged index a slot whose tag differs holds another address and,
// in an index by source, another source, so its record is not read.
func (x *index) lookup(s *peerSet, f *family, key []byte, h uint64) (slot, pos, same int) {
	mask := uint64(len(x.slots) - 1)
	tag, posMask := x.tag(h), x.posMask()
	for i := h & mask; ; i = (i + 1) & mask {
		v := x.slots[i]
		if v == 0 {
			return int(i), -1, same
		}
		if v&^posMask != tag {
			continue
		}
		a := s.addrAt(f, int(v&posMask)-1)
		if string(a) == string(key) {
			return int(i), int(v&posMask) - 1, same
		}
		if !x.whole && f.sameSource(a, key) {
			same++
		}
	}
}

// insert records that the peer hashing to h is at pos.
func (x *index) insert(pos int, h uint64) {
	mask := uint64(len(x.slots) - 1)
	i := h & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = x.tag(h) | uint32(pos+1)
}

// slotOf returns the slot that points at pos, or -1 if none does.
func (x *index) slotOf(s *peerSet, f *family, pos int) int {
	mask := uint64(len(x.slots) - 1)
	h := x.hash(f, s.addrAt(f, pos))
	want := x.tag(h) | uint32(pos+1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch x.slots[i] {
		case want:
			return int(i)
		case 0:
			return -1
		}
	}
}

// deleteSlot empties slot i and shifts later entries of its probe run back,
// so lookups never need tombstones.
func (x *index) deleteSlot(s *peerSet, f *family, i int) {
	mask := uint64(len(x.slots) - 1)
	deleteSlot(x.slots, i, func(v uint32) int { return int(x.hash(f, s.addrAt(f, x.pos(v))) & mask) })
}

// deleteSlot empties slot i of an open-addressing table with linear
// probing, whose non-zero entries have their home slot given by home, and
// shifts later entries of its probe run back, so lookups never need
// tombstones. Both the swarm tables and the peer indexes use it.
func deleteSlot(slots []uint32, i int, home func(v uint32) int) {
	mask := len(slots) - 1
	for j := (i + 1) & mask; slots[j] != 0; j = (j + 1) & mask {
		v := slots[j]
		h := home(v)
		// The entry at j may fill the hole at i unless its home slot lies
		// cyclically in (i, j]: then a lookup would stop at i too early.
		var stays bool
		if i < j {
			stays = i < h && h <= j
		} else {
			stays = i < h || h <= j
		}
		if !stays {
			slots[i] = v
			i = j
		}
	}
	slots[i] = 0
}
