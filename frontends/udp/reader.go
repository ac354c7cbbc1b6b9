package udp

import (
	"errors"
	"net"
	"time"

	"github.com/karuta-tracker/karuta/hooks/ratelog"
	"go.uber.org/zap"
)

// packetIO moves datagrams between one socket and a reader's slots.
// Implementations allocate nothing per datagram.
type packetIO interface {
	// read fills slots[:n] (buf, n and from) with datagrams, blocking until
	// at least one arrives. An error wrapping net.ErrClosed means the
	// socket was closed.
	read(slots []slot) (n int, err error)
	// write sends the reply of each slot that has one and sets unsent on
	// those it could not send. The error is the last one met, for logging.
	write(slots []slot) error
}

// singleIO reads and writes one datagram per system call, on any platform.
// ReadFromUDPAddrPort and WriteToUDPAddrPort keep the address in a
// netip.AddrPort value, so unlike ReadFrom they allocate nothing.
type singleIO struct {
	conn *net.UDPConn
}

func (s singleIO) read(slots []slot) (int, error) {
	sl := &slots[0]
	n, from, err := s.conn.ReadFromUDPAddrPort(sl.buf[:cap(sl.buf)])
	if err != nil {
		return 0, err
	}
	sl.n, sl.from = n, from
	return 1, nil
}

func (s singleIO) write(slots []slot) error {
	var last error
	for i := range slots {
		sl := &slots[i]
		if sl.reply == nil {
			continue
		}
		if _, err := s.conn.WriteToUDPAddrPort(sl.reply, sl.from); err != nil {
			sl.unsent, last = true, err
		}
	}
	return last
}

// readErrorPause is how long a reader waits after a failed read.
const readErrorPause = 10 * time.Millisecond

// reader is the one goroutine serving one socket. It reads a batch, answers
// every datagram of it, writes the replies in one go, then records the
// outcomes and passes answered announces on, all in buffers it owns: no
// goroutine or allocation per packet.
type reader struct {
	io    packetIO
	h     *handler
	slots []slot
	log   *zap.Logger
	ioLog *ratelog.Limiter
}

// run serves until the socket is closed.
func (r *reader) run() {
	for {
		n, err := r.io.read(r.slots)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Nothing a client sends makes a read fail; this is the host
			// (out of memory, say), so log it, rarely, and carry on after
			// a pause, so that an error that persists cannot spin a CPU.
			r.ioError("read", err)
			time.Sleep(readErrorPause)
			continue
		}
		start := time.Now()
		batch := r.slots[:n]
		r.h.prefetch(batch, start)
		for i := range batch {
			r.h.handle(&batch[i], start)
		}
		if err := r.io.write(batch); err != nil && !errors.Is(err, net.ErrClosed) {
			// Usually a destination that cannot be reached, such as a
			// spoofed broadcast address; the slot is counted as an error.
			r.ioError("write", err)
		}
		// One clock read for the whole batch: every reply of it went out
		// with the one sendmmsg.
		elapsed := time.Since(start)
		for i := range batch {
			r.h.finish(&batch[i])
		}
		r.h.handOver()
		r.h.rec.RecordTally(&r.h.tally, elapsed)
	}
}

func (r *reader) ioError(op string, err error) {
	if n, ok := r.ioLog.Allow(); ok {
		r.log.Warn("udp socket error", zap.String("op", op), zap.Error(err), zap.Uint64("errors_since_last_log", n))
	}
}
