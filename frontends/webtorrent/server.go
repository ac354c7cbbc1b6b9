// Package webtorrent is the WebTorrent tracker frontend: browsers and other
// WebRTC peers announce over a WebSocket, and the frontend relays their
// WebRTC offers and answers to other peers of the swarm, on this node or,
// through a Relay, on the node holding the other peer's socket.
package webtorrent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// Relay carries signals to sockets held by other nodes of a cluster. The
// node a signal goes to is the N of its target's WebRTC address
// (bittorrent.WebRTCParts). Implementations are safe for concurrent use.
type Relay interface {
	// Self is this node's number, the N of its sockets' WebRTC addresses.
	Self() uint32
	// Send queues sig for node's frontend, which delivers it with
	// Server.Deliver. It must not block: a signal it cannot queue is
	// dropped, and the relay counts it. It must not keep sig.
	Send(node uint32, sig *bittorrent.Signal)
}

// LocalRelay is the Relay of a node outside a cluster: every socket is
// its own, so signals for any other node have nowhere to go.
type LocalRelay uint32

// Self implements Relay.
func (r LocalRelay) Self() uint32 { return uint32(r) }

// Send implements Relay; the signal is dropped (and counted by the
// server as a signal for an unknown node).
func (LocalRelay) Send(uint32, *bittorrent.Signal) {}

// NewLocalRelay returns a LocalRelay with a random node number.
func NewLocalRelay() LocalRelay {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return LocalRelay(binary.BigEndian.Uint32(b[:]))
}

// Server is the WebTorrent frontend. Its methods are safe for concurrent
// use.
type Server struct {
	cfg    Config
	t      hooks.Tracker
	relay  Relay
	self   uint32
	routes []route
	// proxies are the trusted proxies whose real_ip_header is believed.
	proxies []netip.Prefix
	rec     *frontends.Recorder
	m       *metrics
	log     *zap.Logger
	tls     *tls.Config

	ln       net.Listener
	poll     *poller // nil: every socket reads on its own goroutine
	noPoll   bool    // tests: read on goroutines, as for wss://
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closing  atomic.Bool
	nextConn atomic.Uint32

	mu     sync.Mutex
	conns  map[uint32]*conn
	perIP  map[netip.Addr]int
	nconns int

	fullMu   sync.Mutex
	lastFull time.Time

	warn *ratelog.Limiter
}

// New builds a WebTorrent frontend answering through t and relaying
// signals for other nodes through relay. Metrics go to rec (requests and
// connections, under frontend="webtorrent") and reg.
func New(cfg Config, t hooks.Tracker, relay Relay, rec *frontends.Recorder, m *Metrics, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webtorrent: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		cfg: cfg, t: t, relay: relay, self: relay.Self(), rec: rec, m: m.m, log: log,
		conns: make(map[uint32]*conn), perIP: make(map[netip.Addr]int),
		warn: ratelog.New(10 * time.Second),
	}
	for _, r := range cfg.Routes {
		rt, _ := compileRoute(r) // checked by Validate
		s.routes = append(s.routes, rt)
	}
	for _, p := range cfg.TrustedProxies {
		pfx, _ := frontends.ParsePrefix(p) // checked by Validate
		s.proxies = append(s.proxies, pfx)
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("webtorrent: load tls_cert/tls_key: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	s.nextConn.Store(binary.BigEndian.Uint32(b[:]))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start opens the listener and begins accepting sockets.
func (s *Server) Start() error {
	// Room for every socket, plus the other frontends' and the cluster's.
	want := uint64(s.cfg.MaxConnections) + 4096 //nolint:gosec // G115: Validate bounds max_connections
	if got := raiseFileLimit(want); got < want {
		s.log.Warn("the open-file limit is below frontends.webtorrent.max_connections; sockets past it are refused by the kernel",
			zap.Uint64("limit", got), zap.Int("max_connections", s.cfg.MaxConnections))
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("webtorrent: listen %s: %w", s.cfg.Addr, err)
	}
	s.ln = ln
	if p, err := newPoller(s); err == nil && !s.noPoll {
		s.poll = p
		s.wg.Add(1)
		go p.run()
	}
	s.wg.Add(2)
	go s.accept()
	go s.sweep()
	return nil
}

// Addr is the listener's address once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting, closes every socket (which removes its peers
// from their swarms) and waits for the server's goroutines, or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.closing.Swap(true) {
		return nil
	}
	s.cancel()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	s.mu.Lock()
	all := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		c.close(closeShutdown)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		if s.poll != nil {
			s.poll.close()
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("webtorrent: shutdown: %w", ctx.Err())
	}
}

