package cluster

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// The deciding half of anti-entropy, pure functions of the view and the
// digests, as plan.go is for handoff; antientropy.go does the I/O.
//
// Two owners of the same swarms compare their copies as Dynamo-style
// stores do, coarse to fine: a sum of swarm digests for each of
// transport.DigestRanges ranges of infohashes, over the swarms both own
// (8 bytes a range, 32 KiB in all), then, in the ranges whose sums
// differ, one digest per swarm. Sums of digests do not depend on the order
// swarms are visited in, so each side computes them in one pass over its
// store, for every member it shares swarms with at once.

// aeRange is the range of infohash ih: its first 12 bits.
func aeRange(ih *bittorrent.InfoHash) int { return int(ih[0])<<4 | int(ih[1]>>4) }

// rangeSums are the digest sums, and the swarms counted, of the swarms
// this node owns together with one other member, by range.
type rangeSums struct {
	sum   [transport.DigestRanges]uint64
	count [transport.DigestRanges]uint32
}

func (r *rangeSums) add(d *store.SwarmDigest) {
	k := aeRange(&d.InfoHash)
	r.sum[k] += d.Digest
	r.count[k]++
}

// digestPlan sorts a node's swarm digests by the members it shares each
// swarm with. Feed it every digest of the store with add; peers then holds
// one rangeSums per member sharing any swarm with this node.
type digestPlan struct {
	v     *ring.View
	all   bool // every member owns every swarm
	peers map[int]*rangeSums
	buf   []int
}

func newDigestPlan(v *ring.View) *digestPlan {
	return &digestPlan{v: v, all: ownsAll(v), peers: map[int]*rangeSums{}}
}

func (p *digestPlan) add(d *store.SwarmDigest) {
	p.buf = coOwners(p.v, p.all, &d.InfoHash, p.buf[:0])
	for _, o := range p.buf {
		r := p.peers[o]
		if r == nil {
			r = &rangeSums{}
			p.peers[o] = r
		}
		r.add(d)
	}
}

// coOwners appends the members other than this node that own ih with it
// by v, none when this node does not own ih. all says every member owns
// every swarm, which spares the ring lookup.
func coOwners(v *ring.View, all bool, ih *bittorrent.InfoHash, dst []int) []int {
	if v.Self < 0 {
		return dst
	}
	if all {
		for i := range v.Members() {
			if i != v.Self {
				dst = append(dst, i)
			}
		}
		return dst
	}
	start := len(dst)
	dst = v.OwnersOf(*ih, dst)
	mine := false
	out := dst[:start]
	for _, o := range dst[start:] {
		if o == v.Self {
			mine = true
		} else {
			out = append(out, o)
		}
	}
	if !mine {
		return dst[:start]
	}
	return out
}

// differingRanges returns the ranges where the sums mine and theirs
// differ; with theirs not a full set of sums, every range mine has
// anything in, or theirs does.
func differingRanges(mine *rangeSums, theirs []uint64) []uint16 {
	var out []uint16
	for k := range transport.DigestRanges {
		var t uint64
		if len(theirs) == transport.DigestRanges {
			t = theirs[k]
		}
		if mine.sum[k] != t {
			out = append(out, uint16(k))
		}
	}
	return out
}

// wanted returns, as indices into listed, the swarms whose digest here
// (digest reports it and whether the swarm has a live peer here) is
// missing or different: those the sender of listed should repair.
func wanted(listed []transport.SwarmDigest, digest func(bittorrent.InfoHash) (uint64, bool)) []uint16 {
	var out []uint16
	for i := range listed {
		if d, ok := digest(listed[i].InfoHash); !ok || d != listed[i].Digest {
			out = append(out, uint16(i))
		}
	}
	return out
}

// viewFingerprint identifies how v places swarms, the same on every node
// that sees the same members: two nodes compare digests only when their
// fingerprints agree, since each sums the swarms it owns with the other.
func viewFingerprint(v *ring.View) uint64 {
	h := xxhash.New()
	var b [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(b[:], uint64(len(s)))
		_, _ = h.Write(b[:])
		_, _ = h.WriteString(s)
	}
	binary.BigEndian.PutUint64(b[:], uint64(v.OwnerCount(v.Replicas))) //nolint:gosec // G115: a count
	_, _ = h.Write(b[:])
	for i, m := range v.Members() {
		put(m.Name)
		put(m.Datacenter)
		put(m.Zone)
		put(v.Boots[i])
	}
	return h.Sum64()
}
