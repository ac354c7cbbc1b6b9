package cluster

import (
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// handoffState is what one handoff pass leaves for the next. The handoff
// loop owns it.
type handoffState struct {
	// baseline is the view of the last pass that moved everything it had
	// to, or nil before the first such pass. Until a pass settles the
	// baseline stays, so a pass compares against the last view whose moves
	// are known to be done, however often views change in between.
	baseline *ring.View
	// pending holds the swarms handed over once that this node does not
	// own, with the time of the pass that first sent them.
	pending map[bittorrent.InfoHash]time.Time
}

// handoffPlan decides one handoff pass. It does no I/O and reads no clock:
// the state the last pass left, the current view, the swarms held and now
// go in; what to send where, what to drop and the next state come out, the
// same every time for the same inputs. Its caller does
// the I/O: it walks the store, calls swarm for each swarm held, sends
// what the move says, records the move once its sends are queued, and
// hands finish the swarms whose sends failed.
//
// For each swarm, with its owners now and in the baseline:
//   - owners that are new get it from one node: the first current owner
//     that was an owner before, if this is that node;
//   - a node that has stopped owning it and was an owner before also sends
//     it to the new owners, then drops it, in case that first owner lags;
//   - a node that holds it without ever having owned it (a stray write
//     from a node with an older view) sends it to all owners and drops it.
//
// A node lets go of a swarm in two passes: the first sends, the second,
// dropGrace later, sends again and drops. Writes routed by an older view
// can still land here for a moment after the view changed; the second
// copy carries them. A swarm whose send fails is kept for another pass.
type handoffPlan struct {
	baseline  *ring.View // the last pass's, maybe nil
	prev, cur *ring.View
	pending   map[bittorrent.InfoHash]time.Time // the last pass's; read only
	now       time.Time

	next  map[bittorrent.InfoHash]time.Time // pending after this pass
	drops []bittorrent.InfoHash             // second passes: drop once sent

	owners, before, to []int // scratch for swarm
}

// move is what one pass does with one swarm held here.
type move struct {
	ih bittorrent.InfoHash
	// to are the members to send the swarm to, as indices into the current
	// view's Members(). It is only valid until the next call to swarm.
	to []int
	// release is set when this node does not own the swarm: it is on its
	// way out, in two passes.
	release bool
	// drop is set on the second of those passes: drop the swarm once it is
	// sent, unless a send fails.
	drop bool
	// since is when the first pass sent it, for a release.
	since time.Time
}

// newHandoffPlan starts planning a pass over cur at now.
func newHandoffPlan(st handoffState, cur *ring.View, now time.Time) *handoffPlan {
	prev := st.baseline
	if prev == nil {
		prev = cur
	}
	return &handoffPlan{baseline: st.baseline, prev: prev, cur: cur, pending: st.pending, now: now, next: map[bittorrent.InfoHash]time.Time{}}
}

// owner identifies a member across views: a node that restarted under the
// same name has a new boot and, having lost its store, counts as new.
type owner struct{ name, boot string }

func ownerAt(v *ring.View, i int) owner { return owner{v.Members()[i].Name, v.Boots[i]} }

// swarm decides what to do with ih, held here. Only record, once the
// move has been carried out, changes what the pass decides.
func (p *handoffPlan) swarm(ih bittorrent.InfoHash) move {
	v, prev := p.cur, p.prev
	m := move{ih: ih}
	p.owners = v.OwnersOf(ih, p.owners[:0])
	if len(p.owners) == 0 {
		return m // no members at all: keep it for when there are
	}
	p.before = prev.OwnersOf(ih, p.before[:0])
	var wasOwner bool
	if v.Self >= 0 {
		wasOwner = containsOwner(prev, p.before, ownerAt(v, v.Self))
	} else {
		// Leaving: this node is in no view of its own; compare by name
		// against the baseline.
		wasOwner = prev.Self >= 0 && containsOwner(prev, p.before, ownerAt(prev, prev.Self))
	}
	mine := isOwner(p.owners, v.Self)
	p.to = p.to[:0]
	switch {
	case mine:
		pusher := -1
		for _, o := range p.owners {
			if containsOwner(prev, p.before, ownerAt(v, o)) {
				pusher = o
				break
			}
		}
		if pusher == v.Self {
			p.to = appendNew(p.to, v, p.owners, prev, p.before)
		}
	case wasOwner:
		p.to = appendNew(p.to, v, p.owners, prev, p.before)
	default:
		p.to = append(p.to, p.owners...)
	}
	m.to = p.to
	if mine {
		return m
	}
	m.release = true
	first, seen := p.pending[ih]
	switch {
	case seen && p.now.Sub(first) >= dropGrace:
		m.drop, m.since = true, first
	case seen:
		m.since = first
	default:
		m.since = p.now
	}
	return m
}

// record notes that m was carried out: its sends, if any, are queued.
func (p *handoffPlan) record(m move) {
	switch {
	case m.drop:
		p.drops = append(p.drops, m.ih)
	case m.release:
		p.next[m.ih] = m.since
	}
}

// finish ends the pass, given the swarms with a send that failed. It
// returns the swarms to drop now, the state for the next pass and whether
// this pass settled: it moved everything and has nothing left to drop, so
// its view becomes the baseline.
func (p *handoffPlan) finish(failed map[bittorrent.InfoHash]bool) (drop []bittorrent.InfoHash, next handoffState, settled bool) {
	for _, ih := range p.drops {
		if failed[ih] {
			p.next[ih] = p.pending[ih]
			continue
		}
		drop = append(drop, ih)
	}
	next = handoffState{baseline: p.baseline, pending: p.next}
	settled = len(failed) == 0 && len(p.next) == 0
	if settled {
		next.baseline = p.cur
	}
	return drop, next, settled
}

// appendNew appends the owners in now that were not owners in before.
func appendNew(dst []int, v *ring.View, now []int, prev *ring.View, before []int) []int {
	for _, o := range now {
		if o != v.Self && !containsOwner(prev, before, ownerAt(v, o)) {
			dst = append(dst, o)
		}
	}
	return dst
}

func containsOwner(v *ring.View, owners []int, id owner) bool {
	for _, o := range owners {
		if ownerAt(v, o) == id {
			return true
		}
	}
	return false
}
