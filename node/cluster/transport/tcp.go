package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// The TCP data channel: TLS 1.3 (handshake.go), then frames in both
// directions:
//
//	frame    len:4 (big endian, of the payload) payload:len
//	request  id:8 timeout-ms:4 message   (timeout 0: the caller set none)
//	reply    id:8 message                (the id of the request it answers)
//
// with messages as in wire.go. Replies may come in any order. TLS's record
// layer encrypts and authenticates the frames and refuses them replayed,
// reordered or reflected.
const (
	requestHeaderSize = 8 + 4
	replyHeaderSize   = 8
)

const (
	defaultDialTimeout  = 5 * time.Second
	defaultIdleTimeout  = 2 * time.Minute
	defaultConnsPerPeer = 2
	// DefaultMaxFrame bounds a frame's payload: twice the largest message
	// a node sends (a handoff of 8192 peers is under 300 KiB, an Apply of
	// 256 changes about 20 KiB), small enough that a peer cannot make a
	// node hold much memory per request.
	DefaultMaxFrame = 2 << 20
	// minMaxFrame leaves room for the largest error reply; maxMaxFrame
	// keeps a frame's length well inside its 4 bytes.
	minMaxFrame = 4 << 10
	maxMaxFrame = 1 << 30

	// DefaultHandshakeTimeout bounds the time from accepting a
	// connection, or dialling one, to the end of its handshake: TLS and
	// the key exchange take a few round trips, so a second is generous on
	// a LAN and short enough that silent connections go soon.
	DefaultHandshakeTimeout = time.Second
	// DefaultMaxPending bounds connections accepted and not yet
	// authenticated, in total: what peers that have proven nothing can
	// make the node hold (a descriptor and a few KB each). When it is
	// full, older ones yield to a new one (preauth.go).
	DefaultMaxPending = 1024
	// DefaultMaxPendingPerSource bounds those that have sent nothing per
	// unknown source address (one no member is known at and no handshake
	// succeeded from lately).
	DefaultMaxPendingPerSource = 8
	// DefaultMaxSessionsPerPeer bounds the authenticated connections from
	// one peer (a node keeps ConnsPerPeer, normally 2, to each other).
	DefaultMaxSessionsPerPeer = 8
	// DefaultMaxInflight bounds the request bytes being decoded or
	// handled at once, over all connections: the memory peers can make a
	// node hold in requests.
	DefaultMaxInflight = 64 << 20

	// writeTimeout bounds writing one batch of frames: a peer that reads
	// nothing for this long has its connection closed.
	writeTimeout = 10 * time.Second
	// maxHandlersPerConn bounds the requests of one connection being
	// handled at once; past it the connection is not read until one ends.
	maxHandlersPerConn = 64
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
)

// Members tells the transport which nodes belong to the cluster now; node
// implements it from the gossip membership. Its methods are called on
// every accepted connection and every dial, concurrently, and must not
// block.
type Members interface {
	// HostIsMember reports whether ip is an address a current member is
	// known at. It decides nothing: a member is whoever proves it in the
	// handshake, from any address. Connections from such addresses only
	// go first when connections must wait or yield (preauth.go).
	HostIsMember(ip netip.Addr) bool
	// NameAt returns the member whose data channel is at addr.
	NameAt(addr string) (name string, ok bool)
	// IsMember reports whether name is a current member.
	IsMember(name string) bool
}

