package ring

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"

	"github.com/cespare/xxhash/v2"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// DefaultVNodes is the number of virtual nodes per member when
// Options.VNodes is zero. A member's share of the ring is the sum of its
// vnodes' arcs, so its spread around the mean shrinks as 1/sqrt(vnodes).
// The target is a busiest member at most 1.10 × the mean at up to 100
// members, for any member names: with 1024 the busiest of 100 is typically
// 1.08 and unlucky names pass 1.10; with 2048 it is typically 1.06 and 1.10
// is about four and a half standard deviations away. Doubling again buys
// little and costs memory (8 bytes per vnode) and rebuild time, while the
// bucket index keeps a lookup's cost nearly independent of the count.
const DefaultVNodes = 2048

// Member is one node as placement sees it.
type Member struct {
	// Name identifies the node and is hashed into its ring positions, so it
	// must be unique and stable: renaming a node moves its swarms.
	Name string `json:"name"`
	// Datacenter groups nodes whose reads should stay local; see
	// Options.EveryDatacenter.
	Datacenter string `json:"datacenter,omitempty"`
	// Zone is the failure domain (rack, availability zone) within
	// Datacenter. Zone names are scoped to their datacenter, so "a" in two
	// datacenters is two zones.
	Zone string `json:"zone,omitempty"`
}

// Options tune placement. Every node must use the same Options (and the same
// members) to agree on owners.
type Options struct {
	// VNodes is the number of ring positions per member; zero means
	// DefaultVNodes. Changing it moves almost every swarm.
	VNodes int
	// EveryDatacenter gives every swarm at least one owner in each
	// datacenter, so reads stay local. With fewer replicas than datacenters
	// the owner list grows to one per datacenter: replicas is then a floor,
	// not a cap (see OwnerCount).
	EveryDatacenter bool
	// FullReplication makes every member an owner of every swarm while the
	// ring has at most this many members; 0 turns it off. In a small
	// cluster a local read is far cheaper than a fetch from another node,
	// and writes to the extra owners are batched, so holding everything
	// everywhere costs memory, not CPU.
	FullReplication int
}

// Ring is an immutable placement snapshot: the members and their vnodes.
// It is safe for concurrent use. Build a new Ring when membership changes;
// the cluster's handoff planner compares the owners in the two.
type Ring struct {
	members []Member // sorted by Name, so indices do not depend on input order
	zone    []int32  // zone id of each member
	dc      []int32  // datacenter id of each member
	dcs     int      // number of datacenters
	// zoneCap[k] is how many owners can be placed with at most k per zone;
	// placement round k stops there instead of circling the whole ring
	// looking for a zone that has no members left to give.
	zoneCap []int
	every   bool
	full    int // Options.FullReplication

	// vnodes are the ring positions, sorted. Each packs a position (the
	// top 48 bits) with the member index (the low 16 bits), so the ring is
	// one flat []uint64, half the size of a slice of structs, and ties
	// between positions break by member name, never by input order.
	vnodes []uint64
	// index[b] is the first vnode whose top bits are >= b, so a lookup
	// scans a handful of vnodes instead of binary-searching them all.
	index []uint32
	shift uint // 64 minus the number of bucket bits
}

const (
	memberBits = 16
	memberMask = 1<<memberBits - 1
	// maxMembers is the most members a Ring holds: a member index must fit
	// the low bits of a vnode.
	maxMembers = 1 << memberBits
)

