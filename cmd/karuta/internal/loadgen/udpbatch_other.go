//go:build !linux

package loadgen

import (
	"errors"
	"net"
)

// batchConn reads and writes one datagram per call where recvmmsg and
// sendmmsg do not exist.
type batchConn struct{ conn *net.UDPConn }

func newBatchConn(conn *net.UDPConn, _ int) (*batchConn, error) { return &batchConn{conn: conn}, nil }

// read reads one datagram into bufs[0], waiting for it or the read
// deadline.
func (b *batchConn) read(bufs [][]byte, sizes []int) (int, error) {
	n, err := b.conn.Read(bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

// write sends pkts and returns the indexes of those the kernel refused.
func (b *batchConn) write(pkts [][]byte) ([]int, error) {
	var failed []int
	for i, p := range pkts {
		if _, err := b.conn.Write(p); errors.Is(err, net.ErrClosed) {
			return failed, err
		} else if err != nil {
			failed = append(failed, i)
		}
	}
	return failed, nil
}