func (s *Server) accept() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of descriptors or similar: back off, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				if n, ok := s.warn.Allow(); ok {
					s.log.Warn("accept failed; retrying", zap.Error(err), zap.Uint64("since_last_log", n))
				}
				select {
				case <-time.After(delay):
				case <-s.ctx.Done():
					return
				}
				continue
			}
			s.log.Error("accept failed; WebTorrent frontend stops", zap.Error(err))
			return
		}
		delay = 0
		ap, _ := netip.ParseAddrPort(nc.RemoteAddr().String())
		src := frontends.Source(ap.Addr())
		if frontends.Trusted(s.proxies, ap.Addr().Unmap()) {
			// A trusted proxy carries many clients: the per-source cap
			// does not apply to it (src 0 is never capped).
			src = netip.Addr{}
		}
		if reason := s.admit(src); reason != "" {
			s.rec.RefuseConn(reason)
			_ = nc.Close()
			continue
		}
		s.rec.ConnOpened()
		s.wg.Add(1)
		go s.serve(nc, ap.Addr().Unmap(), src)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// admit counts a new connection from src against the caps, returning the
// refusal reason if it is over one.
func (s *Server) admit(src netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nconns >= s.cfg.MaxConnections {
		return frontends.RefusedMaxConnections
	}
	if src.IsValid() && s.perIP[src] >= s.cfg.MaxConnectionsPerIP {
		return frontends.RefusedMaxConnectionsPerIP
	}
	s.nconns++
	s.perIP[src]++
	return ""
}

func (s *Server) release(src netip.Addr) {
	s.mu.Lock()
	s.nconns--
	if s.perIP[src]--; s.perIP[src] <= 0 {
		delete(s.perIP, src)
	}
	s.mu.Unlock()
	s.rec.ConnClosed()
}

// serve upgrades nc and then reads its messages until it closes.
func (s *Server) serve(nc net.Conn, ip, src netip.Addr) {
	defer s.wg.Done()
	params, ip, ok := s.upgrade(&nc, ip)
	if !ok {
		s.release(src)
		_ = nc.Close()
		return
	}
	c := s.register(nc, ip, src, params)
	if s.poll != nil {
		c.mu.Lock() // see wake
		watched := s.poll.watch(c)
		c.mu.Unlock()
		if watched {
			return // the poller starts a goroutine when bytes arrive
		}
	}
	// Otherwise (wss://, or no epoll) the socket reads on a goroutine of
	// its own, started afresh rather than on this one, whose stack the
	// upgrade has grown.
	s.wg.Add(1)
	go c.readLoop()
}

