//go:build !linux

package transport

import "net"

// hasInput reports false where peeking is not implemented: a connection
// counts as silent until its handshake goroutine reads its first byte.
func hasInput(net.Conn) bool { return false }
