package cluster

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks"
)

// The TCP data channel.
//
// Handshake, client first, in the clear:
//
//	client hello  "KRTC" version:1 labellen:1 label nc:32
//	server hello  "KRTS" version:1 ns:32 n:1 proof*n
//	client proof  proof:32
//
// nc and ns are fresh random nonces. The server proves each of its keys:
// proof = HMAC-SHA256(key, tag | labellen | label | nc | ns | "server proof").
// The client picks the first of its own keys that one of those proofs
// matches (so its first key wins when the server has it) and proves it with
// the same construction ending in "client proof"; the server accepts any of
// its keys. A label mismatch, an unknown key or a bad proof closes the
// connection. Both sides then derive one AES-256-GCM key per direction,
// HMAC-SHA256(key, tag | labellen | label | nc | ns | "client to server")
// and "server to client", so a session's keys are fresh even when nc or ns
// repeat, and differ from every proof sent in the clear.
//
// Frames follow in both directions:
//
//	frame  len:4 (big endian, of the sealed bytes) sealed:len
//
// sealed is the AES-GCM sealing of the payload, with the 4-byte length as
// additional data and the nonce 4 zero bytes | the frame's 8-byte counter
// in its direction. The counter starts at zero, so a frame replayed,
// reordered, dropped or reflected back to its sender fails to open, and a
// frame that fails to open closes the connection. Payloads:
//
//	request  id:8 timeout-ms:4 message   (timeout 0: the caller set none)
//	reply    id:8 message                (the id of the request it answers)
//
// with messages as in wire.go. Replies may come in any order.
const (
	protocolTag     = "karuta cluster data channel v1"
	protocolVersion = 1
	clientMagic     = "KRTC"
	serverMagic     = "KRTS"
	nonceSize       = 32
	proofSize       = sha256.Size
	maxKeys         = 16 // proofs a server sends; bounds the handshake

	gcmTagSize        = 16
	requestHeaderSize = 8 + 4
	replyHeaderSize   = 8
)

const (
	defaultDialTimeout  = 5 * time.Second
	defaultIdleTimeout  = 2 * time.Minute
	defaultMaxFrame     = 16 << 20
	defaultConnsPerPeer = 2
	// minMaxFrame leaves room for the largest error reply.
	minMaxFrame = 4 << 10

	// handshakeTimeout bounds a handshake on both sides.
	handshakeTimeout = 5 * time.Second
	// writeTimeout bounds writing one batch of frames: a peer that reads
	// nothing for this long has its connection closed.
	writeTimeout = 10 * time.Second
	// maxHandlersPerConn bounds the requests of one connection being
	// handled at once; past it the connection is not read until one ends.
	maxHandlersPerConn = 64
	// maxHandshakes bounds connections accepted but not yet authenticated;
	// past it new connections are closed at once.
	maxHandshakes = 256
	// outQueue is how many frames may wait for a connection's writer.
	outQueue = 128
	// maxBatch is how many bytes of frames the writer gathers into one
	// write.
	maxBatch = 64 << 10
	// maxKeptBuffer is the largest buffer kept for reuse.
	maxKeptBuffer = 1 << 20
)

// ErrFrameTooLarge is returned by Call for a request whose encoding
// exceeds the transport's MaxFrame. It does not wrap ErrUnreachable:
// sending it again will not help; send it in smaller parts.
var ErrFrameTooLarge = errors.New("cluster: request exceeds the frame size limit")

var (
	errTransportClosed = errors.New("transport closed")
	errSessionClosed   = errors.New("connection closed")
	errFrameAuth       = errors.New("frame failed authentication")
	errNoSharedKey     = errors.New("handshake: no key shared with the node")
	errUnknownKey      = errors.New("handshake: client proved a key this node does not have")
	errLabelMismatch   = errors.New("handshake: cluster label mismatch")
)

