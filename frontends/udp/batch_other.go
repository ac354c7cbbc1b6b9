//go:build !linux

package udp

import "net"

// newPacketIO returns the socket I/O for conn and how many slots it fills
// per read. Without recvmmsg/sendmmsg every platform but Linux reads and
// writes one datagram per call, whatever batchSize says.
func newPacketIO(conn *net.UDPConn, _ int) (packetIO, int, error) {
	return singleIO{conn: conn}, 1, nil
}
