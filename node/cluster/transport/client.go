package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Call sends req to the node at addr and waits for its reply. Errors wrap
// ErrUnreachable when the node could not be asked or did not answer in
// time (with ctx's error when ctx ended the wait), and RemoteError when
// its handler failed. req is encoded before Call returns and not kept.
func (t *TCP) Call(ctx context.Context, addr string, req Request) (Reply, error) {
	fb := getFrameBuf()
	fb.b = append(fb.b, make([]byte, requestHeaderSize)...)
	var err error
	if fb.b, err = appendRequest(fb.b, req); err != nil {
		putFrameBuf(fb)
		return nil, fmt.Errorf("transport: call %s: %w", addr, err)
	}
	if len(fb.b) > t.opts.MaxFrame {
		n := len(fb.b)
		putFrameBuf(fb)
		return nil, fmt.Errorf("transport: call %s: %w", addr, frameTooLargeError{n, t.opts.MaxFrame})
	}
	if dl, ok := ctx.Deadline(); ok {
		ms := (time.Until(dl) + time.Millisecond - 1) / time.Millisecond
		binary.BigEndian.PutUint32(fb.b[8:], uint32(min(max(ms, 1), math.MaxUint32)))
	}
	for attempt := 0; ; attempt++ {
		c, err := t.conn(ctx, addr)
		if err != nil {
			putFrameBuf(fb)
			return nil, fmt.Errorf("transport: call %s: %w", addr, unreachableError{err})
		}
		rep, sent, err := c.call(ctx, fb)
		if !sent {
			// The request never left: try a fresh connection once more
			// if this one closed under us (idle close, node restart).
			if errors.Is(err, errSessionClosed) && attempt < 2 {
				continue
			}
			putFrameBuf(fb)
		}
		switch {
		case err == nil:
			return rep, nil
		case errors.Is(err, errSessionClosed):
			return nil, fmt.Errorf("transport: call %s: %w", addr, unreachableError{err})
		case errors.As(err, new(RemoteError)), errors.Is(err, errMalformed):
			// The node answered: with an error, or with a reply this
			// node cannot read.
			return nil, fmt.Errorf("transport: call %s: %w", addr, err)
		default:
			return nil, fmt.Errorf("transport: call %s: %w", addr, unreachableError{err})
		}
	}
}

// unreachableError marks err as a failure to reach a node: it matches both
// ErrUnreachable and err.
type unreachableError struct{ err error }

func (e unreachableError) Error() string   { return "unreachable: " + e.err.Error() }
func (e unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// frameTooLargeError is ErrFrameTooLarge with the sizes.
type frameTooLargeError struct{ size, limit int }

func (e frameTooLargeError) Error() string {
	return fmt.Sprintf("request of %d bytes exceeds the %d-byte frame limit", e.size, e.limit)
}

func (e frameTooLargeError) Is(target error) bool { return target == ErrFrameTooLarge }

// tcpPool is the connections to one address.
type tcpPool struct {
	addr  string
	mu    sync.Mutex
	next  int // slot the next call prefers
	slots []tcpSlot
}

type tcpSlot struct {
	conn    *tcpClientConn
	dialing chan struct{} // closed when the dial in progress ends
	err     error         // why the last dial failed
}

// conn returns an open connection to addr, dialling as needed. A call
// prefers the next slot round-robin but takes any open connection rather
// than wait for a dial; dead slots are redialled in the background.
func (t *TCP) conn(ctx context.Context, addr string) (*tcpClientConn, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errTransportClosed
	}
	p := t.pools[addr]
	if p == nil {
		p = &tcpPool{addr: addr, slots: make([]tcpSlot, t.opts.ConnsPerPeer)}
		t.pools[addr] = p
	}
	t.mu.Unlock()

	p.mu.Lock()
	i := p.next
	p.next = (p.next + 1) % len(p.slots)
	var live *tcpClientConn
	for k := range p.slots {
		j := (i + k) % len(p.slots)
		sl := &p.slots[j]
		if sl.conn.usable() {
			if live == nil {
				live = sl.conn
			}
			continue
		}
		if sl.dialing == nil {
			done := make(chan struct{})
			if !t.goTracked(func() { t.dialSlot(p, j, done) }) {
				p.mu.Unlock()
				return nil, errTransportClosed
			}
			sl.dialing = done
		}
	}
	wait := p.slots[i].dialing
	p.mu.Unlock()
	if live != nil {
		return live, nil
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.slots {
		if c := p.slots[(i+k)%len(p.slots)].conn; c.usable() {
			return c, nil
		}
	}
	if err := p.slots[i].err; err != nil {
		return nil, err
	}
	return nil, errSessionClosed
}

// dialSlot connects slot i of p and signals done. A pool left with no
// connection after a failed dial is dropped, so addresses of departed
// nodes are not kept.
func (t *TCP) dialSlot(p *tcpPool, i int, done chan struct{}) {
	c, err := t.dial(p.addr)
	p.mu.Lock()
	sl := &p.slots[i]
	sl.conn, sl.err, sl.dialing = c, err, nil
	empty := true
	for j := range p.slots {
		if p.slots[j].conn.usable() || p.slots[j].dialing != nil {
			empty = false
		}
	}
	p.mu.Unlock()
	close(done)
	if err != nil && empty {
		t.mu.Lock()
		if t.pools[p.addr] == p {
			delete(t.pools, p.addr)
		}
		t.mu.Unlock()
	}
}

func (t *TCP) dial(addr string) (*tcpClientConn, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.opts.DialTimeout)
	defer cancel()
	var d net.Dialer
	if t.localAddr != nil {
		d.LocalAddr = t.localAddr
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if t.ctx.Err() == nil {
			t.metrics.dialFailed.WithLabelValues(dialUnreachable).Inc()
		}
		return nil, err
	}
	var name string
	if t.certs != nil {
		var ok bool
		if name, ok = t.opts.Members.NameAt(addr); !ok {
			nc.Close()
			return nil, fmt.Errorf("handshake: no member known at %s to check its certificate against", addr)
		}
	}
	s, _, err := t.handshake(nc, true, name)
	if err != nil {
		nc.Close()
		if t.ctx.Err() == nil {
			t.metrics.dialFailed.WithLabelValues(dialFailure(err)).Inc()
		}
		if n, ok := t.rejectLog.Allow(); ok {
			t.log.Warn("data channel: handshake with node failed", zap.String("addr", addr), zap.String("peer", name), zap.Error(err), zap.Uint64("events", n))
		}
		return nil, err
	}
	c := &tcpClientConn{s: s, pending: map[uint64]chan tcpResult{}}
	if t.track(s, "") != nil {
		s.close()
		return nil, errTransportClosed
	}
	started := t.goTracked(s.writeLoop) && t.goTracked(func() {
		c.readLoop()
		t.untrack(s)
	})
	if !started {
		c.shutdown(errTransportClosed)
		t.untrack(s)
		return nil, errTransportClosed
	}
	return c, nil
}

