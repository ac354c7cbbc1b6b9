package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"go.uber.org/zap"
)

// accept runs the listener until Close.
func (t *TCP) accept(ln net.Listener, h Handler) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if n, ok := t.acceptLog.Allow(); ok {
				t.log.Warn("data channel: accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff), zap.Uint64("events", n))
			}
			select {
			case <-t.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case t.handshakes <- struct{}{}:
		default:
			nc.Close()
			t.warnReject(nc.RemoteAddr().String(), errors.New("too many connections in handshake"))
			continue
		}
		if !t.goTracked(func() { t.serveConn(nc, h) }) {
			<-t.handshakes
			nc.Close()
			return
		}
	}
}

// serveConn authenticates one accepted connection and answers its
// requests.
func (t *TCP) serveConn(nc net.Conn, h Handler) {
	s, err := t.handshake(nc, false)
	<-t.handshakes
	if err != nil {
		nc.Close()
		if errors.Is(err, io.EOF) {
			// Closed before saying anything: a port probe or health check.
			t.log.Debug("data channel: connection closed before handshake", zap.String("remote", nc.RemoteAddr().String()))
			return
		}
		t.warnReject(nc.RemoteAddr().String(), err)
		return
	}
	if !t.track(s) {
		s.close()
		return
	}
	defer t.untrack(s)
	if !t.goTracked(s.writeLoop) {
		s.close()
		return
	}
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	defer s.close()
	sem := make(chan struct{}, maxHandlersPerConn)
	// Idle only if no handler is running either; the caller closes first.
	idleClose := func() bool { return len(sem) == 0 }
	for {
		p, err := s.readFrame(2*t.opts.IdleTimeout, idleClose)
		if err != nil {
			if errors.Is(err, errFrameAuth) || errors.Is(err, errMalformed) {
				t.warnFrame(nc.RemoteAddr().String(), err)
			}
			return
		}
		if len(p) < requestHeaderSize {
			t.warnFrame(nc.RemoteAddr().String(), fmt.Errorf("%w: short request frame", errMalformed))
			return
		}
		id := binary.BigEndian.Uint64(p)
		timeout := time.Duration(binary.BigEndian.Uint32(p[8:])) * time.Millisecond
		req, derr := decodeRequest(p[requestHeaderSize:])
		select {
		case sem <- struct{}{}:
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
		// The goroutine is counted by the serveConn one, which is still
		// running, so Close cannot be waiting on a zero count yet.
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() { <-sem }()
			t.answer(ctx, s, h, id, timeout, req, derr)
		}()
	}
}

// answer runs the handler for one request and queues its reply.
func (t *TCP) answer(ctx context.Context, s *tcpSession, h Handler, id uint64, timeout time.Duration, req Request, derr error) {
	fb := getFrameBuf()
	fb.b = binary.BigEndian.AppendUint64(fb.b, id)
	err := derr
	if err == nil {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		var rep Reply
		if rep, err = h.Handle(ctx, req); err == nil {
			fb.b, err = appendReply(fb.b, rep)
		}
		if err == nil && len(fb.b) > t.opts.MaxFrame {
			err = fmt.Errorf("reply of %d bytes exceeds the %d-byte frame limit", len(fb.b), t.opts.MaxFrame)
		}
	}
	if err != nil {
		fb.b = appendErrorReply(fb.b[:replyHeaderSize], err.Error())
	}
	if s.send(context.Background(), fb) != nil {
		putFrameBuf(fb)
	}
}

func (t *TCP) warnReject(remote string, err error) {
	if n, ok := t.rejectLog.Allow(); ok {
		t.log.Warn("data channel: connection rejected", zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}

func (t *TCP) warnFrame(remote string, err error) {
	if n, ok := t.frameLog.Allow(); ok {
		t.log.Warn("data channel: bad frame; connection closed", zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}