// TCPOptions configure a TCP transport. Zero values take the defaults
// noted. Every node of a cluster should use the same Keys (up to rotation),
// Label and MaxFrame.
type TCPOptions struct {
	// Bind is the host:port Serve listens on; port 0 picks a free port.
	Bind string
	// Advertise is the host:port other nodes call this node at, when it
	// differs from the listener's address (NAT, containers).
	Advertise string
	// Keys are the cluster's secret keys, 16, 24 or 32 bytes each, at most
	// 16. A connection uses the first key of the caller's list that the
	// callee also has; any key in the list is accepted. To rotate, add the
	// new key second on every node, then move it first everywhere, then
	// remove the old one. With no keys the channel uses a fixed all-zero
	// key: still authenticated framing, but anyone who can reach the port
	// can join — for development clusters only.
	Keys [][]byte
	// Label must match between nodes; it keeps clusters sharing a network
	// apart. At most 255 bytes.
	Label string
	// Log receives rate-limited warnings about rejected connections; nil
	// means no logging.
	Log *zap.Logger
	// DialTimeout bounds connecting to a node, handshake excluded
	// (default 5s).
	DialTimeout time.Duration
	// IdleTimeout is how long a connection with no calls in flight stays
	// open (default 2m). Servers wait twice as long, so the calling side,
	// which knows whether it is about to send, closes first.
	IdleTimeout time.Duration
	// MaxFrame bounds the payload of one frame, a request or a reply
	// (default 16 MiB, at least 4 KiB).
	MaxFrame int
	// ConnsPerPeer is how many connections are kept to each node and
	// shared by all calls to it (default 2).
	ConnsPerPeer int
}

// TCP is the Transport between nodes in production: persistent, mutually
// authenticated and encrypted TCP connections, each carrying many calls at
// once. It is safe for concurrent use.
type TCP struct {
	opts      TCPOptions // defaults filled in
	keys      [][]byte   // never empty
	log       *zap.Logger
	rejectLog *hooks.RateLog
	frameLog  *hooks.RateLog
	acceptLog *hooks.RateLog

	ctx        context.Context // done at Close
	cancel     context.CancelFunc
	handshakes chan struct{} // semaphore of maxHandshakes

	// goMu guards stopping and orders wg.Add before Close's wg.Wait. It is
	// taken last: nothing is locked while holding it.
	goMu     sync.Mutex
	stopping bool
	wg       sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	ln       net.Listener
	pools    map[string]*tcpPool
	sessions map[*tcpSession]struct{}
}

