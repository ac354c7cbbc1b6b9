//go:build linux

package udp

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newPacketIO returns the socket I/O for conn and how many slots it fills
// per read: recvmmsg/sendmmsg batches, or one datagram per call when
// batchSize is 1.
func newPacketIO(conn *net.UDPConn, batchSize int) (packetIO, int, error) {
	if batchSize == 1 {
		return singleIO{conn: conn}, 1, nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, 0, fmt.Errorf("raw socket: %w", err)
	}
	return newBatchIO(rc, batchSize), batchSize, nil
}

// batchIO reads and writes up to a batch of datagrams per system call with
// recvmmsg and sendmmsg, called directly through the socket's RawConn so
// that Go's poller still parks the goroutine while the socket is idle.
//
// Why not golang.org/x/net's ipv4.PacketConn.ReadBatch: it allocates a
// *net.UDPAddr for every message and fresh system call headers on every
// call, which alone would break the frontend's zero-allocation budget. Here
// the message headers, iovecs and sockaddr buffers are built once and
// point at the slots' buffers for good; a source address is decoded from
// its raw sockaddr straight into a netip.AddrPort value, and a reply is sent
// to the very sockaddr its request came from. The RawConn callbacks are
// method values made once in newBatchIO: a closure made per call would
// escape to the heap.
//
// The pointers inside the headers refer to Go memory that this value keeps
// reachable and that the garbage collector never moves.
//
// recvmmsg and sendmmsg are raw system calls, made without telling the
// scheduler. The socket is non-blocking (Go's poller waits for it), so
// neither call ever sleeps; but sending a batch over loopback or a fast
// NIC takes tens of microseconds, and a goroutine the scheduler knows to
// be in a system call that long has its P handed to another thread by
// sysmon. On a busy tracker with few cores that handoff happened on most
// batches: a thread woken, a context switch, a poll of the network and
// another switch back, about as costly as answering a request (issue 21:
// 77,000 context switches in 5 s against 1,300 with raw calls). The price
// is that a stop-the-world pause waits for a call in progress, at most a
// batch's worth of sends.
type batchIO struct {
	rc syscall.RawConn

	recvMsgs  []unix.Mmsghdr
	recvIovs  []unix.Iovec
	names     []unix.RawSockaddrInet6 // large enough for either family
	sendMsgs  []unix.Mmsghdr
	sendIovs  []unix.Iovec
	sendSlots []*slot // the slot of each send message

	// In and out of the callbacks.
	nrecv, nsend, sent int
	errno              syscall.Errno
	recvFn, sendFn     func(fd uintptr) bool
}

func newBatchIO(rc syscall.RawConn, size int) *batchIO {
	b := &batchIO{
		rc:        rc,
		recvMsgs:  make([]unix.Mmsghdr, size),
		recvIovs:  make([]unix.Iovec, size),
		names:     make([]unix.RawSockaddrInet6, size),
		sendMsgs:  make([]unix.Mmsghdr, size),
		sendIovs:  make([]unix.Iovec, size),
		sendSlots: make([]*slot, 0, size),
	}
	for i := range b.recvMsgs {
		h := &b.recvMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Iov = &b.recvIovs[i]
		h.SetIovlen(1)
		b.sendMsgs[i].Hdr.Iov = &b.sendIovs[i]
		b.sendMsgs[i].Hdr.SetIovlen(1)
	}
	b.recvFn = b.recv
	b.sendFn = b.send
	return b
}

func (b *batchIO) read(slots []slot) (int, error) {
	n := min(len(slots), len(b.recvMsgs))
	for i := range n {
		// The slots' buffers never change, but setting them here keeps the
		// headers right for whichever slots are passed.
		b.recvIovs[i].Base = &slots[i].buf[0]
		b.recvIovs[i].SetLen(cap(slots[i].buf))
	}
	b.nrecv = n
	if err := b.rc.Read(b.recvFn); err != nil {
		return 0, err
	}
	if b.errno != 0 {
		return 0, fmt.Errorf("recvmmsg: %w", b.errno)
	}
	for i := range b.nrecv {
		slots[i].n = int(b.recvMsgs[i].Len)
		slots[i].from = sockaddrAddrPort(&b.names[i], b.recvMsgs[i].Hdr.Namelen)
	}
	return b.nrecv, nil
}

// recv is the RawConn read callback; it reports false to wait for the
// socket to become readable.
func (b *batchIO) recv(fd uintptr) bool {
	for i := range b.nrecv {
		b.recvMsgs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.recvMsgs[i].Hdr.Flags = 0
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd,
			uintptr(unsafe.Pointer(&b.recvMsgs[0])), uintptr(b.nrecv), 0, 0, 0)
		switch errno {
		case 0:
			b.nrecv, b.errno = int(n), 0
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			b.nrecv, b.errno = 0, errno
			return true
		}
	}
}

// write sends the replies of slots, which must be the slots of the last
// read, in the same order: each reply goes to the sockaddr its request
// arrived from.
func (b *batchIO) write(slots []slot) error {
	b.sendSlots = b.sendSlots[:0]
	for i := range slots {
		s := &slots[i]
		if s.reply == nil {
			continue
		}
		j := len(b.sendSlots)
		b.sendIovs[j].Base = &s.reply[0]
		b.sendIovs[j].SetLen(len(s.reply))
		// Reply to the sockaddr the request came from, as received.
		h := &b.sendMsgs[j].Hdr
		h.Name = b.recvMsgs[i].Hdr.Name
		h.Namelen = b.recvMsgs[i].Hdr.Namelen
		b.sendSlots = append(b.sendSlots, s)
	}
	if len(b.sendSlots) == 0 {
		return nil
	}
	b.nsend, b.sent, b.errno = len(b.sendSlots), 0, 0
	if err := b.rc.Write(b.sendFn); err != nil {
		for _, s := range b.sendSlots[b.sent:] {
			s.unsent = true
		}
		return err
	}
	if b.errno != 0 {
		return fmt.Errorf("sendmmsg: %w", b.errno)
	}
	return nil
}

// send is the RawConn write callback; it reports false to wait for room in
// the socket's send buffer. A message the kernel refuses (an unreachable
// or invalid destination) is marked unsent and skipped, so one bad address
// never holds up the rest of the batch.
func (b *batchIO) send(fd uintptr) bool {
	for b.sent < b.nsend {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd,
			uintptr(unsafe.Pointer(&b.sendMsgs[b.sent])), uintptr(b.nsend-b.sent), 0, 0, 0)
		switch errno {
		case 0:
			if n == 0 { // cannot happen with messages left, but never spin
				n = 1
				b.sendSlots[b.sent].unsent = true
			}
			b.sent += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			b.errno = errno
			b.sendSlots[b.sent].unsent = true
			b.sent++
		}
	}
	return true
}

// sockaddrAddrPort decodes a raw IPv4 or IPv6 sockaddr of length n. The
// zone of a link-local address is dropped: it means nothing to other peers,
// and the reply goes to the raw sockaddr, scope included.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6, n uint32) netip.AddrPort {
	switch {
	case sa.Family == unix.AF_INET6 && n >= unix.SizeofSockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), networkPort(sa.Port))
	case sa.Family == unix.AF_INET && n >= unix.SizeofSockaddrInet4:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), networkPort(sa4.Port))
	}
	return netip.AddrPort{}
}

// networkPort reads a port stored in network byte order.
func networkPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
