package transport

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// What a listener spends on connections whose peers have proven nothing
// yet, and how it is bounded without letting anyone who has not proven
// anything keep out one who can.
//
// A member is whoever completes the handshake; its source address proves
// nothing (members share addresses behind NAT or on one host, and connect
// from addresses they do not advertise), so nothing here refuses a
// connection for its address. The address only orders who yields: a
// source is known when a current member is known at it or a handshake
// from it succeeded recently, and unknown otherwise.
//
//   - preauthPool bounds the connections held before authentication, in
//     total and per unknown source. When it is full, a new connection
//     does not wait and is not refused while an older one can yield: the
//     one closed is a silent connection (it has sent nothing) before one
//     that is talking, an unknown source's before a known one's, from the
//     source holding the most, oldest first. A member's connection talks
//     at once, so a flood of silent connections, even from the member's
//     own address, only ever closes its own.
//   - handshakeSlots bounds the handshakes being worked on at once. A
//     connection holds a slot only while the node works on it, never while
//     it waits for the peer's next bytes (slotConn), so a silent or slow
//     peer holds none. Waiting connections are served known sources
//     first, round-robin over sources within each class, and unknown
//     sources may hold only part of the slots.

// preauthPool bounds connections before authentication. Safe for
// concurrent use.
type preauthPool struct {
	max       int // connections in total
	perSource int // connections from one unknown source
	// silentPerSource counts only silent connections against perSource:
	// the data channel's talking ones are handshakes, bounded in time
	// and CPU and in total, and may be members behind one unadvertised
	// address starting at once. The gossip listener counts all, as
	// memberlist holds a stream that talked for its whole timeout.
	silentPerSource bool
	onChange        func(delta int)

	mu       sync.Mutex
	n        int
	bySource map[netip.Addr]*poolSource
}

type poolSource struct {
	known bool
	conns []*pendingConn // in arrival order
}

// pendingConn is one connection in a preauthPool.
type pendingConn struct {
	nc    net.Conn
	src   netip.Addr
	known bool
	at    time.Time // accepted
	// talking is set once the peer has sent a byte, held is set once
	// the connection is no longer the pool's to close (the gossip
	// listener has handed it to memberlist); both guarded by the pool.
	talking, held bool
}

// evicted is a connection the pool closed to make room, why, and
// whether it had talked (read under the pool's lock, for the log).
type evicted struct {
	c       *pendingConn
	reason  string
	talking bool
}

func newPreauthPool(total, perSource int, silentPerSource bool, onChange func(int)) *preauthPool {
	if onChange == nil {
		onChange = func(int) {}
	}
	return &preauthPool{max: total, perSource: perSource, silentPerSource: silentPerSource, onChange: onChange, bySource: map[netip.Addr]*poolSource{}}
}

// add takes nc into the pool, closing others to make room as the order
// above says. It returns the new entry, or nil and the reason when
// nothing could yield to it, and the connections closed for it, which the
// caller counts.
func (p *preauthPool) add(nc net.Conn, src netip.Addr, known bool, now time.Time) (*pendingConn, string, []evicted) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.bySource[src]
	if s == nil {
		s = &poolSource{known: known}
		p.bySource[src] = s
	}
	s.known = known // a source becomes known (or stops being) as members come and go
	var out []evicted
	if !known && p.sourceFull(s) {
		switch v := oldestYielding(s.conns, !p.silentPerSource); {
		case v != nil:
			p.removeLocked(v)
			out = append(out, evicted{v, reasonSourceLimit, v.talking})
		case !p.silentPerSource:
			p.dropIfEmpty(src, s)
			return nil, reasonSourceLimit, nil
		}
		// Otherwise the ones counted silent turned out to be talking.
	}
	if p.n >= p.max {
		v := p.victim(known)
		if v == nil {
			p.dropIfEmpty(src, s)
			return nil, reasonPendingLimit, out
		}
		p.removeLocked(v)
		out = append(out, evicted{v, reasonPendingLimit, v.talking})
	}
	// Making room may have emptied, and so dropped, the source's entry.
	if p.bySource[src] != s {
		p.bySource[src] = s
	}
	c := &pendingConn{nc: nc, src: src, known: known, at: now}
	s.conns = append(s.conns, c)
	p.n++
	p.onChange(1)
	return c, "", out
}

// sourceFull reports whether an unknown source holds its share: of all
// its connections, or of those silent as far as the pool knows.
func (p *preauthPool) sourceFull(s *poolSource) bool {
	if !p.silentPerSource {
		return len(s.conns) >= p.perSource
	}
	n := 0
	for _, c := range s.conns {
		if !c.talking && !c.held {
			n++
		}
	}
	return n >= p.perSource
}

