package transport

import (
	"bufio"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// tcpSession is an authenticated connection: the framing both sides share.
// Frames to send go through out to the writer goroutine, which seals them
// in order; the owner's goroutine reads.
type tcpSession struct {
	t          *TCP
	nc         net.Conn
	r          *bufio.Reader
	seal, open cipher.AEAD
	recvSeq    uint64 // owned by the reader
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

// writeLoop seals and writes queued frames, gathering those already
// waiting into one write, until the session closes.
func (s *tcpSession) writeLoop() {
	var (
		batch []byte
		seq   uint64
		nonce [12]byte
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
			if seq == math.MaxUint64 {
				s.close() // never reuse a nonce
				return
			}
			binary.BigEndian.PutUint32(hdr[:], uint32(len(fb.b)+gcmTagSize))
			binary.BigEndian.PutUint64(nonce[4:], seq)
			seq++
			batch = append(batch, hdr[:]...)
			batch = s.seal.Seal(batch, nonce[:], fb.b, hdr[:])
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

// readFrame reads and opens the next frame. The payload is valid until the
// next call. When nothing arrives for idle (counting frames written too),
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
	if size < gcmTagSize || size > s.t.opts.MaxFrame+gcmTagSize {
		return nil, fmt.Errorf("%w: frame of %d bytes", errMalformed, size)
	}
	if err := s.nc.SetReadDeadline(time.Now().Add(idle)); err != nil {
		return nil, err
	}
	buf, err := readFull(s.r, s.rbuf[:0], size)
	s.rbuf = buf
	if err != nil {
		return nil, err
	}
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], s.recvSeq)
	p, err := s.open.Open(buf[:0], nonce[:], buf, hdr[:])
	if err != nil {
		return nil, errFrameAuth
	}
	s.recvSeq++
	s.touch()
	return p, nil
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
