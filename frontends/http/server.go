// Package http is the HTTP tracker frontend (BEP 3, 7, 23, 48): a small
// HTTP/1.1 server built for tracker GETs, which parses announces and scrapes
// and answers them in bencode through the hook chain.
package http

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// ErrServerClosed is returned by Start after Shutdown.
var ErrServerClosed = errors.New("http: server closed")

// Server is the HTTP tracker frontend. It serves each connection on its own
// goroutine with buffers reused across the connection's requests, instead
// of net/http, which costs about 34µs of CPU per keep-alive request against
// a budget of 25µs. Methods are safe for concurrent use.
type Server struct {
	cfg          Config
	t            hooks.Tracker
	rec          *frontends.Recorder
	log          *zap.Logger
	router       *router
	proxies      []netip.Prefix
	realIPHeader string // lower case; empty when no proxies are trusted
	tls          *tls.Config

	// ctx is passed to the tracker; it is cancelled when Shutdown gives up
	// waiting, to cut short in-flight hook calls.
	ctx    context.Context
	cancel context.CancelFunc

	closing   atomic.Bool
	stopping  chan struct{} // closed when Shutdown starts, to end waits
	stopOnce  sync.Once
	errLog    *ratelog.Limiter
	acceptLog *ratelog.Limiter
	limitLog  *ratelog.Limiter
	fullLog   *ratelog.Limiter
	fullGate  fullScrapeGate

	mu      sync.Mutex
	ln      net.Listener
	started bool
	conns   map[*conn]struct{}
	perIP   map[netip.Addr]int // open connections by limitKey, for those limited
	peak    int                // most connections in conns since it was last rebuilt
	wg      sync.WaitGroup     // the accept loop and every connection
}

// New checks cfg and prepares a server answering through t. rec may be nil.
// It loads the TLS key pair but does not listen until Start.
func New(cfg Config, t hooks.Tracker, rec *frontends.Recorder, log *zap.Logger) (*Server, error) {
	if cfg.Addr == "" {
		return nil, errors.New("http: addr: empty; the HTTP frontend is disabled and must not be created")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = max(DefaultMaxConnections, cfg.MaxConnectionsPerIP)
	}
	rt, err := newRouter(cfg.AnnounceRoutes, cfg.ScrapeRoutes)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		t:         t,
		rec:       rec,
		log:       log,
		router:    rt,
		errLog:    ratelog.New(10 * time.Second),
		acceptLog: ratelog.New(10 * time.Second),
		limitLog:  ratelog.New(10 * time.Second),
		fullLog:   ratelog.New(time.Minute),
		fullGate:  fullScrapeGate{interval: cfg.FullScrapeInterval},
		conns:     map[*conn]struct{}{},
		perIP:     map[netip.Addr]int{},
		stopping:  make(chan struct{}),
	}
	for _, p := range cfg.TrustedProxies {
		pfx, _ := parsePrefix(p) // checked by Validate
		s.proxies = append(s.proxies, pfx)
	}
	if len(s.proxies) > 0 {
		s.realIPHeader = strings.ToLower(cfg.RealIPHeader)
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("http: tls_cert, tls_key: %w", err)
		}
		s.tls = &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"http/1.1"},
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Start listens on the configured address and serves in the background
// until Shutdown. Port 0 picks a free port; Addr tells which.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return ErrServerClosed
	}
	if s.started {
		return errors.New("http: already started")
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("http: listen on %s: %w", s.cfg.Addr, err)
	}
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
	}
	if limit, ok := fileLimit(); ok && fileLimitTight(s.cfg.MaxConnections, limit) {
		s.log.Warn("http: frontends.http.max_connections leaves too few file descriptors for the rest of the node; lower it or raise the limit (ulimit -n, LimitNOFILE)",
			zap.Int("max_connections", s.cfg.MaxConnections), zap.Uint64("file_limit", limit), zap.Int("want_spare", fdHeadroom))
	}
	s.ln, s.started = ln, true
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

