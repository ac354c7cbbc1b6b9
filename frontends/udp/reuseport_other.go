//go:build !unix

package udp

import "syscall"

// reusePort says whether several sockets can share one port. Without
// SO_REUSEPORT there is one socket, which all readers share.
const reusePort = false

// controlReusePort does nothing where SO_REUSEPORT does not exist.
func controlReusePort(_, _ string, _ syscall.RawConn) error { return nil }

// checkPortFree does nothing: without SO_REUSEPORT the bind itself fails
// when the port is taken.
func checkPortFree(string) error { return nil }
