package store

import (
	"hash/maphash"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// swarmTable is one shard's swarms: the swarm records packed by position
// into fixed-size chunks, and an open-addressing index from infohash to
// position. A Go map of pointers cost about 84 bytes a swarm on top of the
// swarm itself, and never shrinks; this table costs a 4-byte slot at most
// three-quarters full, gives its chunks and slots back as swarms leave,
// and keeps a swarm at its address until it is removed, which only the
// collector and Drop do (under Memory.gcMu), so the collector can hold a
// swarm across releases of the shard lock.
//
// A slot is 0 when empty, else the swarm's position plus one in its low
// posBits bits and the top bits of the infohash's hash as a tag in the
// rest, so a probe rarely reads a swarm that is not the one it looks for.
// The hash is the store's keyed maphash of the infohash: its low bits
// choose the shard, bits from 16 up the home slot, the top 8 the tag.
type swarmTable struct {
	slots  []uint32 // a power of two long, or nil when empty
	chunks []*swarmChunk
	n      int // swarms, at positions 0 to n-1
}

const (
	// chunkLen swarms of 48 bytes and the 8-byte header Go gives an
	// object with pointers fill a 1024-byte allocation exactly: 32 would
	// take a 1792-byte one.
	chunkLen = 21
	posBits  = 24
	posMask  = 1<<posBits - 1
	// maxShardSwarms is the most swarms a shard can index (positions
	// are stored plus one in posBits bits).
	maxShardSwarms = posMask - 1
	minTableSlots  = 8
	homeShift      = 16 // the bits below choose the shard (at most 65536)
)

type swarmChunk [chunkLen]swarm

func slotTag(h uint64) uint32 { return uint32(h>>56) << posBits }

func (t *swarmTable) home(h uint64) int { return int((h >> homeShift) & uint64(len(t.slots)-1)) } //nolint:gosec // G115: a length is never negative

// at returns the swarm at position pos < n.
func (t *swarmTable) at(pos int) *swarm { return &t.chunks[pos/chunkLen][pos%chunkLen] }

// lookup returns the position of swarm ih, whose hash is h, or -1.
func (t *swarmTable) lookup(ih *bittorrent.InfoHash, h uint64) int {
	if len(t.slots) == 0 {
		return -1
	}
	mask, tag := len(t.slots)-1, slotTag(h)
	for i := t.home(h); ; i = (i + 1) & mask {
		v := t.slots[i]
		if v == 0 {
			return -1
		}
		if v&^posMask == tag {
			if pos := int(v&posMask) - 1; t.at(pos).ih == *ih {
				return pos
			}
		}
	}
}

// get returns swarm ih, or nil.
func (t *swarmTable) get(ih *bittorrent.InfoHash, h uint64) *swarm {
	if pos := t.lookup(ih, h); pos >= 0 {
		return t.at(pos)
	}
	return nil
}

// insert adds swarm ih, which must not be present, and returns it, zero
// but for its infohash; nil when the shard holds maxShardSwarms already.
func (t *swarmTable) insert(ih *bittorrent.InfoHash, h uint64, seed maphash.Seed) *swarm {
	if t.n >= maxShardSwarms {
		return nil
	}
	if 4*(t.n+1) > 3*len(t.slots) {
		t.rebuild(max(minTableSlots, 2*len(t.slots)), seed)
	}
	pos := t.n
	if pos/chunkLen == len(t.chunks) {
		t.chunks = append(t.chunks, new(swarmChunk))
	}
	t.n++
	sw := t.at(pos)
	sw.ih = *ih
	t.place(h, pos)
	return sw
}

// place indexes position pos under hash h.
func (t *swarmTable) place(h uint64, pos int) {
	mask := len(t.slots) - 1
	i := t.home(h)
	for t.slots[i] != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = slotTag(h) | uint32(pos+1) //nolint:gosec // G115: pos < maxShardSwarms
}

// slotOf returns the slot pointing at pos, whose swarm hashes to h.
func (t *swarmTable) slotOf(h uint64, pos int, seed maphash.Seed) int {
	mask, want := len(t.slots)-1, slotTag(h)|uint32(pos+1) //nolint:gosec // G115: pos < maxShardSwarms
	for i, healed := t.home(h), false; ; i = (i + 1) & mask {
		switch t.slots[i] {
		case want:
			return i
		case 0:
			if healed {
				panic("store: swarm table cannot index its own swarm")
			}
			// Cannot happen; the positions are the truth, so index them
			// again rather than lose a swarm.
			t.rebuild(len(t.slots), seed)
			i, healed = t.home(h)-1, true
		}
	}
}

// remove deletes the swarm at pos, moving the last swarm into its place,
// and gives back memory the table no longer needs. It returns the swarm
// now at pos, or nil if pos was the last. Only the collector and Drop
// call it.
func (t *swarmTable) remove(pos int, seed maphash.Seed) (moved *swarm) {
	sw := t.at(pos)
	t.deleteSlot(t.slotOf(hashInfo(seed, &sw.ih), pos, seed), seed)
	last := t.n - 1
	if pos != last {
		lw := t.at(last)
		h := hashInfo(seed, &lw.ih)
		t.slots[t.slotOf(h, last, seed)] = slotTag(h) | uint32(pos+1) //nolint:gosec // G115: pos < maxShardSwarms
		*sw = *lw
		moved = sw
	}
	*t.at(last) = swarm{}
	t.n--
	switch {
	case t.n == 0:
		t.slots, t.chunks = nil, nil
		return moved
	case t.n%chunkLen == 0:
		c := t.n / chunkLen
		t.chunks[c] = nil
		t.chunks = t.chunks[:c]
		if 4*len(t.chunks) < cap(t.chunks) {
			t.chunks = append([]*swarmChunk(nil), t.chunks...)
		}
	}
	if len(t.slots) > minTableSlots && 8*t.n < len(t.slots) {
		t.rebuild(max(minTableSlots, tableSize(t.n)), seed)
	}
	return moved
}

// tableSize is the slot count for n swarms right after a rebuild: at most
// three-eighths full, so n can double before the next.
func tableSize(n int) int {
	size := minTableSlots
	for 3*size < 8*n {
		size *= 2
	}
	return size
}

// deleteSlot empties slot i, keeping the probe runs whole.
func (t *swarmTable) deleteSlot(i int, seed maphash.Seed) {
	deleteSlot(t.slots, i, func(v uint32) int { return t.home(hashInfo(seed, &t.at(int(v&posMask)-1).ih)) })
}

// rebuild indexes every swarm again in a table of size slots.
func (t *swarmTable) rebuild(size int, seed maphash.Seed) {
	t.slots = make([]uint32, size)
	for pos := range t.n {
		t.place(hashInfo(seed, &t.at(pos).ih), pos)
	}
}

// hashInfo is the store's keyed hash of an infohash.
func hashInfo(seed maphash.Seed, ih *bittorrent.InfoHash) uint64 { return maphash.Bytes(seed, ih[:]) }