// NewTCP returns a TCP transport. It opens nothing: Serve listens, Call
// connects on first use.
func NewTCP(opts TCPOptions) (*TCP, error) {
	for _, f := range []struct {
		name string
		val  int64
	}{
		{"dial timeout", int64(opts.DialTimeout)},
		{"idle timeout", int64(opts.IdleTimeout)},
		{"max frame", int64(opts.MaxFrame)},
		{"conns per peer", int64(opts.ConnsPerPeer)},
	} {
		if f.val < 0 {
			return nil, fmt.Errorf("cluster: tcp: %s is negative", f.name)
		}
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = defaultDialTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.MaxFrame == 0 {
		opts.MaxFrame = defaultMaxFrame
	}
	if opts.MaxFrame < minMaxFrame || opts.MaxFrame > math.MaxUint32-gcmTagSize {
		return nil, fmt.Errorf("cluster: tcp: max frame %d is out of range; want %d to %d", opts.MaxFrame, minMaxFrame, math.MaxUint32-gcmTagSize)
	}
	if opts.ConnsPerPeer == 0 {
		opts.ConnsPerPeer = defaultConnsPerPeer
	}
	if len(opts.Label) > 255 {
		return nil, fmt.Errorf("cluster: tcp: label is %d bytes; want at most 255", len(opts.Label))
	}
	if len(opts.Keys) > maxKeys {
		return nil, fmt.Errorf("cluster: tcp: %d keys; want at most %d", len(opts.Keys), maxKeys)
	}
	keys := make([][]byte, 0, max(1, len(opts.Keys)))
	for i, k := range opts.Keys {
		switch len(k) {
		case 16, 24, 32:
		default:
			return nil, fmt.Errorf("cluster: tcp: keys[%d] is %d bytes; want 16, 24 or 32", i, len(k))
		}
		keys = append(keys, append([]byte(nil), k...))
	}
	if len(keys) == 0 {
		keys = append(keys, make([]byte, 32))
	}
	opts.Keys = nil // t.keys holds the copy
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	t := &TCP{
		opts:       opts,
		keys:       keys,
		log:        opts.Log,
		rejectLog:  hooks.NewRateLog(10 * time.Second),
		frameLog:   hooks.NewRateLog(10 * time.Second),
		acceptLog:  hooks.NewRateLog(10 * time.Second),
		handshakes: make(chan struct{}, maxHandshakes),
		pools:      map[string]*tcpPool{},
		sessions:   map[*tcpSession]struct{}{},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// Addr returns Advertise if set, else the listener's address once Serve
// has run, else Bind.
func (t *TCP) Addr() string {
	if t.opts.Advertise != "" {
		return t.opts.Advertise
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ln != nil {
		return t.ln.Addr().String()
	}
	return t.opts.Bind
}

// Serve listens on Bind and answers requests with h until Close. It
// returns once the listener is open. h.Handle runs on its own goroutine
// per request, at most 64 at once per connection; its context is done when
// the caller's deadline passes, the connection drops or the transport
// closes, and Close waits for it to return.
func (t *TCP) Serve(h Handler) error {
	if h == nil {
		return errors.New("cluster: serve: nil handler")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("cluster: serve: %w", errTransportClosed)
	}
	if t.ln != nil {
		return errors.New("cluster: serve: already serving")
	}
	ln, err := net.Listen("tcp", t.opts.Bind)
	if err != nil {
		return fmt.Errorf("cluster: serve: %w", err)
	}
	if !t.goTracked(func() { t.accept(ln, h) }) {
		ln.Close()
		return fmt.Errorf("cluster: serve: %w", errTransportClosed)
	}
	t.ln = ln
	return nil
}

// Close stops serving, closes every connection (calls in flight fail with
// ErrUnreachable), and waits for the transport's goroutines, handlers
// included. Later calls fail; Close may be called more than once.
func (t *TCP) Close() error {
	t.goMu.Lock()
	already := t.stopping
	t.stopping = true
	t.goMu.Unlock()
	if already {
		t.wg.Wait()
		return nil
	}
	// Connections close before handlers are cancelled, so a call in
	// flight fails rather than getting what a cancelled handler says.
	t.mu.Lock()
	t.closed = true
	ln := t.ln
	sessions := make([]*tcpSession, 0, len(t.sessions))
	for s := range t.sessions {
		sessions = append(sessions, s)
	}
	t.mu.Unlock()
	var err error
	if ln != nil {
		if cerr := ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = fmt.Errorf("cluster: close listener: %w", cerr)
		}
	}
	for _, s := range sessions {
		s.close()
	}
	t.cancel()
	t.wg.Wait()
	return err
}

// goTracked runs f on a goroutine Close waits for, unless Close has begun.
func (t *TCP) goTracked(f func()) bool {
	t.goMu.Lock()
	defer t.goMu.Unlock()
	if t.stopping {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

// track registers an authenticated session for Close to close.
func (t *TCP) track(s *tcpSession) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.sessions[s] = struct{}{}
	return true
}

func (t *TCP) untrack(s *tcpSession) {
	t.mu.Lock()
	delete(t.sessions, s)
	t.mu.Unlock()
}

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
		return nil, fmt.Errorf("cluster: call %s: %w", addr, err)
	}
	if len(fb.b) > t.opts.MaxFrame {
		n := len(fb.b)
		putFrameBuf(fb)
		return nil, fmt.Errorf("cluster: call %s: %w", addr, frameTooLargeError{n, t.opts.MaxFrame})
	}
	if dl, ok := ctx.Deadline(); ok {
		ms := (time.Until(dl) + time.Millisecond - 1) / time.Millisecond
		binary.BigEndian.PutUint32(fb.b[8:], uint32(min(max(ms, 1), math.MaxUint32)))
	}
	for attempt := 0; ; attempt++ {
		c, err := t.conn(ctx, addr)
		if err != nil {
			putFrameBuf(fb)
			return nil, fmt.Errorf("cluster: call %s: %w", addr, unreachableError{err})
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
			return nil, fmt.Errorf("cluster: call %s: %w", addr, unreachableError{err})
		case errors.As(err, new(RemoteError)), errors.Is(err, errMalformed):
			// The node answered: with an error, or with a reply this
			// node cannot read.
			return nil, fmt.Errorf("cluster: call %s: %w", addr, err)
		default:
			return nil, fmt.Errorf("cluster: call %s: %w", addr, unreachableError{err})
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
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s, err := t.handshake(nc, true)
	if err != nil {
		nc.Close()
		if errors.Is(err, errNoSharedKey) {
			if n, ok := t.rejectLog.Allow(); ok {
				t.log.Warn("data channel: node shares no key with this one; check secret_keys",
					zap.String("addr", addr), zap.Uint64("events", n))
			}
		}
		return nil, err
	}
	c := &tcpClientConn{s: s, pending: map[uint64]chan tcpResult{}}
	if !t.track(s) {
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

// tcpClientConn is the calling side of a session: it matches replies to
// the calls waiting for them.
type tcpClientConn struct {
	s       *tcpSession
	mu      sync.Mutex
	closed  bool
	nextID  uint64
	pending map[uint64]chan tcpResult
}

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
	select {
	case r := <-ch:
		return r.rep, true, r.err
	case <-ctx.Done():
		c.forget(id)
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
	if errors.Is(cause, errFrameAuth) || errors.Is(cause, errMalformed) {
		c.s.t.warnFrame(c.s.nc.RemoteAddr().String(), cause)
	}
	err := fmt.Errorf("%w: %w", errSessionClosed, cause)
	for _, ch := range pending {
		ch <- tcpResult{err: err}
	}
}

// accept runs the listener until Close.
func (t *TCP) accept(ln net.Listener, h Handler) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if n, ok := t.acceptLog.Allow(); ok {
				t.log.Warn("data channel: accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff), zap.Uint64("events", n))
			}
			select {
			case <-t.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case t.handshakes <- struct{}{}:
		default:
			nc.Close()
			t.warnReject(nc.RemoteAddr().String(), errors.New("too many connections in handshake"))
			continue
		}
		if !t.goTracked(func() { t.serveConn(nc, h) }) {
			<-t.handshakes
			nc.Close()
			return
		}
	}
}

// serveConn authenticates one accepted connection and answers its
// requests.
func (t *TCP) serveConn(nc net.Conn, h Handler) {
	s, err := t.handshake(nc, false)
	<-t.handshakes
	if err != nil {
		nc.Close()
		if errors.Is(err, io.EOF) {
			// Closed before saying anything: a port probe or health check.
			t.log.Debug("data channel: connection closed before handshake", zap.String("remote", nc.RemoteAddr().String()))
			return
		}
		t.warnReject(nc.RemoteAddr().String(), err)
		return
	}
	if !t.track(s) {
		s.close()
		return
	}
	defer t.untrack(s)
	if !t.goTracked(s.writeLoop) {
		s.close()
		return
	}
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	defer s.close()
	sem := make(chan struct{}, maxHandlersPerConn)
	// Idle only if no handler is running either; the caller closes first.
	idleClose := func() bool { return len(sem) == 0 }
	for {
		p, err := s.readFrame(2*t.opts.IdleTimeout, idleClose)
		if err != nil {
			if errors.Is(err, errFrameAuth) || errors.Is(err, errMalformed) {
				t.warnFrame(nc.RemoteAddr().String(), err)
			}
			return
		}
		if len(p) < requestHeaderSize {
			t.warnFrame(nc.RemoteAddr().String(), fmt.Errorf("%w: short request frame", errMalformed))
			return
		}
		id := binary.BigEndian.Uint64(p)
		timeout := time.Duration(binary.BigEndian.Uint32(p[8:])) * time.Millisecond
		req, derr := decodeRequest(p[requestHeaderSize:])
		select {
		case sem <- struct{}{}:
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
		// The goroutine is counted by the serveConn one, which is still
		// running, so Close cannot be waiting on a zero count yet.
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() { <-sem }()
			t.answer(ctx, s, h, id, timeout, req, derr)
		}()
	}
}

// answer runs the handler for one request and queues its reply.
func (t *TCP) answer(ctx context.Context, s *tcpSession, h Handler, id uint64, timeout time.Duration, req Request, derr error) {
	fb := getFrameBuf()
	fb.b = binary.BigEndian.AppendUint64(fb.b, id)
	err := derr
	if err == nil {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		var rep Reply
		if rep, err = h.Handle(ctx, req); err == nil {
			fb.b, err = appendReply(fb.b, rep)
		}
		if err == nil && len(fb.b) > t.opts.MaxFrame {
			err = fmt.Errorf("reply of %d bytes exceeds the %d-byte frame limit", len(fb.b), t.opts.MaxFrame)
		}
	}
	if err != nil {
		fb.b = appendErrorReply(fb.b[:replyHeaderSize], err.Error())
	}
	if s.send(context.Background(), fb) != nil {
		putFrameBuf(fb)
	}
}

func (t *TCP) warnReject(remote string, err error) {
	if n, ok := t.rejectLog.Allow(); ok {
		t.log.Warn("data channel: connection rejected", zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}

func (t *TCP) warnFrame(remote string, err error) {
	if n, ok := t.frameLog.Allow(); ok {
		t.log.Warn("data channel: bad frame; connection closed", zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}

// handshake authenticates nc as the client or the server side and returns
// the session. It gives up after handshakeTimeout or at Close.
func (t *TCP) handshake(nc net.Conn, client bool) (*tcpSession, error) {
	stop := context.AfterFunc(t.ctx, func() { nc.Close() })
	defer stop()
	if err := nc.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return nil, err
	}
	var sendKey, recvKey []byte
	var err error
	if client {
		sendKey, recvKey, err = t.clientHandshake(nc)
	} else {
		sendKey, recvKey, err = t.serverHandshake(nc)
	}
	if err != nil {
		return nil, err
	}
	if !stop() {
		return nil, errTransportClosed
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	s := &tcpSession{
		t:    t,
		nc:   nc,
		r:    bufio.NewReaderSize(nc, 32<<10),
		out:  make(chan *frameBuf, outQueue),
		done: make(chan struct{}),
	}
	if s.seal, err = newGCM(sendKey); err != nil {
		return nil, err
	}
	if s.open, err = newGCM(recvKey); err != nil {
		return nil, err
	}
	s.touch()
	return s, nil
}

func (t *TCP) clientHandshake(nc net.Conn) (sendKey, recvKey []byte, err error) {
	nc0 := make([]byte, nonceSize)
	if _, err := rand.Read(nc0); err != nil {
		return nil, nil, err
	}
	hello := make([]byte, 0, 6+len(t.opts.Label)+nonceSize)
	hello = append(hello, clientMagic...)
	hello = append(hello, protocolVersion, byte(len(t.opts.Label)))
	hello = append(hello, t.opts.Label...)
	hello = append(hello, nc0...)
	if _, err := nc.Write(hello); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	var sh [len(serverMagic) + 1 + nonceSize + 1]byte
	if _, err := io.ReadFull(nc, sh[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("handshake: closed by the node (different label or version?): %w", err)
		}
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if string(sh[:4]) != serverMagic || sh[4] != protocolVersion {
		return nil, nil, errors.New("handshake: not a karuta data channel of this version")
	}
	ns := sh[5 : 5+nonceSize]
	n := int(sh[len(sh)-1])
	if n == 0 || n > maxKeys {
		return nil, nil, fmt.Errorf("handshake: node offers %d keys", n)
	}
	proofs := make([]byte, n*proofSize)
	if _, err := io.ReadFull(nc, proofs); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	key := t.matchKey(nc0, ns, "server proof", proofs)
	if key == nil {
		return nil, nil, errNoSharedKey
	}
	if _, err := nc.Write(t.mac(key, nc0, ns, "client proof")); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	return t.mac(key, nc0, ns, "client to server"), t.mac(key, nc0, ns, "server to client"), nil
}

func (t *TCP) serverHandshake(nc net.Conn) (sendKey, recvKey []byte, err error) {
	var hdr [len(clientMagic) + 2]byte
	if n, err := io.ReadFull(nc, hdr[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, nil, io.EOF
		}
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if string(hdr[:4]) != clientMagic {
		return nil, nil, errors.New("handshake: not a karuta data channel client")
	}
	if hdr[4] != protocolVersion {
		return nil, nil, fmt.Errorf("handshake: protocol version %d; want %d", hdr[4], protocolVersion)
	}
	rest := make([]byte, int(hdr[5])+nonceSize)
	if _, err := io.ReadFull(nc, rest); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if label := rest[:hdr[5]]; string(label) != t.opts.Label {
		return nil, nil, fmt.Errorf("%w: node has %q, this node %q", errLabelMismatch, label, t.opts.Label)
	}
	nc0 := rest[hdr[5]:]
	hello := make([]byte, 0, len(serverMagic)+2+nonceSize+len(t.keys)*proofSize)
	hello = append(hello, serverMagic...)
	hello = append(hello, protocolVersion)
	ns := make([]byte, nonceSize)
	if _, err := rand.Read(ns); err != nil {
		return nil, nil, err
	}
	hello = append(hello, ns...)
	hello = append(hello, byte(len(t.keys)))
	for _, k := range t.keys {
		hello = append(hello, t.mac(k, nc0, ns, "server proof")...)
	}
	if _, err := nc.Write(hello); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	proof := make([]byte, proofSize)
	if _, err := io.ReadFull(nc, proof); err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	key := t.matchKey(nc0, ns, "client proof", proof)
	if key == nil {
		return nil, nil, errUnknownKey
	}
	return t.mac(key, nc0, ns, "server to client"), t.mac(key, nc0, ns, "client to server"), nil
}

// matchKey returns the first of this node's keys that one of proofs
// proves for purpose, or nil.
func (t *TCP) matchKey(nc, ns []byte, purpose string, proofs []byte) []byte {
	for _, k := range t.keys {
		want := t.mac(k, nc, ns, purpose)
		for p := proofs; len(p) >= proofSize; p = p[proofSize:] {
			if hmac.Equal(want, p[:proofSize]) {
				return k
			}
		}
	}
	return nil
}

// mac is HMAC-SHA256 under key of the protocol tag, the label, both
// nonces and what the result is for.
func (t *TCP) mac(key, nc, ns []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(protocolTag))
	m.Write([]byte{byte(len(t.opts.Label))})
	m.Write([]byte(t.opts.Label))
	m.Write(nc)
	m.Write(ns)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// tcpSession is an authenticated connection: the framing both sides share.
// Frames to send go through out to the writer goroutine, which seals them
// in order; the owner's goroutine reads.
type tcpSession struct {
	t          *TCP
	nc         net.Conn
	r          *bufio.Reader
	seal, open cipher.AEAD
	recvSeq    uint64 // owned by the reader
	rbuf       []byte // owned by the reader
	out        chan *frameBuf
	done       chan struct{}
	once       sync.Once
	lastActive atomic.Int64 // unix nanoseconds of the last frame read or written
}

func (s *tcpSession) close() {
	s.once.Do(func() {
		close(s.done)
		s.nc.Close()
	})
}

func (s *tcpSession) touch() { s.lastActive.Store(time.Now().UnixNano()) }

// send queues fb for the writer, which then owns it.
func (s *tcpSession) send(ctx context.Context, fb *frameBuf) error {
	select {
	case s.out <- fb:
		return nil
	case <-s.done:
		return errSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeLoop seals and writes queued frames, gathering those already
// waiting into one write, until the session closes.
func (s *tcpSession) writeLoop() {
	var (
		batch []byte
		seq   uint64
		nonce [12]byte
		hdr   [4]byte
	)
	for {
		var fb *frameBuf
		select {
		case fb = <-s.out:
		case <-s.done:
			return
		}
		batch = batch[:0]
		for fb != nil {
			if seq == math.MaxUint64 {
				s.close() // never reuse a nonce
				return
			}
			binary.BigEndian.PutUint32(hdr[:], uint32(len(fb.b)+gcmTagSize))
			binary.BigEndian.PutUint64(nonce[4:], seq)
			seq++
			batch = append(batch, hdr[:]...)
			batch = s.seal.Seal(batch, nonce[:], fb.b, hdr[:])
			putFrameBuf(fb)
			fb = nil
			if len(batch) < maxBatch {
				select {
				case fb = <-s.out:
				default:
				}
			}
		}
		if err := s.nc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
			s.close()
			return
		}
		if _, err := s.nc.Write(batch); err != nil {
			s.close()
			return
		}
		s.touch()
		if cap(batch) > maxKeptBuffer {
			batch = nil
		}
	}
}

// readFrame reads and opens the next frame. The payload is valid until the
// next call. When nothing arrives for idle (counting frames written too),
// it asks idleClose whether to give up; if not, it keeps waiting.
func (s *tcpSession) readFrame(idle time.Duration, idleClose func() bool) ([]byte, error) {
	if cap(s.rbuf) > maxKeptBuffer {
		s.rbuf = nil
	}
	var hdr [4]byte
	for {
		if err := s.nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return nil, err
		}
		n, err := io.ReadFull(s.r, hdr[:])
		if err == nil {
			break
		}
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, err
		}
		if time.Since(time.Unix(0, s.lastActive.Load())) < idle || !idleClose() {
			continue
		}
		return nil, fmt.Errorf("idle for %s", idle)
	}
	size := int(binary.BigEndian.Uint32(hdr[:]))
	if size < gcmTagSize || size > s.t.opts.MaxFrame+gcmTagSize {
		return nil, fmt.Errorf("%w: frame of %d bytes", errMalformed, size)
	}
	if err := s.nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
		return nil, err
	}
	buf, err := readFull(s.r, s.rbuf[:0], size)
	s.rbuf = buf
	if err != nil {
		return nil, err
	}
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], s.recvSeq)
	p, err := s.open.Open(buf[:0], nonce[:], buf, hdr[:])
	if err != nil {
		return nil, errFrameAuth
	}
	s.recvSeq++
	s.touch()
	return p, nil
}

// readFull reads n bytes into buf, growing it as the bytes arrive rather
// than trusting n up front, so a peer that announces a large frame and
// sends little costs little memory.
func readFull(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) >= n {
		buf = buf[:n]
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	for len(buf) < n {
		step := min(n-len(buf), max(len(buf), 64<<10))
		m := len(buf)
		if cap(buf) < m+step {
			grown := make([]byte, m, m+step)
			copy(grown, buf)
			buf = grown
		}
		buf = buf[:m+step]
		if _, err := io.ReadFull(r, buf[m:]); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// frameBuf is a payload on its way to a writer; pooled, so a call costs no
// buffer allocation in the steady state.
type frameBuf struct{ b []byte }

var frameBufs = sync.Pool{New: func() any { return new(frameBuf) }}

func getFrameBuf() *frameBuf {
	fb := frameBufs.Get().(*frameBuf)
	fb.b = fb.b[:0]
	return fb
}

func putFrameBuf(fb *frameBuf) {
	if cap(fb.b) > maxKeptBuffer {
		fb.b = nil
	}
	frameBufs.Put(fb)
}
