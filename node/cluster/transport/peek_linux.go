package transport

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// hasInput reports whether bytes from the peer (or its close) wait unread
// on nc, without reading them or blocking: a connection whose handshake
// goroutine has not run yet is talking all the same.
func hasInput(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	waiting := false
	_ = raw.Control(func(fd uintptr) {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		waiting = n > 0 && err == nil
	})
	return waiting
}