// TCPOptions configure a TCP transport. Zero values take the defaults
// noted. Every node of a cluster should use the same mode, Label and
// MaxFrame.
type TCPOptions struct {
	// Bind is the host:port Serve listens on; port 0 picks a free port.
	Bind string
	// LocalAddr is the IP address connections to other nodes leave from;
	// empty lets the kernel choose. Set it to the address this node is
	// known at when the host has several, so a peer sees the address it
	// expects (the handshake, not the address, decides either way).
	LocalAddr string
	// Name is this node's name, which the handshake tells the other side
	// so that its sessions are counted per node even when several nodes
	// share an address. In certificate mode the certificate names the
	// node instead. At most 255 bytes.
	Name string
	// Certs selects certificate mode: every node presents a certificate
	// for its name from the cluster CA, and checks the other side's. The
	// files are read again when they change, and on Reload.
	Certs *CertFiles
	// Keys are the cluster's secret keys (any length from 16 bytes, at
	// most 16 keys). Without Certs they select shared-key mode: both
	// sides prove a key over the TLS session. A connection uses the first
	// key of the caller's list that the callee also has; any key in the
	// list is accepted. To rotate, add the new key second on every node,
	// then move it first everywhere, then remove the old one. With Certs
	// they are not used here.
	Keys [][]byte
	// Insecure allows neither Certs nor Keys: connections are still TLS,
	// but any host that reaches the port can call.
	Insecure bool
	// Members says who may connect and whom an address belongs to;
	// required.
	Members Members
	// Label must match between nodes; it keeps clusters sharing a network
	// apart. At most 255 bytes.
	Label string
	// Log receives rate-limited warnings about rejected connections; nil
	// means no logging.
	Log *zap.Logger
	// Registerer receives the transport's metrics; nil means none.
	Registerer prometheus.Registerer
	// Refused, if set, hears of every connection refused after its peer
	// tried to prove itself (a failed or late handshake, a certificate
	// naming no member, a session over the limit, a bad frame), with its
	// source address, the reason (a value of the reason label of
	// karuta_cluster_data_rejected_total) and the error, so the node can
	// tell a member whose connections fail. Connections closed to make
	// room or for silence say nothing of any member (a flood may come
	// from a member's own address) and are only counted. It must not
	// block.
	Refused func(remote netip.Addr, reason string, err error)
	// DialTimeout bounds connecting to a node, handshake excluded
	// (default 5s).
	DialTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake and key proof on both
	// sides, from accepting or dialling (default DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// IdleTimeout is how long a connection with no calls in flight stays
	// open (default 2m). Servers wait twice as long, so the calling side,
	// which knows whether it is about to send, closes first.
	IdleTimeout time.Duration
	// MaxFrame bounds the payload of one frame, a request or a reply
	// (default DefaultMaxFrame, at least 4 KiB).
	MaxFrame int
	// ConnsPerPeer is how many connections are kept to each node and
	// shared by all calls to it (default 2).
	ConnsPerPeer int
	// MaxPending, MaxPendingPerSource and MaxSessionsPerPeer bound
	// connections (defaults DefaultMaxPending, DefaultMaxPendingPerSource,
	// DefaultMaxSessionsPerPeer).
	MaxPending, MaxPendingPerSource, MaxSessionsPerPeer int
	// MaxHandshakes bounds the handshakes the node works on at once
	// (default twice GOMAXPROCS, at least 4); connections waiting for
	// their peer hold none.
	MaxHandshakes int
	// MaxInflight bounds the bytes of requests being decoded or handled
	// at once (default DefaultMaxInflight, at least MaxFrame).
	MaxInflight int
}

// TCP is the Transport between nodes in production: persistent TLS 1.3
// connections, mutually authenticated by certificates or by a shared key,
// each carrying many calls at once. It is safe for concurrent use.
type TCP struct {
	opts      TCPOptions // defaults filled in
	keys      []sharedKey
	certs     *certStore      // nil outside certificate mode
	ephemeral tls.Certificate // shared-key and insecure modes
	log       *zap.Logger
	rejectLog *ratelog.Limiter
	frameLog  *ratelog.Limiter
	acceptLog *ratelog.Limiter
	reloadLog *ratelog.Limiter
	metrics   *tcpMetrics
	inflight  *semaphore.Weighted // MaxInflight bytes of requests

	ctx    context.Context // done at Close
	cancel context.CancelFunc

	// goMu guards stopping and orders wg.Add before Close's wg.Wait. It is
	// taken last: nothing is locked while holding it.
	goMu     sync.Mutex
	stopping bool
	wg       sync.WaitGroup

	localAddr *net.TCPAddr // nil: the kernel chooses
	pre       *preauthPool
	slots     *handshakeSlots
	proven    *provenSources

	mu       sync.Mutex
	closed   bool
	ln       net.Listener
	pools    map[string]*tcpPool
	sessions map[*tcpSession]struct{}
	perPeer  map[string]int // accepted sessions by the peer handshake names
}

