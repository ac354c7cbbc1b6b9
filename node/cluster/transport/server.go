package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
		t.admit(nc, h)
	}
}

// admit takes an accepted connection into the pre-authentication pool,
// closing others to make room as preauth.go says, and serves it.
func (t *TCP) admit(nc net.Conn, h Handler) {
	remote := remoteHost(nc)
	now := time.Now()
	known := t.knownSource(remote, now)
	pc, reason, out := t.pre.add(nc, remote, known, now)
	for _, e := range out {
		e.c.nc.Close()
		t.reject(e.reason, e.c.nc.RemoteAddr().String(), fmt.Errorf("closed to make room, after %s, %s", now.Sub(e.c.at).Round(time.Millisecond), talkingWord(e.talking)))
	}
	if pc == nil {
		nc.Close()
		t.reject(reason, nc.RemoteAddr().String(), errors.New("no connection could make room"))
		return
	}
	if !t.goTracked(func() { t.serveConn(pc, h) }) {
		t.pre.remove(pc)
		nc.Close()
	}
}

// talkingWord says whether an evicted connection had sent anything, for
// the log.
func talkingWord(talking bool) string {
	if talking {
		return "in its handshake"
	}
	return "silent"
}

// knownSource reports whether connections from remote go first: a
// current member is known at it, or a handshake from it succeeded
// lately.
func (t *TCP) knownSource(remote netip.Addr, now time.Time) bool {
	return remote.IsValid() && (t.opts.Members.HostIsMember(remote) || t.proven.has(remote, now))
}

// reject counts a refused connection or frame and logs it at a sane rate.
func (t *TCP) reject(reason, remote string, err error) {
	t.metrics.rejected.WithLabelValues(reason).Inc()
	if ap, perr := netip.ParseAddrPort(remote); perr == nil && t.opts.Refused != nil && !floodReason(reason) {
		t.opts.Refused(ap.Addr().Unmap(), reason, err)
	}
	if n, ok := t.rejectLog.Allow(); ok {
		t.log.Warn("data channel: connection refused", zap.String("reason", reason), zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}

// floodReason reports whether reason closes connections that had proven
// nothing and tried nothing: they say nothing of whoever else uses the
// address.
func floodReason(reason string) bool {
	return reason == reasonPendingLimit || reason == reasonSourceLimit || reason == reasonSilent
}

// serveConn authenticates one admitted connection and answers its
// requests.
func (t *TCP) serveConn(pc *pendingConn, h Handler) {
	nc := pc.nc
	sc := &slotConn{Conn: nc, t: t, pc: pc, deadline: pc.at.Add(t.opts.HandshakeTimeout)}
	s, peer, err := t.handshake(sc, false, "")
	sc.finish()
	if !t.pre.remove(pc) {
		// The pool closed it to make room and counted why.
		if s != nil {
			s.close()
		}
		return
	}
	if err != nil {
		nc.Close()
		switch {
		case errors.Is(err, errSilent):
			// Closed before saying anything: a port probe or health check.
			t.log.Debug("data channel: connection closed before handshake", zap.String("remote", nc.RemoteAddr().String()))
		case errors.Is(err, os.ErrDeadlineExceeded) && !sc.talked:
			t.reject(reasonSilent, nc.RemoteAddr().String(), fmt.Errorf("nothing sent within %s", t.opts.HandshakeTimeout))
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.reject(reasonTimeout, nc.RemoteAddr().String(), fmt.Errorf("no handshake within %s", t.opts.HandshakeTimeout))
		case errors.Is(err, errNotMember):
			t.reject(reasonNotMember, nc.RemoteAddr().String(), err)
		default:
			t.reject(reasonHandshake, nc.RemoteAddr().String(), err)
		}
		return
	}
	t.proven.add(pc.src, time.Now())
	if err := t.track(s, peer); err != nil {
		s.close()
		if errors.Is(err, errSessionLimit) {
			t.reject(reasonSessionLimit, nc.RemoteAddr().String(), fmt.Errorf("%w %s (%d allowed)", err, peer, t.opts.MaxSessionsPerPeer))
		}
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
			switch {
			case errors.Is(err, errOversized):
				t.rejectFrame(reasonFrameTooLarge, nc.RemoteAddr().String(), err)
			case errors.Is(err, errMalformed):
				t.rejectFrame(reasonBadFrame, nc.RemoteAddr().String(), err)
			}
			return
		}
		if len(p) < requestHeaderSize {
			t.rejectFrame(reasonBadFrame, nc.RemoteAddr().String(), fmt.Errorf("%w: short request frame", errMalformed))
			return
		}
		// Both limits are taken before decoding, so the requests a peer
		// can make this node hold are bounded by what it has admitted,
		// not by what it has read.
		select {
		case sem <- struct{}{}:
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
		weight := int64(len(p))
		if err := t.inflight.Acquire(ctx, weight); err != nil {
			<-sem
			return
		}
		id := binary.BigEndian.Uint64(p)
		timeout := time.Duration(binary.BigEndian.Uint32(p[8:])) * time.Millisecond
		req, derr := decodeRequest(p[requestHeaderSize:])
		// The goroutine is counted by the serveConn one, which is still
		// running, so Close cannot be waiting on a zero count yet.
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() { <-sem }()
			defer t.inflight.Release(weight)
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

// rejectFrame counts a frame that closed its connection and logs it at a
// sane rate.
func (t *TCP) rejectFrame(reason, remote string, err error) {
	t.metrics.rejected.WithLabelValues(reason).Inc()
	if n, ok := t.frameLog.Allow(); ok {
		t.log.Warn("data channel: bad frame; connection closed", zap.String("remote", remote), zap.Error(err), zap.Uint64("events", n))
	}
}
