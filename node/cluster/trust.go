package cluster

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// maxTrustViews bounds the views a trust state remembers. More changes
// than this within one trust window forget the trusted view altogether,
// which only makes reads ask the other owners more often.
const maxTrustViews = 32

// trustState says which of this node's local copies are whole. trusted is
// a view in which every swarm this node owned was whole here; since are
// the views adopted after it, the current one last. A node that has owned
// a swarm in all of them has held it whole throughout: every write for it
// was routed here. received lists the swarms a previous owner has handed
// over since, whole as well.
//
// A state is replaced, never changed; received, which has its own lock,
// passes from one state to the next until the trusted view moves.
type trustState struct {
	trusted  *ring.View // nil: none yet (a node that has just started)
	since    []*ring.View
	at       time.Time // when since's last view was adopted
	received *receivedSet
}

type receivedSet struct {
	mu  sync.Mutex
	ihs map[bittorrent.InfoHash]struct{}
}

func newReceivedSet() *receivedSet {
	return &receivedSet{ihs: map[bittorrent.InfoHash]struct{}{}}
}

// maxSeenMembers bounds the members a node remembers having seen. Past
// it the memory starts afresh, which only makes a node that comes back
// after a partition look new.
const maxSeenMembers = 4096

// trust holds the current trustState; writers take mu.
type trust struct {
	mu   sync.Mutex
	cur  atomic.Pointer[trustState]
	seen map[owner]bool // every member of every view adopted
}

// adopt records that v is now current.
//
// A member that comes back (a process seen in an earlier view, not a new
// boot) was on the other side of a partition, or cut off: it took writes
// this node never saw, for swarms this node owned all along. Nothing is
// trusted then until the window has passed, so reads merge every owner's
// copy while the handoffs after the heal run.
func (t *trust) adopt(v *ring.View, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.cur.Load()
	next := &trustState{at: now, received: newReceivedSet()}
	var prev *ring.View
	if old != nil {
		next.trusted, next.received = old.trusted, old.received
		next.since = append(make([]*ring.View, 0, len(old.since)+1), old.since...)
		prev = old.since[len(old.since)-1]
	}
	if t.seen == nil || len(t.seen) > maxSeenMembers {
		t.seen = map[owner]bool{}
	}
	for i := range v.Members() {
		id := ownerAt(v, i)
		if t.seen[id] && (prev == nil || prev.Index(id.name) < 0 || prev.Boots[prev.Index(id.name)] != id.boot) {
			next.trusted = nil
		}
		t.seen[id] = true
	}
	next.since = append(next.since, v)
	if len(next.since) > maxTrustViews {
		next.trusted, next.since = nil, next.since[len(next.since)-1:]
	}
	t.cur.Store(next)
}

// settle makes v the trusted view if it is still current and has been
// for at least window: by then every previous owner that can reach this
// node has run a handoff pass for it and sent what it had (see
// trustWindow). It returns 0 if the trusted view moved to v, the time left
// if the window has not passed yet, and -1 if there is nothing to do.
func (t *trust) settle(v *ring.View, now time.Time, window time.Duration) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.cur.Load()
	if cur == nil || cur.since[len(cur.since)-1] != v || cur.steady() {
		return -1
	}
	if left := window - now.Sub(cur.at); left > 0 {
		return left
	}
	t.cur.Store(&trustState{trusted: v, since: []*ring.View{v}, at: cur.at, received: newReceivedSet()})
	return 0
}

// trustWindow is how long a view must have been current before this node
// trusts the copies of the swarms it gained with it, handed over or not.
// A previous owner that can reach this node retries a pass that failed
// within half a second and gives up on a request after mergeTimeout, and
// a pass no longer waits on nodes that left the view; so by then it has
// sent what it had, and what was sent is already trusted as received.
// Swarms nobody had to send (new since the change) are whole here anyway.
func (c *Cluster) trustWindow() time.Duration {
	return min(c.cfg.RepairInterval, mergeTimeout+handoffRetry)
}

// Trusted reports whether every local copy of the swarms this node owns
// is whole: no membership change is still within its trust window.
func (c *Cluster) Trusted() bool { return c.wholeIn(c.view.Load()) }