// upgrade runs the TLS handshake (for wss://) and the WebSocket upgrade
// within handshake_timeout, and matches the path to a route.
func (s *Server) upgrade(ncp *net.Conn, peer netip.Addr) (bittorrent.Params, netip.Addr, bool) {
	nc := *ncp
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if s.tls != nil {
		tc := tls.Server(nc, s.tls)
		if err := tc.HandshakeContext(s.ctx); err != nil {
			s.m.handshakes.WithLabelValues("tls_failed").Inc()
			return bittorrent.Params{}, peer, false
		}
		nc = tc
		*ncp = tc
	}
	var params bittorrent.Params
	var matched bool
	var forwarded [][]byte // the real-IP header's values, from a trusted proxy
	client := peer
	fromProxy := frontends.Trusted(s.proxies, peer)
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			params, matched = s.match(string(uri))
			if !matched {
				return ws.RejectConnectionError(ws.RejectionStatus(404), ws.RejectionReason("no WebTorrent route at this path"))
			}
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if fromProxy && len(forwarded) < 16 && strings.EqualFold(string(key), s.cfg.RealIPHeader) {
				forwarded = append(forwarded, bytes.Clone(value))
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			var ok bool
			if client, ok = frontends.RealIP(s.proxies, peer, forwarded); !ok {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(400), ws.RejectionReason("unreadable client address from a trusted proxy"))
			}
			return ws.HandshakeHeaderString(""), nil
		},
	}
	if _, err := u.Upgrade(nc); err != nil {
		reason := "bad_request"
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			reason = "timeout"
		case !matched && params.Path == "" && err != nil:
			reason = "bad_request"
		}
		if !matched && params.Path != "" {
			reason = "no_route"
		}
		s.m.handshakes.WithLabelValues(reason).Inc()
		return params, peer, false
	}
	_ = nc.SetDeadline(time.Time{})
	s.m.handshakes.WithLabelValues("ok").Inc()
	return params, client, true
}

// match finds the route of a request URI and captures its parameters.
func (s *Server) match(uri string) (bittorrent.Params, bool) {
	path, query, _ := cut(uri, '?')
	p := bittorrent.Params{Path: path, Query: query}
	if len(path) == 0 || path[0] != '/' {
		return p, false
	}
	segs := splitPath(path[1:])
	for _, rt := range s.routes {
		if len(rt.segs) != len(segs) {
			continue
		}
		var caps []bittorrent.Param
		ok := true
		for i, seg := range rt.segs {
			if name := rt.names[i]; name != "" {
				if segs[i] == "" {
					ok = false
					break
				}
				caps = append(caps, bittorrent.Param{Key: name, Value: unescape(segs[i])})
			} else if seg != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			p.Route = caps
			return p, true
		}
	}
	return p, false
}

// register makes nc a socket of this node under a fresh number.
func (s *Server) register(nc net.Conn, ip, src netip.Addr, params bittorrent.Params) *conn {
	c := &conn{s: s, nc: nc, ip: ip, src: src, params: params, tokens: float64(s.cfg.MessageBurst)}
	c.lastRead.Store(time.Now().UnixNano())
	c.lastFill = time.Now()
	s.mu.Lock()
	for {
		id := s.nextConn.Add(1)
		if _, taken := s.conns[id]; !taken && id != 0 {
			c.id = id
			break
		}
	}
	s.conns[c.id] = c
	s.mu.Unlock()
	c.addr = bittorrent.WebRTCAddr(s.self, c.id)
	return c
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c.id)
	s.mu.Unlock()
}

func (s *Server) lookup(id uint32) *conn {
	s.mu.Lock()
	c := s.conns[id]
	s.mu.Unlock()
	return c
}

// sweep pings sockets idle for half of idle_timeout and closes those idle
// for all of it, and forgets expired offers, a slice of the sockets at a
// time so no lock is held for long.
func (s *Server) sweep() {
	defer s.wg.Done()
	period := max(s.cfg.IdleTimeout/8, 50*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	var batch []*conn
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		batch = batch[:0]
		s.mu.Lock()
		for _, c := range s.conns {
			batch = append(batch, c)
		}
		s.mu.Unlock()
		for _, c := range batch {
			c.tick(now)
		}
		clear(batch)
	}
}

// Deliver hands signals that arrived from other nodes to their sockets.
// Signals for sockets gone, or whose offer is no longer outstanding, are
// dropped and counted. It does not block on the sockets.
func (s *Server) Deliver(sigs []bittorrent.Signal) {
	for i := range sigs {
		s.deliver(&sigs[i])
	}
}

// ConnCount is the number of sockets open.
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nconns
}

func cut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func splitPath(p string) []string {
	var segs []string
	for {
		seg, rest, more := cut(p, '/')
		segs = append(segs, seg)
		if !more {
			return segs
		}
		p = rest
	}
}
