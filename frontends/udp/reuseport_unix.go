//go:build unix

package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// checkPortFree fails if another socket already holds addr's port. The
// kernel lets any process of the same user join a port whose sockets set
// SO_REUSEPORT, and then splits the datagrams between them: a second
// tracker started on the same address would answer half of each swarm's
// clients with its own peers, with no error anywhere. So before binding
// its SO_REUSEPORT sockets the frontend binds one socket without it,
// which the kernel refuses while any socket holds the port, and lets it
// go. Port 0 always gets a free port. Two processes that both pass this
// check within the same instant can still share the port.
func checkPortFree(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" {
		return nil // an unusable address fails in the bind that follows
	}
	pc, err := new(net.ListenConfig).ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: another socket already holds the port (another karuta, or another program); "+
				"sharing it would split every client's datagrams between the two", err)
		}
		return err
	}
	return pc.Close()
}