// NewTCP returns a TCP transport. It opens nothing: Serve listens, Call
// connects on first use. In certificate mode it reads the files now.
func NewTCP(opts TCPOptions) (*TCP, error) {
	for _, f := range []struct {
		name string
		val  int64
	}{
		{"dial timeout", int64(opts.DialTimeout)},
		{"handshake timeout", int64(opts.HandshakeTimeout)},
		{"idle timeout", int64(opts.IdleTimeout)},
		{"max frame", int64(opts.MaxFrame)},
		{"conns per peer", int64(opts.ConnsPerPeer)},
		{"max pending", int64(opts.MaxPending)},
		{"max pending per source", int64(opts.MaxPendingPerSource)},
		{"max sessions per peer", int64(opts.MaxSessionsPerPeer)},
		{"max handshakes", int64(opts.MaxHandshakes)},
		{"max inflight", int64(opts.MaxInflight)},
	} {
		if f.val < 0 {
			return nil, fmt.Errorf("transport: tcp: %s is negative", f.name)
		}
	}
	setDefault(&opts.DialTimeout, defaultDialTimeout)
	setDefault(&opts.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&opts.IdleTimeout, defaultIdleTimeout)
	setDefault(&opts.MaxFrame, DefaultMaxFrame)
	setDefault(&opts.ConnsPerPeer, defaultConnsPerPeer)
	setDefault(&opts.MaxPending, DefaultMaxPending)
	setDefault(&opts.MaxPendingPerSource, DefaultMaxPendingPerSource)
	setDefault(&opts.MaxSessionsPerPeer, DefaultMaxSessionsPerPeer)
	setDefault(&opts.MaxInflight, DefaultMaxInflight)
	setDefault(&opts.MaxHandshakes, max(4, 2*runtime.GOMAXPROCS(0)))
	if opts.MaxFrame < minMaxFrame || opts.MaxFrame > min(opts.MaxInflight, maxMaxFrame) {
		return nil, fmt.Errorf("transport: tcp: max frame %d is out of range; want %d to %d and at most max inflight (%d)", opts.MaxFrame, minMaxFrame, maxMaxFrame, opts.MaxInflight)
	}
	if len(opts.Label) > maxLabel {
		return nil, fmt.Errorf("transport: tcp: label is %d bytes; want at most %d", len(opts.Label), maxLabel)
	}
	if len(opts.Name) > maxName {
		return nil, fmt.Errorf("transport: tcp: name is %d bytes; want at most %d", len(opts.Name), maxName)
	}
	if len(opts.Keys) > maxKeys {
		return nil, fmt.Errorf("transport: tcp: %d keys; want at most %d", len(opts.Keys), maxKeys)
	}
	if opts.Members == nil {
		return nil, errors.New("transport: tcp: no Members: the transport must know who may connect")
	}
	var local *net.TCPAddr
	if opts.LocalAddr != "" {
		ip, err := netip.ParseAddr(opts.LocalAddr)
		if err != nil {
			return nil, fmt.Errorf("transport: tcp: local address %q: %w", opts.LocalAddr, err)
		}
		local = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	metrics := newTCPMetrics(opts.Registerer)
	t := &TCP{
		localAddr: local,
		pre: newPreauthPool(opts.MaxPending, opts.MaxPendingPerSource, true, func(d int) {
			metrics.pending.Add(float64(d))
		}),
		slots:     newHandshakeSlots(opts.MaxHandshakes),
		proven:    newProvenSources(),
		log:       opts.Log,
		rejectLog: ratelog.New(10 * time.Second),
		frameLog:  ratelog.New(10 * time.Second),
		acceptLog: ratelog.New(10 * time.Second),
		reloadLog: ratelog.New(10 * time.Second),
		metrics:   metrics,
		inflight:  semaphore.NewWeighted(int64(opts.MaxInflight)),
		pools:     map[string]*tcpPool{},
		sessions:  map[*tcpSession]struct{}{},
		perPeer:   map[string]int{},
	}
	if t.log == nil {
		t.log = zap.NewNop()
	}
	var err error
	switch {
	case opts.Certs != nil:
		if t.certs, err = newCertStore(*opts.Certs); err != nil {
			return nil, err
		}
	case len(opts.Keys) > 0:
		for i, k := range opts.Keys {
			if len(k) < 16 {
				return nil, fmt.Errorf("transport: tcp: keys[%d] is %d bytes; want at least 16", i, len(k))
			}
			sk, err := newSharedKey(k)
			if err != nil {
				return nil, fmt.Errorf("transport: tcp: keys[%d]: %w", i, err)
			}
			t.keys = append(t.keys, sk)
		}
	case !opts.Insecure:
		return nil, errors.New("transport: tcp: neither certificates nor keys; set Insecure to run unauthenticated on purpose")
	}
	if t.certs == nil {
		if t.ephemeral, err = newEphemeral(); err != nil {
			return nil, fmt.Errorf("transport: tcp: ephemeral certificate: %w", err)
		}
	}
	opts.Keys = nil // t.keys holds what is needed
	t.opts = opts
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Reload reads the certificate files again now, rather than at the next
// handshake after they change; without certificate mode it does nothing.
// Sessions already established are kept. On error the previous files
// stay in use.
func (t *TCP) Reload() error {
	if t.certs == nil {
		return nil
	}
	return t.certs.Reload()
}

// noteReload logs a failed automatic reload, at a sane rate.
func (t *TCP) noteReload(err error) {
	if err == nil {
		return
	}
	if n, ok := t.reloadLog.Allow(); ok {
		t.log.Warn("data channel: certificate files changed but do not load; still using the previous ones", zap.Error(err), zap.Uint64("events", n))
	}
}

// Addr returns the listener's address once Serve has run, else Bind. A
// wildcard host in it is replaced by the gossip address before other
// nodes hear of it (ring's resolveDataAddr).
func (t *TCP) Addr() string {
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

// errSessionLimit refuses a peer's session past MaxSessionsPerPeer.
var errSessionLimit = errors.New("too many sessions from the peer")

// track registers an authenticated session for Close to close. An
// accepted one counts against its peer's key (peer is empty for sessions
// this node dialed).
func (t *TCP) track(s *tcpSession, peer string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errTransportClosed
	}
	if peer != "" {
		if t.perPeer[peer] >= t.opts.MaxSessionsPerPeer {
			return errSessionLimit
		}
		t.perPeer[peer]++
	}
	s.peer = peer
	t.sessions[s] = struct{}{}
	t.metrics.sessions.Inc()
	return nil
}

func (t *TCP) untrack(s *tcpSession) {
	t.mu.Lock()
	if _, ok := t.sessions[s]; ok {
		delete(t.sessions, s)
		t.metrics.sessions.Dec()
		if s.peer != "" {
			if t.perPeer[s.peer]--; t.perPeer[s.peer] <= 0 {
				delete(t.perPeer, s.peer)
			}
		}
	}
	t.mu.Unlock()
}