// wholeIn reports whether every local copy of the swarms this node owns in
// v is whole: v is the trusted view and nothing changed since. Then
// localAlone holds for every swarm this node owns, and a node that owns
// every swarm (ownsAll) reads without looking the owners up.
func (c *Cluster) wholeIn(v *ring.View) bool {
	s := c.trust.cur.Load()
	return s != nil && s.steady() && s.trusted == v
}

// received notes swarms handed to this node by a previous owner.
func (t *trust) received(ih func(int) bittorrent.InfoHash, n int) {
	cur := t.cur.Load()
	if cur == nil || cur.steady() {
		return
	}
	r := cur.received
	r.mu.Lock()
	for i := range n {
		r.ihs[ih(i)] = struct{}{}
	}
	r.mu.Unlock()
}

// steady reports that nothing changed since the trusted view.
func (s *trustState) steady() bool {
	return s.trusted != nil && len(s.since) == 1 && s.since[0] == s.trusted
}

// localAlone is the read rule: whether this node's own copy of swarm ih
// answers for the swarm by itself, or the other owners must be asked too.
// owners are ih's owners in v, the view the read routes by.
//
// It does when this node owns ih and has owned it (as this process) in
// every view since the trusted one, or a previous owner has handed it
// over since: then every write for ih came here. A node that has just
// gained ih (a failure, a leave or a join moved it here) holds only what
// was forwarded to it after the change, a few fresh announces, until the
// handoff arrives, which a slow or stuck previous owner can delay for
// seconds; answering from that alone would hide most of the swarm. It
// also does when no other member exists to ask.
//
// It is called on every read and allocates nothing; in the steady state
// (no change since the trusted view) it costs one ownership check.
func (c *Cluster) localAlone(v *ring.View, ih bittorrent.InfoHash, owners []int) bool {
	return localAloneIn(v, c.trust.cur.Load(), ih, owners)
}

// localAloneIn is localAlone by the trust state s.
func localAloneIn(v *ring.View, s *trustState, ih bittorrent.InfoHash, owners []int) bool {
	if !isOwner(owners, v.Self) {
		return false
	}
	if len(v.Members()) == 1 {
		return true
	}
	if s == nil {
		return false
	}
	if s.steady() && s.trusted == v {
		return true
	}
	self := ownerAt(v, v.Self)
	var buf [8]int
	whole := s.trusted != nil && containsOwner(s.trusted, s.trusted.OwnersOf(ih, buf[:0]), self)
	for _, w := range s.since {
		if !whole {
			break
		}
		if w != v {
			whole = containsOwner(w, w.OwnersOf(ih, buf[:0]), self)
		}
	}
	if whole {
		return true
	}
	s.received.mu.Lock()
	_, got := s.received.ihs[ih]
	s.received.mu.Unlock()
	return got
}

// heldBefore reports whether member o of v owned ih, as the same process,
// in this node's trusted view (or is an owner and nothing changed since):
// its copy is the whole swarm, not one still waiting for a handoff.
func (c *Cluster) heldBefore(v *ring.View, ih bittorrent.InfoHash, o int) bool {
	s := c.trust.cur.Load()
	switch {
	case s == nil || s.trusted == nil:
		return false
	case s.trusted == v:
		return true
	}
	var buf [8]int
	return containsOwner(s.trusted, s.trusted.OwnersOf(ih, buf[:0]), ownerAt(v, o))
}

// readTargetsIn appends to dst the members of v to ask for ih besides
// this node, by the trust state s: its other owners, and the owners it
// had in the trusted view that are still members (they hold the swarm
// while a node that gained it waits for their handoff).
func readTargetsIn(v *ring.View, s *trustState, ih bittorrent.InfoHash, owners, dst []int) []int {
	dst = otherOwners(v, owners, dst)
	if s == nil || s.trusted == nil || s.trusted == v || !isOwner(owners, v.Self) {
		return dst
	}
	var buf [8]int
	for _, o := range s.trusted.OwnersOf(ih, buf[:0]) {
		id := ownerAt(s.trusted, o)
		i := v.Index(id.name)
		if i < 0 || i == v.Self || v.Boots[i] != id.boot || isOwner(dst, i) {
			continue
		}
		dst = append(dst, i)
	}
	return dst
}