// dialFailure classifies a failed handshake with a node for
// karuta_cluster_data_dial_failures_total.
func dialFailure(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return dialTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return dialRefused
	}
	return dialHandshake
}

// tcpClientConn is the calling side of a session: it matches replies to
// the calls waiting for them.
type tcpClientConn struct {
	s       *tcpSession
	mu      sync.Mutex
	closed  bool
	nextID  uint64
	pending map[uint64]chan tcpResult
	// unanswered is when the oldest request sent since the last reply
	// frame arrived was sent, in unix nanoseconds; 0 when none waits.
	unanswered atomic.Int64
}

// silentConnAfter is how long a connection may deliver nothing at all
// while requests wait on it before it counts as dead. After a
// network cut an established connection neither fails nor answers (TCP
// retransmits for minutes); every call through it would time out, even
// after the network has healed, while a fresh connection would work.
const silentConnAfter = 2 * time.Second

type tcpResult struct {
	rep Reply
	err error
}

func (c *tcpClientConn) usable() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed
}

// call sends the request in fb and waits for its reply. sent reports
// whether the request was handed to the connection; if not, fb is still
// the caller's.
func (c *tcpClientConn) call(ctx context.Context, fb *frameBuf) (rep Reply, sent bool, err error) {
	ch := make(chan tcpResult, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, false, errSessionClosed
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	binary.BigEndian.PutUint64(fb.b, id)
	if err := c.s.send(ctx, fb); err != nil {
		c.forget(id)
		return nil, false, err
	}
	c.unanswered.CompareAndSwap(0, time.Now().UnixNano())
	select {
	case r := <-ch:
		return r.rep, true, r.err
	case <-ctx.Done():
		c.forget(id)
		// Calls with short deadlines (reads) give up long before a
		// connection counts as silent, so the test is on the connection:
		// nothing read since a request sent at least silentConnAfter ago.
		if since := c.unanswered.Load(); since != 0 && time.Since(time.Unix(0, since)) >= silentConnAfter {
			c.shutdown(fmt.Errorf("no reply for %s: %w", time.Since(time.Unix(0, since)).Round(time.Millisecond), ctx.Err()))
		}
		return nil, true, ctx.Err()
	}
}

func (c *tcpClientConn) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// readLoop delivers replies until the connection fails or idles out.
func (c *tcpClientConn) readLoop() {
	err := c.readReplies()
	c.shutdown(err)
}

func (c *tcpClientConn) readReplies() error {
	for {
		p, err := c.s.readFrame(c.s.t.opts.IdleTimeout, c.idleClose)
		if err != nil {
			return err
		}
		c.unanswered.Store(0)
		if len(p) < replyHeaderSize {
			return fmt.Errorf("%w: short reply frame", errMalformed)
		}
		id := binary.BigEndian.Uint64(p)
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch == nil {
			continue // the caller gave up
		}
		rep, err := decodeReply(p[replyHeaderSize:])
		ch <- tcpResult{rep, err}
	}
}

// idleClose closes the connection to new calls if none is in flight, and
// reports whether it did.
func (c *tcpClientConn) idleClose() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) > 0 {
		return false
	}
	c.closed = true
	return true
}

// shutdown fails every call in flight and closes the session.
func (c *tcpClientConn) shutdown(cause error) {
	c.mu.Lock()
	c.closed = true
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.s.close()
	switch {
	case errors.Is(cause, errOversized):
		c.s.t.rejectFrame(reasonFrameTooLarge, c.s.nc.RemoteAddr().String(), cause)
	case errors.Is(cause, errMalformed):
		c.s.t.rejectFrame(reasonBadFrame, c.s.nc.RemoteAddr().String(), cause)
	}
	err := fmt.Errorf("%w: %w", errSessionClosed, cause)
	for _, ch := range pending {
		ch <- tcpResult{err: err}
	}
}
