//go:build unix

package udp

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePort says whether several sockets can share one port, each with its
// own reader, the kernel spreading clients across them.
const reusePort = true

// controlReusePort sets SO_REUSEPORT on a socket before it is bound.
func controlReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