// silent reports whether c has sent nothing, looking at its socket: a
// connection whose first bytes arrived before its goroutine read them is
// talking, and marked so.
func (c *pendingConn) silent() bool {
	if c.talking || c.held {
		return false
	}
	if hasInput(c.nc) {
		c.talking = true
		return false
	}
	return true
}

// oldestYielding is the connection of conns that yields first: the oldest
// silent one, else, if talking may yield, the oldest talking one. Held
// connections never yield.
func oldestYielding(conns []*pendingConn, talking bool) *pendingConn {
	for _, c := range conns {
		if c.silent() {
			return c
		}
	}
	if talking {
		for _, c := range conns {
			if !c.held {
				return c
			}
		}
	}
	return nil
}

// victim picks the connection to close for a new one when the pool is
// full: silent before talking, unknown before known, from the source
// holding the most of that kind, oldest first. Talking connections of
// known sources yield only to another known source's.
func (p *preauthPool) victim(newKnown bool) *pendingConn {
	for _, kind := range []struct{ talking, known bool }{{false, false}, {false, true}, {true, false}, {true, true}} {
		if kind.talking && kind.known && !newKnown {
			break
		}
		// The source holding the most of the kind, counted by what the
		// pool knows; then its oldest, checked against the socket, so a
		// connection whose first bytes have just arrived is passed over
		// (and marked, so the next round counts without it).
		for {
			var best []*pendingConn
			bestN := 0
			for _, s := range p.bySource {
				if s.known != kind.known {
					continue
				}
				n := 0
				for _, c := range s.conns {
					if !c.held && c.talking == kind.talking {
						n++
					}
				}
				if n > bestN {
					best, bestN = s.conns, n
				}
			}
			if best == nil {
				break
			}
			for _, c := range best {
				if c.held || c.talking != kind.talking {
					continue
				}
				if kind.talking || c.silent() {
					return c
				}
			}
		}
	}
	return nil
}

func (p *preauthPool) dropIfEmpty(src netip.Addr, s *poolSource) {
	if len(s.conns) == 0 {
		delete(p.bySource, src)
	}
}

func (p *preauthPool) removeLocked(c *pendingConn) bool {
	s := p.bySource[c.src]
	if s == nil {
		return false
	}
	for i, x := range s.conns {
		if x == c {
			s.conns = append(s.conns[:i], s.conns[i+1:]...)
			p.dropIfEmpty(c.src, s)
			p.n--
			p.onChange(-1)
			return true
		}
	}
	return false
}

// remove takes c out of the pool and reports whether it was still there:
// false means the pool closed it to make room and has counted why.
func (p *preauthPool) remove(c *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removeLocked(c)
}

// talk marks c as having sent a byte, so it yields after silent ones. It
// reports false if the pool has closed c.
func (p *preauthPool) talk(c *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.talking = true
	return p.bySource[c.src] != nil && !c.held
}

// hold makes c no longer the pool's to close, while it still counts
// against the bounds (the gossip listener's streams in memberlist's hands,
// which memberlist's own deadline ends). It reports false if the pool has
// already closed c.
func (p *preauthPool) hold(c *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.bySource[c.src]
	if s == nil {
		return false
	}
	for _, x := range s.conns {
		if x == c {
			c.held, c.talking = true, true
			return true
		}
	}
	return false
}