// New builds the ring for members. Their order does not matter; names must
// be unique and non-empty. An empty member list gives a ring with no owners.
func New(members []Member, opts Options) (*Ring, error) {
	vn := opts.VNodes
	if vn == 0 {
		vn = DefaultVNodes
	}
	if opts.FullReplication < 0 {
		return nil, fmt.Errorf("ring: full replication %d is negative", opts.FullReplication)
	}
	if vn < 1 || vn > 1<<16 {
		return nil, fmt.Errorf("ring: vnodes %d is out of range; want 1 to 65536", opts.VNodes)
	}
	if len(members) > maxMembers {
		return nil, fmt.Errorf("ring: %d members; at most %d", len(members), maxMembers)
	}
	if len(members)*vn >= 1<<32 {
		return nil, fmt.Errorf("ring: %d members × %d vnodes is too many positions", len(members), vn)
	}
	for i, m := range members {
		if m.Name == "" {
			return nil, fmt.Errorf("ring: member %d has an empty name", i)
		}
	}
	r := &Ring{
		members: slices.Clone(members),
		zone:    make([]int32, len(members)),
		dc:      make([]int32, len(members)),
		every:   opts.EveryDatacenter,
		full:    opts.FullReplication,
	}
	slices.SortFunc(r.members, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	for i, m := range r.members {
		if i > 0 && r.members[i-1].Name == m.Name {
			return nil, fmt.Errorf("ring: member name %q appears twice", m.Name)
		}
	}

	// Number datacenters and zones in name order of their first member so
	// ids are deterministic; only equality of ids matters to placement.
	type zoneKey struct{ dc, zone string }
	dcIDs := map[string]int32{}
	zoneIDs := map[zoneKey]int32{}
	var zoneSize []int
	for i, m := range r.members {
		d, ok := dcIDs[m.Datacenter]
		if !ok {
			d = int32(len(dcIDs)) //nolint:gosec // G115: at most maxMembers, checked above
			dcIDs[m.Datacenter] = d
		}
		z, ok := zoneIDs[zoneKey{m.Datacenter, m.Zone}]
		if !ok {
			z = int32(len(zoneIDs)) //nolint:gosec // G115: at most maxMembers, checked above
			zoneIDs[zoneKey{m.Datacenter, m.Zone}] = z
			zoneSize = append(zoneSize, 0)
		}
		r.dc[i], r.zone[i] = d, z
		zoneSize[z]++
	}
	r.dcs = len(dcIDs)
	r.zoneCap = []int{0}
	for k := 1; len(members) > 0 && r.zoneCap[k-1] < len(members); k++ {
		c := 0
		for _, s := range zoneSize {
			c += min(s, k)
		}
		r.zoneCap = append(r.zoneCap, c)
	}

	r.vnodes = make([]uint64, 0, len(members)*vn)
	for i, m := range r.members {
		for v := range vn {
			r.vnodes = append(r.vnodes, vnodeToken(m.Name, v)&^memberMask|uint64(i))
		}
	}
	slices.Sort(r.vnodes)
	r.buildIndex()
	return r, nil
}

// vnodeToken is the ring position of member name's vnode v: xxhash64 of v as
// 4 big-endian bytes followed by the name. The fixed-size prefix keeps the
// encoding unambiguous for any name. This layout is pinned by the golden
// test: changing it makes nodes of different versions disagree on owners.
func vnodeToken(name string, v int) uint64 {
	var buf [4 + 64]byte
	b := binary.BigEndian.AppendUint32(buf[:0], uint32(v)) //nolint:gosec // G115: New caps vnodes at 1<<16
	b = append(b, name...)
	return xxhash.Sum64(b)
}

// keyToken is the ring position of a swarm: xxhash64 of the infohash, cut
// to the 48 bits vnodes keep. Its zero member bits sort it before any vnode
// at the same position, so that vnode owns it.
func keyToken(ih bittorrent.InfoHash) uint64 { return xxhash.Sum64(ih[:]) &^ memberMask }

// buildIndex fills the bucket index with at most eight vnodes per bucket on
// average: 64 bytes, one cache line, to scan per lookup.
func (r *Ring) buildIndex() {
	b := 0
	if n := len(r.vnodes) / 8; n > 1 {
		b = bits.Len(uint(n - 1)) // smallest power of two >= n
	}
	r.shift = uint(64 - b)
	r.index = make([]uint32, 1<<b+1)
	i := 0
	for bkt := range 1 << b {
		for i < len(r.vnodes) && r.vnodes[i]>>r.shift < uint64(bkt) {
			i++
		}
		r.index[bkt] = uint32(i)
	}
	r.index[1<<b] = uint32(len(r.vnodes)) //nolint:gosec // G115: New keeps members × vnodes below 1<<32
}

// search returns the first vnode at or after token h, wrapping to 0.
func (r *Ring) search(h uint64) int {
	bkt := h >> r.shift
	i, end := int(r.index[bkt]), int(r.index[bkt+1])
	for i < end && r.vnodes[i] < h {
		i++
	}
	if i == len(r.vnodes) {
		i = 0
	}
	return i
}

// Members returns the members sorted by name; Owners returns indices into
// it. The slice is shared: do not modify it.
func (r *Ring) Members() []Member { return r.members }

// Index returns the index in Members() of the member called name, or -1.
func (r *Ring) Index(name string) int {
	i, ok := slices.BinarySearchFunc(r.members, name, func(m Member, n string) int { return cmp.Compare(m.Name, n) })
	if !ok {
		return -1
	}
	return i
}

// OwnerCount is how many owners Owners returns for replicas: replicas
// (at least 1), raised to the number of datacenters with EveryDatacenter,
// and at most the number of members; every member while there are at most
// Options.FullReplication of them.
func (r *Ring) OwnerCount(replicas int) int {
	n := max(replicas, 1)
	if r.every {
		n = max(n, r.dcs)
	}
	if len(r.members) <= r.full {
		n = len(r.members)
	}
	return min(n, len(r.members))
}

// Owners appends the indices into Members() of the OwnerCount(replicas)
// owners of ih to dst, primary first, and returns the extended slice. It
// does not allocate when dst has room for them.
//
// The primary is the member of the first vnode at or after the infohash's
// position, walking clockwise. The others are the next distinct members
// along the walk, taken in rounds so that zones fill evenly: round k accepts
// a member only if its zone holds fewer than k owners so far, so owners are
// on distinct zones when there are enough zones. With EveryDatacenter a
// member whose datacenter already has an owner is skipped while the
// remaining slots are only just enough for the datacenters without one.
// Without EveryDatacenter no datacenter is reserved a slot, but as zones
// are scoped to their datacenter, owners still spread over datacenters
// when they are the only zones.
func (r *Ring) Owners(ih bittorrent.InfoHash, replicas int, dst []int) []int {
	if len(r.members) == 0 {
		return dst
	}
	return r.ownersAt(r.search(keyToken(ih)), r.OwnerCount(replicas), dst)
}

// ownersAt runs the owner walk from vnode start; see Owners.
//
// Rounds do not rescan the ring. A member is turned down for one of three
// reasons: it is already an owner, its datacenter is covered while the
// remaining slots are reserved for uncovered ones, or its zone is full for
// this round. The first two are permanent (remaining slots minus uncovered
// datacenters never grows), so round k+1 can resume at the first vnode
// round k turned down for a full zone, or where round k stopped, and give
// the same owners as a walk from start. Without zones that makes the whole
// lookup one pass over the ring.
func (r *Ring) ownersAt(start, want int, dst []int) []int {
	base := len(dst)
	uncovered := 0 // datacenters without an owner yet
	if r.every {
		uncovered = r.dcs
	}
	resume := 0 // steps from start where the next round begins
	for k := 1; len(dst)-base < want && k < len(r.zoneCap); k++ {
		limit := min(want, r.zoneCap[k])
		zoneFull := -1 // first step this round turned down for a full zone
		step := resume
		for ; step < len(r.vnodes) && len(dst)-base < limit; step++ {
			i := start + step
			if i >= len(r.vnodes) {
				i -= len(r.vnodes)
			}
			m := int(r.vnodes[i] & memberMask)
			owners := dst[base:]
			owner, inZone := r.tally(owners, m)
			if owner {
				continue
			}
			if inZone >= k {
				if zoneFull < 0 {
					zoneFull = step
				}
				continue
			}
			if r.every {
				covered := r.dcCovered(owners, m)
				if covered && want-len(owners) <= uncovered {
					continue
				}
				if !covered {
					uncovered--
				}
			}
			dst = append(dst, m)
		}
		resume = step
		if zoneFull >= 0 {
			resume = zoneFull
		}
	}
	return dst
}

// tally reports whether m is already an owner and how many owners share its
// zone.
func (r *Ring) tally(owners []int, m int) (owner bool, inZone int) {
	z := r.zone[m]
	for _, o := range owners {
		if o == m {
			return true, 0
		}
		if r.zone[o] == z {
			inZone++
		}
	}
	return false, inZone
}

// dcCovered reports whether an owner shares m's datacenter.
func (r *Ring) dcCovered(owners []int, m int) bool {
	for _, o := range owners {
		if r.dc[o] == r.dc[m] {
			return true
		}
	}
	return false
}
