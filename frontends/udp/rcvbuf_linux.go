package udp

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// setReceiveBuffer asks for a kernel receive buffer of n bytes. It tries
// SO_RCVBUFFORCE first, which may pass net.core.rmem_max when the process
// has CAP_NET_ADMIN, and falls back to SO_RCVBUF, which the kernel holds
// to that limit. It returns the size the kernel granted.
func setReceiveBuffer(c *net.UDPConn, n int) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("receive buffer: %w", err)
	}
	var got int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if n > 0 {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
			}
		}
		// The kernel reports twice what it keeps for data: the rest is
		// its bookkeeping.
		v, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		if serr == nil {
			serr = gerr
		}
		got = v / 2
	}); err != nil {
		return 0, fmt.Errorf("receive buffer: %w", err)
	}
	if serr != nil {
		return got, fmt.Errorf("receive buffer of %d bytes: %w", n, serr)
	}
	return got, nil
}
