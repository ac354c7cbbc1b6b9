// Package udp is Karuta's UDP tracker frontend: BEP 15 with BEP 41 URL
// data, answered from a hooks.Tracker by a few reader goroutines doing
// batched, allocation-free socket I/O.
package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// Server is a UDP tracker frontend. Start binds its sockets and starts one
// reader goroutine per socket; Shutdown stops them. Its methods are safe for
// concurrent use.
type Server struct {
	cfg  Config
	t    hooks.Tracker
	rec  *frontends.Recorder
	log  *zap.Logger
	keys atomic.Pointer[keyring]

	ctx    context.Context // passed to the tracker; canceled by Shutdown
	cancel context.CancelFunc

	mu      sync.Mutex
	state   int // one of the states below
	conns   []*net.UDPConn
	addr    net.Addr
	readers sync.WaitGroup
}

const (
	stateNew = iota
	stateStarted
	stateStopped
)

// New checks cfg and returns a server answering from t. rec may be nil (no
// metrics), and so may log. Nothing is bound until Start.
func New(cfg Config, t hooks.Tracker, rec *frontends.Recorder, log *zap.Logger) (*Server, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("udp: %w", err)
	}
	if cfg.Addr == "" {
		return nil, errors.New("udp: addr is empty: the frontend is disabled")
	}
	s := &Server{cfg: cfg, t: t, rec: rec, log: log}
	if len(cfg.ConnectionIDKeys) == 0 {
		// Fine for a single node; the node warns when it is clustered.
		log.Info("udp: connection_id_keys is empty; using a random key for this process")
		s.keys.Store(randomKeyring())
	} else if err := s.SetConnectionIDKeys(cfg.ConnectionIDKeys); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// SetConnectionIDKeys replaces the connection ID keys, for a reload: the
// first key mints, all verify. Readers pick the new keys up at their next
// packet. An empty list keeps the keys in force (a random key, if there
// never were any), since new random keys would void every ID handed out.
func (s *Server) SetConnectionIDKeys(keys []string) error {
	if len(keys) == 0 {
		s.log.Warn("udp: connection_id_keys is empty; keeping the keys in force")
		return nil
	}
	kr, err := newKeyring(keys)
	if err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	s.keys.Store(kr)
	return nil
}

// Start binds the sockets and starts the readers. With port 0 the first
// socket picks a free port and the others bind the same one.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		return errors.New("udp: Start called twice or after Shutdown")
	}
	readers := s.cfg.Readers
	if readers == 0 {
		readers = runtime.GOMAXPROCS(0)
	}
	sockets := readers
	if !reusePort {
		sockets = 1
	}
	conns, err := listen(s.cfg.Addr, sockets)
	if err != nil {
		return fmt.Errorf("udp: listen on %s: %w", s.cfg.Addr, err)
	}
	rcvbuf := 0
	for _, c := range conns {
		got, err := setReceiveBuffer(c, s.cfg.ReceiveBuffer)
		if err != nil {
			closeAll(conns)
			return fmt.Errorf("udp: %w", err)
		}
		rcvbuf = got
	}
	if s.cfg.ReceiveBuffer > 0 && rcvbuf < s.cfg.ReceiveBuffer {
		// Not fatal: the socket works, it only drops sooner in a burst.
		s.log.Warn("udp receive buffer is smaller than configured; raise net.core.rmem_max or grant CAP_NET_ADMIN",
			zap.Int("receive_buffer", s.cfg.ReceiveBuffer), zap.Int("granted", rcvbuf))
	}
	// One limit per kind of warning for all readers together.
	failLog, ioLog, limitLog := ratelog.New(10*time.Second), ratelog.New(10*time.Second), ratelog.New(10*time.Second)
	limit := newConnectLimiter(s.cfg.ConnectRate, s.cfg.ConnectBurst, s.cfg.ConnectSources)
	rs := make([]*reader, readers)
	for i := range rs {
		pio, batch, err := newPacketIO(conns[i%len(conns)], s.cfg.BatchSize)
		if err != nil {
			closeAll(conns)
			return fmt.Errorf("udp: %w", err)
		}
		h := newHandler(s.ctx, s.t, s.rec, &s.keys, s.log, failLog)
		h.limit, h.limitLog = limit, limitLog
		h.after = make([]*bittorrent.AnnounceRequest, 0, batch)
		rs[i] = &reader{
			io:    pio,
			h:     h,
			slots: make([]slot, batch),
			log:   s.log,
			ioLog: ioLog,
		}
		for j := range rs[i].slots {
			rs[i].slots[j] = newSlot()
		}
	}
	s.conns, s.addr, s.state = conns, conns[0].LocalAddr(), stateStarted
	for _, r := range rs {
		s.readers.Go(r.run)
	}
	s.log.Info("udp frontend listening", zap.Stringer("addr", s.addr),
		zap.Int("sockets", len(conns)), zap.Int("readers", readers), zap.Int("batch_size", s.cfg.BatchSize),
		zap.Int("receive_buffer", rcvbuf))
	return nil
}

// listen binds n sockets to addr sharing one port through SO_REUSEPORT,
// after checking that no other socket holds the port.
func listen(addr string, n int) ([]*net.UDPConn, error) {
	if err := checkPortFree(addr); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: controlReusePort}
	conns := make([]*net.UDPConn, 0, n)
	for range n {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, pc.(*net.UDPConn))
		// Port 0 means "any" only for the first socket; the rest must
		// join it.
		addr = pc.LocalAddr().String()
	}
	return conns, nil
}

func closeAll(conns []*net.UDPConn) {
	for _, c := range conns {
		_ = c.Close() // nothing to do about a failed close of a socket being abandoned
	}
}

// Addr returns the address of the first socket (all share it), or nil before
// Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Shutdown closes the sockets, which stops the readers, and waits for them
// to finish the batch in hand, or for ctx to end. Calling it again, or
// before Start, does nothing.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	started := s.state == stateStarted
	s.state = stateStopped
	conns := s.conns
	s.mu.Unlock()
	s.cancel()
	if !started {
		return nil
	}
	closeAll(conns)
	done := make(chan struct{})
	go func() {
		s.readers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("udp: shutdown: waiting for readers: %w", ctx.Err())
	}
}