// len is how many connections the pool holds.
func (p *preauthPool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// errSlotWait is a connection whose deadline passed while it waited for a
// handshake slot; it matches os.ErrDeadlineExceeded, as a read would.
var errSlotWait = slotWaitError{}

type slotWaitError struct{}

func (slotWaitError) Error() string        { return "no handshake slot before the deadline" }
func (slotWaitError) Is(target error) bool { return target == os.ErrDeadlineExceeded }

// handshakeSlots bounds handshakes worked on at once and serves them in a
// fair order: known sources before unknown ones, round-robin over sources
// within each, first come first served within a source. Unknown sources
// hold at most maxUnknown slots, so a known source finds one free without
// waiting for them. Safe for concurrent use.
type handshakeSlots struct {
	max, maxUnknown int

	mu          sync.Mutex
	busy        int
	busyUnknown int
	classes     [2]slotQueue // [0] known, [1] unknown
}

// slotQueue is one class's waiters: sources in round-robin order, each
// with its waiters in arrival order.
type slotQueue struct {
	order []netip.Addr
	by    map[netip.Addr][]*slotWaiter
}

type slotWaiter struct {
	ready   chan struct{}
	granted bool
}

func newHandshakeSlots(n int) *handshakeSlots {
	h := &handshakeSlots{max: n, maxUnknown: max(1, n/2)}
	for i := range h.classes {
		h.classes[i].by = map[netip.Addr][]*slotWaiter{}
	}
	return h
}

func class(known bool) int {
	if known {
		return 0
	}
	return 1
}

// acquire waits for a slot for a connection from src, until deadline or
// stop. On success the caller must release it.
func (h *handshakeSlots) acquire(src netip.Addr, known bool, deadline time.Time, stop <-chan struct{}) error {
	w := &slotWaiter{ready: make(chan struct{}, 1)}
	q := &h.classes[class(known)]
	h.mu.Lock()
	if _, ok := q.by[src]; !ok {
		q.order = append(q.order, src)
	}
	q.by[src] = append(q.by[src], w)
	h.dispatch()
	h.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var err error
	select {
	case <-w.ready:
		return nil
	case <-timer.C:
		err = errSlotWait
	case <-stop:
		err = errTransportClosed
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.granted {
		// Granted as the wait ended: the slot is the caller's all the
		// same.
		return nil
	}
	q.remove(src, w)
	return err
}

// release gives back a slot taken by acquire.
func (h *handshakeSlots) release(known bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked(known)
}

func (h *handshakeSlots) releaseLocked(known bool) {
	h.busy--
	if !known {
		h.busyUnknown--
	}
	h.dispatch()
}

// dispatch grants free slots to waiters in order.
func (h *handshakeSlots) dispatch() {
	for h.busy < h.max {
		switch {
		case len(h.classes[0].order) > 0:
			h.classes[0].grant()
		case len(h.classes[1].order) > 0 && h.busyUnknown < h.maxUnknown:
			h.classes[1].grant()
			h.busyUnknown++
		default:
			return
		}
		h.busy++
	}
}

// grant gives a slot to the first waiter of the source whose turn it is,
// and moves that source to the back of the order.
func (q *slotQueue) grant() {
	src := q.order[0]
	ws := q.by[src]
	w := ws[0]
	q.order = q.order[1:]
	if len(ws) > 1 {
		q.by[src] = ws[1:]
		q.order = append(q.order, src)
	} else {
		delete(q.by, src)
	}
	w.granted = true
	w.ready <- struct{}{}
}

func (q *slotQueue) remove(src netip.Addr, w *slotWaiter) {
	ws := q.by[src]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) > 0 {
		q.by[src] = ws
		return
	}
	delete(q.by, src)
	for i, a := range q.order {
		if a == src {
			q.order = append(q.order[:i], q.order[i+1:]...)
			break
		}
	}
}

// slotConn is the server side of a connection during its handshake: it
// holds a handshake slot only between receiving bytes and waiting for the
// next ones, so the time a peer takes to answer costs no slot. It marks
// the connection talking in its pool at the first byte. Once finish is
// called it is a plain connection. Reads come from one goroutine.
type slotConn struct {
	net.Conn
	t        *TCP
	pc       *pendingConn
	deadline time.Time
	holding  bool
	talked   bool
	done     bool
}

func (c *slotConn) Read(b []byte) (int, error) {
	if c.done {
		return c.Conn.Read(b)
	}
	if c.holding {
		c.t.slots.release(c.pc.known)
		c.holding = false
	}
	n, err := c.Conn.Read(b)
	if n > 0 && !c.talked {
		c.talked = true
		c.t.pre.talk(c.pc)
	}
	if err != nil {
		return n, err
	}
	if err := c.t.slots.acquire(c.pc.src, c.pc.known, c.deadline, c.t.ctx.Done()); err != nil {
		return n, err
	}
	c.holding = true
	return n, nil
}

// finish gives back the slot, if held, and turns c into a plain
// connection.
func (c *slotConn) finish() {
	if c.holding {
		c.t.slots.release(c.pc.known)
		c.holding = false
	}
	c.done = true
}

// provenSources remembers the source addresses handshakes succeeded from
// lately, so they keep their priority (a known source) while the member
// behind them is not known at that address. Safe for concurrent use.
type provenSources struct {
	mu   sync.Mutex
	max  int
	keep time.Duration
	at   map[netip.Addr]time.Time
}

// provenFor is how long a source stays known after its last handshake: a
// node redials a member whose connections idled out (2 minutes) well
// within it.
const provenFor = 10 * time.Minute

// maxProven bounds the sources remembered; only authenticated peers add
// any, so it is reached only by a cluster of thousands of addresses.
const maxProven = 4096

func newProvenSources() *provenSources {
	return &provenSources{max: maxProven, keep: provenFor, at: map[netip.Addr]time.Time{}}
}

func (p *provenSources) add(a netip.Addr, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.at[a]; !ok && len(p.at) >= p.max {
		var oldest netip.Addr
		var oldestAt time.Time
		for k, t := range p.at {
			if now.Sub(t) > p.keep {
				delete(p.at, k)
			} else if oldestAt.IsZero() || t.Before(oldestAt) {
				oldest, oldestAt = k, t
			}
		}
		if len(p.at) >= p.max {
			delete(p.at, oldest)
		}
	}
	p.at[a] = now
}

func (p *provenSources) has(a netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.at[a]
	return ok && now.Sub(t) <= p.keep
}
