//go:build linux

package webtorrent

import (
	"errors"
	"net"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// An idle WebSocket costs what its goroutine costs: a stack of at least
// 2 KiB, more often 4 KiB once the runtime's adaptive stack start has seen
// deeper goroutines, and that was most of an idle peer's memory. So on
// Linux an idle socket has no goroutine at all. Its descriptor is also
// registered, one-shot, with an epoll instance of the frontend's own;
// when bytes arrive the poller starts a goroutine that reads and handles
// messages while bytes keep coming, re-arms the registration and exits.
// The reads themselves still go through net.Conn and the Go runtime's
// poller, and the framing through the ws package.

// poller watches idle sockets for bytes. Safe for concurrent use.
type poller struct {
	epfd int
	s    *Server
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller(s *Server) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &poller{epfd: fd, s: s}, nil
}

// fdOf returns a plain TCP socket's descriptor; false for anything else
// (a TLS connection buffers what it has read, so readiness of its
// descriptor says nothing about whether a message is waiting).
func fdOf(nc net.Conn) (int, bool) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return 0, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// watch registers c's socket; false means c must read on a goroutine of
// its own.
func (p *poller) watch(c *conn) bool {
	fd, ok := fdOf(c.nc)
	if !ok {
		return false
	}
	c.fd = fd
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(c.id)} //nolint:gosec // G115: the id's bits, not a number
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev) == nil
}

// rearm asks for the next wake of c, which must be open.
func (p *poller) rearm(c *conn) error {
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(c.id)} //nolint:gosec // G115: as in watch
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
}

// run hands each socket with bytes waiting to a goroutine, until the
// server closes.
func (p *poller) run() {
	defer p.s.wg.Done()
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, 200)
		if p.s.closing.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			p.s.log.Error("epoll_wait failed; WebTorrent sockets are no longer read", zap.Error(err))
			return
		}
		for _, ev := range events[:n] {
			if c := p.s.lookup(uint32(ev.Fd)); c != nil { //nolint:gosec // G115: the id's bits, as registered
				p.s.wg.Add(1)
				go c.wake()
			}
		}
	}
}

func (p *poller) close() { _ = unix.Close(p.epfd) }