// Addr returns the listening address, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting, closes idle connections, and waits for the
// requests in flight to be answered and their connections closed (a
// connection closed after an answer drains its input for up to 500ms, so
// the answer is not lost to a reset). If ctx ends first, it cancels hook
// calls, closes every connection, waits for their goroutines to return,
// and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	ln := s.ln
	s.mu.Unlock()
	s.stopOnce.Do(func() { close(s.stopping) })
	if ln != nil {
		_ = ln.Close()
	}
	// A busy connection sees closing when it next goes idle and closes
	// itself; idle ones are closed here.
	s.forEachConn(func(c *conn) {
		if c.state.CompareAndSwap(stateIdle, stateClosed) {
			_ = c.nc.Close()
		}
	})
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.forEachConn(func(c *conn) { _ = c.nc.Close() })
		<-done
		return ctx.Err()
	}
}

func (s *Server) forEachConn(f func(*conn)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		f(c)
	}
}

// accept runs until the listener is closed. Errors such as running out of
// file descriptors are retried with a growing pause, so a burst of
// connections cannot stop the server.
func (s *Server) accept(ln net.Listener) {
	defer s.wg.Done()
	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			if n, ok := s.acceptLog.Allow(); ok {
				s.log.Warn("http: accept failed; retrying",
					zap.Error(err), zap.Duration("pause", pause), zap.Uint64("errors_since_last_log", n))
			}
			select {
			case <-time.After(pause):
			case <-s.stopping:
				return
			}
			continue
		}
		pause = 0
		c := newConn(s, nc)
		switch ok, refused := s.track(c); {
		case refused != "":
			// Closed at once, unanswered: an answer would mean reading
			// the request first (closing on unread input resets the
			// connection and loses the answer), which is the cost the
			// cap is there to avoid. Counted first, so that whoever sees
			// the close also sees the count.
			s.refuse(c, refused)
			_ = nc.Close()
		case !ok:
			_ = nc.Close()
			return
		default:
			go c.serve()
		}
	}
}

// track registers c so Shutdown can find and wait for it. It refuses c,
// with the reason, when the server holds max_connections connections or
// c's source holds max_connections_per_ip, and reports false once Shutdown
// has begun.
func (s *Server) track(c *conn) (ok bool, refused string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false, ""
	}
	if len(s.conns) >= s.cfg.MaxConnections {
		return false, frontends.RefusedMaxConnections
	}
	if c.limited {
		if s.perIP[c.limitKey] >= s.cfg.MaxConnectionsPerIP {
			return false, frontends.RefusedMaxConnectionsPerIP
		}
		s.perIP[c.limitKey]++
	}
	s.conns[c] = struct{}{}
	s.peak = max(s.peak, len(s.conns))
	s.rec.ConnOpened()
	s.wg.Add(1)
	return true, ""
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.limited {
		if n := s.perIP[c.limitKey] - 1; n > 0 {
			s.perIP[c.limitKey] = n
		} else {
			delete(s.perIP, c.limitKey)
		}
	}
	// Go maps keep their largest size: after a flood of connections,
	// build them again once a quarter of it is left, so the memory comes
	// back.
	if s.peak >= 1024 && 4*len(s.conns) < s.peak {
		s.conns, s.perIP, s.peak = rebuilt(s.conns), rebuilt(s.perIP), len(s.conns)
	}
	s.mu.Unlock()
	s.rec.ConnClosed()
	s.wg.Done()
}

// rebuilt copies m into a map sized for what it holds now (maps.Clone
// keeps the original's size).
func rebuilt[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// refuse counts and, at most once per 10 seconds, logs a connection
// refused for reason.
func (s *Server) refuse(c *conn, reason string) {
	s.rec.RefuseConn(reason)
	if n, ok := s.limitLog.Allow(); ok {
		key := "frontends.http.max_connections"
		if reason == frontends.RefusedMaxConnectionsPerIP {
			key = "frontends.http.max_connections_per_ip"
		}
		s.log.Warn("http: connections refused at their cap", zap.String("cap", key),
			zap.Stringer("source", c.peer), zap.Uint64("refused_since_last_log", n))
	}
}
