package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errOversized is a received frame over MaxFrame.
var errOversized = errors.New("frame too large")

// tcpSession is an authenticated connection: the framing both sides share.
// Frames to send go through out to the writer goroutine, which writes them
// in order; the owner's goroutine reads.
type tcpSession struct {
	t          *TCP
	nc         net.Conn // the TLS connection
	peer       string   // the peer's key for an accepted session; guarded by TCP.mu
	r          *bufio.Reader
	rbuf       []byte // owned by the reader
	out        chan *frameBuf
	done       chan struct{}
	once       sync.Once
	lastActive atomic.Int64 // unix nanoseconds of the last frame read or written
}

func (s *tcpSession) close() {
	s.once.Do(func() {
		close(s.done)
		s.nc.Close()
	})
}

func (s *tcpSession) touch() { s.lastActive.Store(time.Now().UnixNano()) }

// send queues fb for the writer, which then owns it.
func (s *tcpSession) send(ctx context.Context, fb *frameBuf) error {
	select {
	case s.out <- fb:
		return nil
	case <-s.done:
		return errSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writeLoop writes queued frames, gathering those already waiting into
// one write (so into as few TLS records as they fit), until the session
// closes.
func (s *tcpSession) writeLoop() {
	var (
		batch []byte
		hdr   [4]byte
	)
	for {
		var fb *frameBuf
		select {
		case fb = <-s.out:
		case <-s.done:
			return
		}
		batch = batch[:0]
		for fb != nil {
			binary.BigEndian.PutUint32(hdr[:], uint32(len(fb.b))) //nolint:gosec // G115: Call and answer send at most MaxFrame, which NewTCP caps at maxMaxFrame (1 GiB)
			batch = append(batch, hdr[:]...)
			batch = append(batch, fb.b...)
			putFrameBuf(fb)
			fb = nil
			if len(batch) < maxBatch {
				select {
				case fb = <-s.out:
				default:
				}
			}
		}
		if err := s.nc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
			s.close()
			return
		}
		if _, err := s.nc.Write(batch); err != nil {
			s.close()
			return
		}
		s.touch()
		if cap(batch) > maxKeptBuffer {
			batch = nil
		}
	}
}

// readFrame reads the next frame. The payload is valid until the next
// call. A frame announced larger than MaxFrame is refused before anything
// is allocated for it. When nothing arrives for idle (counting frames written too),
// it asks idleClose whether to give up; if not, it keeps waiting.
func (s *tcpSession) readFrame(idle time.Duration, idleClose func() bool) ([]byte, error) {
	if cap(s.rbuf) > maxKeptBuffer {
		s.rbuf = nil
	}
	var hdr [4]byte
	for {
		if err := s.nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
			return nil, err
		}
		n, err := io.ReadFull(s.r, hdr[:])
		if err == nil {
			break
		}
		if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, err
		}
		if time.Since(time.Unix(0, s.lastActive.Load())) < idle || !idleClose() {
			continue
		}
		return nil, fmt.Errorf("idle for %s", idle)
	}
	size := int(binary.BigEndian.Uint32(hdr[:]))
	if size > s.t.opts.MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes; the limit is %d", errOversized, size, s.t.opts.MaxFrame)
	}
	if err := s.nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
		return nil, err
	}
	buf, err := readFull(s.r, s.rbuf[:0], size)
	s.rbuf = buf
	if err != nil {
		return nil, err
	}
	s.touch()
	return buf, nil
}

// readFull reads n bytes into buf, growing it as the bytes arrive rather
// than trusting n up front, so a peer that announces a large frame and
// sends little costs little memory.
func readFull(r io.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) >= n {
		buf = buf[:n]
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	for len(buf) < n {
		step := min(n-len(buf), max(len(buf), 64<<10))
		m := len(buf)
		if cap(buf) < m+step {
			grown := make([]byte, m, m+step)
			copy(grown, buf)
			buf = grown
		}
		buf = buf[:m+step]
		if _, err := io.ReadFull(r, buf[m:]); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// frameBuf is a payload on its way to a writer; pooled, so a call costs no
// buffer allocation in the steady state.
type frameBuf struct{ b []byte }

var frameBufs = sync.Pool{New: func() any { return new(frameBuf) }}

func getFrameBuf() *frameBuf {
	fb := frameBufs.Get().(*frameBuf)
	fb.b = fb.b[:0]
	return fb
}

func putFrameBuf(fb *frameBuf) {
	if cap(fb.b) > maxKeptBuffer {
		fb.b = nil
	}
	frameBufs.Put(fb)
}
