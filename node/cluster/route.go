package cluster

import (
	"slices"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// readRoute is where one read of a swarm goes, as planRead decides it.
type readRoute struct {
	// local: this node's own copy answers for the swarm alone.
	local bool
	// ask lists the members to ask, most preferred first; empty with
	// local, and when no member can be asked (the read fails).
	ask []int
	// merge: ask every member of ask at once and merge their answers,
	// because a copy may lack part of the swarm (the view changed within
	// the trust window). Otherwise ask ask[0] alone, and the next member
	// only once hedgeDelay has passed without an answer or the one asked
	// has failed: every owner's copy is whole, so one answer is enough.
	merge bool
	// own: this node owns the swarm; its copy joins a merged answer.
	own bool
	// equal is how many members at the head of ask are equally good to
	// ask first (same datacenter class, link state): a batch may ask
	// any of them first (coverAsks).
	equal int
}

// planRead is the read rule, in one place: for swarm ih, whose owners in
// v are owners, it says whether this node answers from its own copy, and
// otherwise whom to ask and how. It does no I/O and reads no clock: the
// view, the trust state s (which copies are whole) and failing (whether a
// member's data channel is failing now, as links judges it at the time
// the caller passes in) go in. Members are indices into v.Members(); the
// route's ask is appended to dst.
//
// In the steady state (nothing changed since the trusted view) every
// owner's copy is whole, so a node that does not own ih asks one owner:
// the first of the owners in this node's datacenter whose link is not
// failing, in ring order, then the others in the same order, as hedges.
// Within a trust window it asks every member that may hold part of the
// swarm and merges (readTargetsIn).
func planRead(v *ring.View, s *trustState, ih bittorrent.InfoHash, owners []int, failing func(o int) bool, dst []int) readRoute {
	if localAloneIn(v, s, ih, owners) {
		return readRoute{local: true}
	}
	own := isOwner(owners, v.Self)
	if own || s == nil || !s.steady() || s.trusted != v {
		return readRoute{ask: readTargetsIn(v, s, ih, owners, dst), merge: true, own: own}
	}
	dc := ""
	if v.Self >= 0 {
		dc = v.Members()[v.Self].Datacenter
	}
	// Best class first: near and working, far and working, near and
	// failing, far and failing; ring order within a class.
	start := len(dst)
	dst = otherOwners(v, owners, dst)
	class := func(o int) int {
		k := 0
		if v.Self >= 0 && v.Members()[o].Datacenter != dc {
			k++
		}
		if failing(o) {
			k += 2
		}
		return k
	}
	ask := dst[start:]
	equal := min(1, len(ask))
	if len(ask) > 1 {
		// Each owner's class once: failing takes the links' lock.
		var buf [8]int
		classes := buf[:0]
		for _, o := range ask {
			classes = append(classes, class(o))
		}
		// Insertion sort, stable: a handful of owners.
		for i := 1; i < len(ask); i++ {
			for j := i; j > 0 && classes[j] < classes[j-1]; j-- {
				ask[j], ask[j-1] = ask[j-1], ask[j]
				classes[j], classes[j-1] = classes[j-1], classes[j]
			}
		}
		for equal < len(ask) && classes[equal] == classes[0] {
			equal++
		}
	}
	return readRoute{ask: dst, equal: equal}
}

// coverAsks chooses, for the single-owner reads of one batch, which of
// each read's equally good members (asks[i][:equal[i]]) it asks first, so
// the batch asks as few members as it can: each member asked costs a
// round trip on the data channel whatever it is asked, while the reads of
// a batch are spread over owners by the ring. With replicas 2 at four
// nodes, every swarm a node does not own is held by two of the other
// three, so two members can answer a whole batch, where asking each
// swarm's first owner asks all three.
//
// Reads with one good member keep it, and the members they ask take every
// other read they can answer; the rest go greedily to the member that
// answers most of those left, the lowest index on a tie. The chosen
// member is moved to the front of asks[i]; the others keep their order,
// as hedges. It does no I/O.
func coverAsks(asks [][]int, equal []int) {
	// Members are small indices into the view: counts and the members
	// already asked are slices by index, so a batch allocates two.
	n, left := 0, 0
	for i, a := range asks {
		for _, o := range a {
			n = max(n, o+1)
		}
		if equal[i] > 1 {
			left++
		}
	}
	if left == 0 {
		return
	}
	counts := make([]int, n)
	done := make([]bool, len(asks))
	take := func(o int) {
		for i, a := range asks {
			if done[i] || equal[i] <= 1 {
				continue
			}
			if k := slices.Index(a[:equal[i]], o); k >= 0 {
				copy(a[1:k+1], a[:k])
				a[0] = o
				done[i] = true
				left--
			}
		}
	}
	// The members the batch asks anyway, in index order.
	for i, a := range asks {
		if equal[i] <= 1 && len(a) > 0 {
			counts[a[0]] = 1
		}
	}
	for o, asked := range counts {
		if asked > 0 {
			take(o)
		}
	}
	for left > 0 {
		clear(counts)
		best := -1
		for i, a := range asks {
			if !done[i] && equal[i] > 1 {
				for _, o := range a[:equal[i]] {
					counts[o]++
					if best < 0 || counts[o] > counts[best] || counts[o] == counts[best] && o < best {
						best = o
					}
				}
			}
		}
		take(best)
	}
}

// hedgeDelay is how long a read waits for the member it asked before it
// asks the next: half the read timeout, so that the hedge still has the
// other half.
func hedgeDelay(readTimeout time.Duration) time.Duration { return readTimeout / 2 }

// failingAt returns whether member o of v's data channel fails at now,
// for planRead.
func (c *Cluster) failingAt(v *ring.View, now time.Time) func(o int) bool {
	return func(o int) bool {
		l := c.links.snapshot(v.DataAddrs[o])
		return l.state(now) == LinkFailing
	}
}
