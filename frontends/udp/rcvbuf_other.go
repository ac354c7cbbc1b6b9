//go:build !linux

package udp

import (
	"fmt"
	"net"
)

// setReceiveBuffer asks for a kernel receive buffer of n bytes. Outside
// Linux the granted size is not reported, so it returns n.
func setReceiveBuffer(c *net.UDPConn, n int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	if err := c.SetReadBuffer(n); err != nil {
		return 0, fmt.Errorf("receive buffer of %d bytes: %w", n, err)
	}
	return n, nil
}
