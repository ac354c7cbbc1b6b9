package transport

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"go.uber.org/zap"
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
var ErrFrameTooLarge = errors.New("transport: request exceeds the frame size limit")

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
	rejectLog *ratelog.Limiter
	frameLog  *ratelog.Limiter
	acceptLog *ratelog.Limiter

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
			return nil, fmt.Errorf("transport: tcp: %s is negative", f.name)
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
		return nil, fmt.Errorf("transport: tcp: max frame %d is out of range; want %d to %d", opts.MaxFrame, minMaxFrame, math.MaxUint32-gcmTagSize)
	}
	if opts.ConnsPerPeer == 0 {
		opts.ConnsPerPeer = defaultConnsPerPeer
	}
	if len(opts.Label) > 255 {
		return nil, fmt.Errorf("transport: tcp: label is %d bytes; want at most 255", len(opts.Label))
	}
	if len(opts.Keys) > maxKeys {
		return nil, fmt.Errorf("transport: tcp: %d keys; want at most %d", len(opts.Keys), maxKeys)
	}
	keys := make([][]byte, 0, max(1, len(opts.Keys)))
	for i, k := range opts.Keys {
		switch len(k) {
		case 16, 24, 32:
		default:
			return nil, fmt.Errorf("transport: tcp: keys[%d] is %d bytes; want 16, 24 or 32", i, len(k))
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
		rejectLog:  ratelog.New(10 * time.Second),
		frameLog:   ratelog.New(10 * time.Second),
		acceptLog:  ratelog.New(10 * time.Second),
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
		return errors.New("transport: serve: nil handler")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("transport: serve: %w", errTransportClosed)
	}
	if t.ln != nil {
		return errors.New("transport: serve: already serving")
	}
	ln, err := net.Listen("tcp", t.opts.Bind)
	if err != nil {
		return fmt.Errorf("transport: serve: %w", err)
	}
	if !t.goTracked(func() { t.accept(ln, h) }) {
		ln.Close()
		return fmt.Errorf("transport: serve: %w", errTransportClosed)
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
			err = fmt.Errorf("transport: close listener: %w", cerr)
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
