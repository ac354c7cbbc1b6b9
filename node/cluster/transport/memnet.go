package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MemNet is an in-memory network for running many nodes in one process,
// in this package's tests and others'. Each node gets a Transport; links
// can be cut and healed. Every request and reply goes through the wire
// codec, so a value a handler keeps or changes is never the caller's, as
// over TCP. It is safe for concurrent use.
type MemNet struct {
	mu       sync.Mutex
	nodes    map[string]*memTransport // by address, while serving
	cut      map[[2]string]bool       // both orders of each cut pair
	isolated map[string]bool
	delay    time.Duration
}

// NewMemNet returns a network with every link up and no delay.
func NewMemNet() *MemNet {
	return &MemNet{nodes: map[string]*memTransport{}, cut: map[[2]string]bool{}, isolated: map[string]bool{}}
}

// Transport returns a transport for the node at addr. A node that
// restarts gets a new one; only one may serve an address at a time.
func (n *MemNet) Transport(addr string) Transport {
	t := &memTransport{net: n, addr: addr}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t
}

// Cut breaks the link between a and b in both directions: calls either way
// fail with ErrUnreachable, and so do calls whose reply would cross it.
func (n *MemNet) Cut(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[[2]string{a, b}] = true
	n.cut[[2]string{b, a}] = true
}

// Isolate cuts addr from every other node, present and future. Its calls
// to itself still work.
func (n *MemNet) Isolate(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.isolated[addr] = true
}

// Heal restores every cut and isolated link.
func (n *MemNet) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cut)
	clear(n.isolated)
}

// SetDelay makes every request and every reply take d to arrive.
func (n *MemNet) SetDelay(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.delay = d
}

var (
	errLinkCut  = errors.New("link cut")
	errNoServer = errors.New("nobody serves the address")
)

// route returns the transport serving to as seen from from, and the
// one-way delay.
func (n *MemNet) route(from, to string) (*memTransport, time.Duration, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cut[[2]string{from, to}] || from != to && (n.isolated[from] || n.isolated[to]) {
		return nil, 0, errLinkCut
	}
	dst := n.nodes[to]
	if dst == nil {
		return nil, 0, errNoServer
	}
	return dst, n.delay, nil
}

// memTransport is one node's Transport on a MemNet.
type memTransport struct {
	net    *MemNet
	addr   string
	ctx    context.Context // done at Close; cancels handlers
	cancel context.CancelFunc

	mu      sync.Mutex
	h       Handler
	closed  bool
	running sync.WaitGroup // handler goroutines
}

func (t *memTransport) Addr() string { return t.addr }

func (t *memTransport) Serve(h Handler) error {
	if h == nil {
		return errors.New("transport: serve: nil handler")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return fmt.Errorf("transport: serve: %w", errTransportClosed)
	case t.h != nil:
		return errors.New("transport: serve: already serving")
	}
	n := t.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes[t.addr] != nil {
		return fmt.Errorf("transport: serve: %s is in use", t.addr)
	}
	n.nodes[t.addr] = t
	t.h = h
	return nil
}

// Close stops serving and waits for the handlers in flight, whose
// contexts it cancels. Calls in flight to or from the node fail.
func (t *memTransport) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	n := t.net
	n.mu.Lock()
	if n.nodes[t.addr] == t {
		delete(n.nodes, t.addr)
	}
	n.mu.Unlock()
	t.cancel()
	t.running.Wait()
	return nil
}

func (t *memTransport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

func (t *memTransport) Call(ctx context.Context, addr string, req Request) (Reply, error) {
	b, err := appendRequest(nil, req)
	if err != nil {
		return nil, fmt.Errorf("transport: call %s: %w", addr, err)
	}
	b, err = t.roundTrip(ctx, addr, b)
	if err != nil {
		return nil, fmt.Errorf("transport: call %s: %w", addr, unreachableError{err})
	}
	rep, err := decodeReply(b)
	if err != nil {
		return nil, fmt.Errorf("transport: call %s: %w", addr, err)
	}
	return rep, nil
}

// roundTrip carries an encoded request to addr and its encoded reply back,
// failing as the network would.
func (t *memTransport) roundTrip(ctx context.Context, addr string, b []byte) ([]byte, error) {
	if t.isClosed() {
		return nil, errTransportClosed
	}
	dst, delay, err := t.net.route(t.addr, addr)
	if err != nil {
		return nil, err
	}
	if err := sleepCtx(ctx, delay); err != nil {
		return nil, err
	}
	// The handler runs on the server's goroutine, as over TCP, so the
	// caller can give up on it.
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	if !dst.goServe(func() {
		b, err := dst.serve(ctx, b)
		done <- result{b, err}
	}) {
		return nil, errNoServer
	}
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		b = r.b
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := sleepCtx(ctx, delay); err != nil {
		return nil, err
	}
	// The reply is lost if the link was cut or either end closed meanwhile.
	if t.isClosed() {
		return nil, errTransportClosed
	}
	if back, _, err := t.net.route(t.addr, addr); err != nil {
		return nil, err
	} else if back != dst {
		return nil, errSessionClosed
	}
	return b, ctx.Err()
}

// goServe runs f on a goroutine Close waits for, unless t is closed.
func (t *memTransport) goServe(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.running.Add(1)
	go func() {
		defer t.running.Done()
		f()
	}()
	return true
}

// serve answers an encoded request with an encoded reply, as a TCP
// server's connection would.
func (t *memTransport) serve(ctx context.Context, b []byte) ([]byte, error) {
	t.mu.Lock()
	h := t.h
	t.mu.Unlock()
	req, err := decodeRequest(b)
	if err == nil {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(t.ctx, cancel)
		defer stop()
		var rep Reply
		if rep, err = h.Handle(ctx, req); err == nil {
			b, err = appendReply(nil, rep)
		}
	}
	if t.isClosed() {
		return nil, errNoServer // closed while handling: the reply is lost
	}
	if err != nil {
		return appendErrorReply(nil, err.Error()), nil
	}
	return b, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}
