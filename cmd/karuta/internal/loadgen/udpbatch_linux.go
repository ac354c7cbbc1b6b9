//go:build linux

package loadgen

import (
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchConn reads and writes datagrams on a connected UDP socket, many
// per system call: recvmmsg and sendmmsg through the socket's RawConn, so
// Go's poller still parks the goroutine while the socket is idle and read
// deadlines hold. The headers are built once and point at Go memory this
// value keeps reachable.
type batchConn struct {
	rc       syscall.RawConn
	recvMsgs []unix.Mmsghdr
	recvIovs []unix.Iovec
	sendMsgs []unix.Mmsghdr
	sendIovs []unix.Iovec

	// In and out of the callbacks.
	nrecv, nsend, sent int
	failed             []int // indexes of the messages the kernel refused
	errno              syscall.Errno
	recvFn, sendFn     func(fd uintptr) bool
}

func newBatchConn(conn *net.UDPConn, size int) (*batchConn, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	b := &batchConn{
		rc:       rc,
		recvMsgs: make([]unix.Mmsghdr, size),
		recvIovs: make([]unix.Iovec, size),
		sendMsgs: make([]unix.Mmsghdr, size),
		sendIovs: make([]unix.Iovec, size),
	}
	for i := range size {
		b.recvMsgs[i].Hdr.Iov = &b.recvIovs[i]
		b.recvMsgs[i].Hdr.SetIovlen(1)
		b.sendMsgs[i].Hdr.Iov = &b.sendIovs[i]
		b.sendMsgs[i].Hdr.SetIovlen(1)
	}
	b.recvFn, b.sendFn = b.recv, b.send
	return b, nil
}

// read fills bufs[i][:sizes[i]] with the datagrams waiting, waiting for
// one (or the read deadline) if there is none, and returns how many.
func (b *batchConn) read(bufs [][]byte, sizes []int) (int, error) {
	n := min(len(bufs), len(b.recvMsgs))
	for i := range n {
		b.recvIovs[i].Base = &bufs[i][0]
		b.recvIovs[i].SetLen(len(bufs[i]))
	}
	b.nrecv, b.errno = n, 0
	if err := b.rc.Read(b.recvFn); err != nil {
		return 0, err
	}
	if b.errno != 0 {
		return 0, b.errno
	}
	for i := range b.nrecv {
		sizes[i] = int(b.recvMsgs[i].Len)
	}
	return b.nrecv, nil
}

func (b *batchConn) recv(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.recvMsgs[0])), uintptr(b.nrecv), 0, 0, 0)
		switch errno {
		case 0:
			b.nrecv = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			// ECONNREFUSED: an ICMP error for an earlier datagram.
			b.nrecv, b.errno = 0, errno
			return true
		}
	}
}

// write sends pkts and returns the indexes of those the kernel refused
// (ECONNREFUSED after an ICMP error, say); the rest went out.
func (b *batchConn) write(pkts [][]byte) ([]int, error) {
	b.failed = b.failed[:0]
	for off := 0; off < len(pkts); off += b.nsend {
		b.nsend = min(len(pkts)-off, len(b.sendMsgs))
		for i := range b.nsend {
			b.sendIovs[i].Base = &pkts[off+i][0]
			b.sendIovs[i].SetLen(len(pkts[off+i]))
		}
		before := len(b.failed)
		b.sent = 0
		if err := b.rc.Write(b.sendFn); err != nil {
			return b.failed, err
		}
		for i := before; i < len(b.failed); i++ {
			b.failed[i] += off
		}
	}
	return b.failed, nil
}

// send is the RawConn write callback; it reports false to wait for room
// in the socket's send buffer. A message the kernel refuses is noted and
// skipped, so the rest of the batch still goes.
func (b *batchConn) send(fd uintptr) bool {
	for b.sent < b.nsend {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.sendMsgs[b.sent])), uintptr(b.nsend-b.sent), 0, 0, 0)
		switch errno {
		case 0:
			b.sent += max(int(n), 1) // n is never 0 with messages left; never spin
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			b.failed = append(b.failed, b.sent)
			b.sent++
		}
	}
	return true
}
