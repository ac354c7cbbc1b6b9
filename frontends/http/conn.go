package http

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Connection states, for Shutdown to tell idle connections (closed at once)
// from busy ones (left to finish).
const (
	stateActive int32 = iota
	stateIdle
	stateClosed
)

// Buffer sizes. A typical announce is 300-600 bytes in and 100-400 out, so
// 4 KiB buffers hold several pipelined requests; the read buffer grows to
// max_request_bytes for unusual requests, and a write buffer grown by a huge
// response is dropped after use so idle connections stay small.
const (
	initialBufSize = 4096
	flushThreshold = 32 << 10
	maxRetainedBuf = 64 << 10
)

// conn serves one client connection on its own goroutine. Everything in it
// except state is owned by that goroutine.
type conn struct {
	s     *Server
	nc    net.Conn
	peer  netip.Addr // the TCP peer's IP, unmapped
	state atomic.Int32
	// limitKey is the source counted against max_connections_per_ip (the
	// address, or an IPv6 peer's /64); limited is false for trusted
	// proxies, which carry many clients' connections.
	limitKey netip.Addr
	limited  bool

	rbuf []byte // input in rbuf[r:w]
	r, w int
	wbuf []byte // responses not yet written
	body []byte // scratch for the body being built
	req  request
	caps [maxRouteParams]span
	date dateCache

	areq    bittorrent.AnnounceRequest
	aresp   bittorrent.AnnounceResponse
	sreq    bittorrent.ScrapeRequest
	sresp   bittorrent.ScrapeResponse
	pending []bittorrent.AnnounceRequest // answered, awaiting flush and AfterAnnounce
	served  bool                         // a request has been read on this connection
	linger  bool                         // the server chose to close after answering
}

// newConn prepares a connection without its buffers, which serve
// allocates: a refused connection costs no more than this struct.
func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, nc: nc}
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		// On a dual-stack socket IPv4 clients appear as ::ffff:a.b.c.d.
		c.peer = ta.AddrPort().Addr().Unmap().WithZone("")
	}
	if c.peer.IsValid() && !trusted(s.proxies, c.peer) {
		c.limitKey, c.limited = frontends.Source(c.peer), true
	}
	return c
}

// serve reads, answers and flushes requests until the client closes, a
// timeout fires, a request asks to close, or the server shuts down.
// Pipelined requests are answered in order into one buffer, written when
// no further input is buffered.
func (c *conn) serve() {
	defer c.close()
	c.rbuf = make([]byte, min(initialBufSize, c.s.cfg.MaxRequestBytes))
	c.wbuf = make([]byte, 0, initialBufSize)
	c.body = make([]byte, 0, initialBufSize)
	deadlineSet := false // whether the current request's read deadline is set
	for {
		if c.r == c.w {
			c.r, c.w = 0, 0
			if !c.flush() {
				return
			}
			c.state.Store(stateIdle)
			if c.s.closing.Load() {
				return
			}
			// Later requests may take idle_timeout to start. The first one
			// gets read_timeout, which also bounds the TLS handshake, whose
			// writes happen inside this Read.
			var err error
			if c.served {
				err = c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
			} else {
				err = c.nc.SetDeadline(time.Now().Add(c.s.cfg.ReadTimeout))
			}
			if err != nil {
				return
			}
			n, err := c.nc.Read(c.rbuf)
			if !c.state.CompareAndSwap(stateIdle, stateActive) {
				return // Shutdown closed the connection while it was idle
			}
			if n == 0 {
				c.readFailed(err)
				return
			}
			c.w = n
			deadlineSet = !c.served
		}
		n, err := parseRequest(c.rbuf[c.r:c.w], c.s.realIPHeader, &c.req)
		if errors.Is(err, errNeedMore) {
			if c.w-c.r >= c.s.cfg.MaxRequestBytes {
				c.tooLarge()
				return
			}
			// Answer earlier pipelined requests before blocking.
			if !c.flush() {
				return
			}
			if !deadlineSet {
				if c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.ReadTimeout)) != nil {
					return
				}
				deadlineSet = true
			}
			c.makeRoom()
			n, err := c.nc.Read(c.rbuf[c.w:])
			if n == 0 {
				c.readFailed(err)
				return
			}
			c.w += n
			continue
		}
		c.served, deadlineSet = true, false
		if err != nil {
			c.malformed(err)
			return
		}
		c.r += n
		if !c.handle() {
			c.linger = c.flush()
			return
		}
		if len(c.wbuf) >= flushThreshold && !c.flush() {
			return
		}
	}
}

// makeRoom ensures the read buffer has space after w, first by moving the
// unread input to the front, then by growing up to max_request_bytes (the
// caller has checked the unread input is smaller than that).
func (c *conn) makeRoom() {
	if c.w < len(c.rbuf) {
		return
	}
	if c.r > 0 {
		c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
		c.r = 0
		return
	}
	nb := make([]byte, min(2*len(c.rbuf), c.s.cfg.MaxRequestBytes))
	copy(nb, c.rbuf[:c.w])
	c.rbuf = nb
}

// handle answers the parsed request into the write buffer and reports
// whether the connection stays open.
func (c *conn) handle() bool {
	start := time.Now()
	req := &c.req
	h := head{minor: req.minor, status: status200, date: c.date.get(start)}
	isHead := string(req.method) == "HEAD"
	action, result := frontends.ActionUnknown, frontends.ResultClientError
	announced := false
	var body []byte
	rt, found := c.s.router.match(req.path, &c.caps)
	switch {
	case !isHead && string(req.method) != "GET":
		h.status, h.allow = status405, true
		body = append(c.body[:0], "405 method not allowed\n"...)
	case req.hasBody:
		h.status = status400
		body = append(c.body[:0], "400 bad request: body not allowed\n"...)
	case !found:
		h.status = status404
		body = append(c.body[:0], "404 page not found\n"...)
	case rt.kind == routeAnnounce:
		action = frontends.ActionAnnounce
		body, result, announced = c.announce(rt)
	default:
		action = frontends.ActionScrape
		var full bool
		if body, result, full = c.scrape(rt); full {
			return c.fullScrape(h, isHead, req.keepAlive && !c.s.closing.Load(), start)
		}
	}
	c.body = body[:0]
	// Checked after answering, so a request in flight when Shutdown starts
	// is told the connection is closing.
	keep := req.keepAlive && !req.hasBody && !c.s.closing.Load()
	c.answer(h, isHead, keep, body)
	if announced {
		c.pending = append(c.pending, c.areq)
	}
	c.s.rec.Record(action, result, start)
	return keep
}

// announce answers an announce; ok reports success, after which the
// request is handed to AfterAnnounce once its answer is written.
func (c *conn) announce(rt *route) (body []byte, result string, ok bool) {
	req := &c.areq
	port, err := parseAnnounce(c.req.query, req)
	var ip netip.Addr
	if err == nil {
		ip, err = c.clientIP()
	}
	if err != nil {
		return appendFailure(c.body[:0], bittorrent.FailureReason(err)), frontends.ResultClientError, false
	}
	req.Addr = netip.AddrPortFrom(ip, port)
	req.Params = c.params(rt)
	c.aresp.Reset()
	if err := c.s.t.Announce(c.s.ctx, req, &c.aresp); err != nil {
		body, result = c.trackerFailure(err)
		return body, result, false
	}
	return appendAnnounce(c.body[:0], &c.aresp, ip.Is6(), req.Compact, req.NoPeerID), frontends.ResultOK, true
}

// scrape answers a scrape, or reports full for one that names no infohash,
// which fullScrape answers.
func (c *conn) scrape(rt *route) (body []byte, result string, full bool) {
	req := &c.sreq
	var err error
	req.InfoHashes, err = parseScrape(c.req.query, req.InfoHashes[:0])
	var ip netip.Addr
	if err == nil {
		ip, err = c.clientIP()
	}
	if err != nil {
		return appendFailure(c.body[:0], bittorrent.FailureReason(err)), frontends.ResultClientError, false
	}
	req.Addr = netip.AddrPortFrom(ip, 0)
	req.Params = c.params(rt)
	if len(req.InfoHashes) == 0 {
		return nil, "", true
	}
	c.sresp.Reset()
	if err := c.s.t.Scrape(c.s.ctx, req, &c.sresp); err != nil {
		body, result = c.trackerFailure(err)
		return body, result, false
	}
	return appendScrape(c.body[:0], &c.sresp), frontends.ResultOK, false
}

// trackerFailure turns an error from the tracker into a failure response.
// Only ClientError text reaches the client; anything else is logged,
// rate-limited, and shown as a generic internal error.
func (c *conn) trackerFailure(err error) ([]byte, string) {
	var ce bittorrent.ClientError
	if errors.As(err, &ce) {
		return appendFailure(c.body[:0], string(ce)), frontends.ResultClientError
	}
	if n, ok := c.s.errLog.Allow(); ok {
		c.s.log.Warn("http: tracker failed a request", zap.Error(err), zap.Uint64("errors_since_last_log", n))
	}
	return appendFailure(c.body[:0], string(bittorrent.ErrInternal)), frontends.ResultError
}

func (c *conn) clientIP() (netip.Addr, error) {
	if len(c.s.proxies) == 0 {
		return c.peer, nil
	}
	return realIP(c.s.proxies, c.peer, c.req.realIP[:c.req.nRealIP])
}

// params copies the request's path, query, route values and Authorization
// out of the read buffer. Post hooks keep them after the buffer has been
// reused, so they must be strings of their own: one allocation holds path
// and query, and route values share it unless they needed unescaping.
func (c *conn) params(rt *route) bittorrent.Params {
	var p bittorrent.Params
	if rt.segs == nil {
		p.Path = rt.pattern // equal to the path, and already immutable
		if len(c.req.query) > 0 {
			p.Query = string(c.req.query)
		}
	} else {
		s := string(c.req.pathQuery)
		p.Path = s[:len(c.req.path)]
		if len(s) > len(c.req.path) {
			p.Query = s[len(c.req.path)+1:]
		}
		p.Route = routeParams(rt, p.Path, &c.caps)
	}
	if c.req.hasAuth {
		p.Authorization = string(c.req.auth)
	}
	return p
}

// tooLarge answers a request whose line and headers exceed
// max_request_bytes. Trackers speak bencode to clients even about HTTP
// problems, so this is a 200 with a failure reason, then a close.
func (c *conn) tooLarge() {
	start := time.Now()
	c.body = appendFailure(c.body[:0], ErrRequestTooLarge.Error())
	c.wbuf = appendHead(c.wbuf, head{minor: 1, status: status200, conn: connClose, contentLen: len(c.body), date: c.date.get(start)})
	c.wbuf = append(c.wbuf, c.body...)
	c.s.rec.Record(frontends.ActionUnknown, frontends.ResultClientError, start)
	c.linger = c.flush()
}

// malformed answers a request that could not be parsed and so cannot be
// trusted to end where it seems to: the connection is closed.
func (c *conn) malformed(err error) {
	start := time.Now()
	status, msg := status400, err.Error()
	var se *statusError
	if errors.As(err, &se) && se.status == 505 {
		status = status505
	}
	c.body = append(append(append(c.body[:0], status...), ": "...), msg...)
	c.body = append(c.body, '\n')
	c.wbuf = appendHead(c.wbuf, head{minor: 1, status: status, conn: connClose, contentLen: len(c.body), date: c.date.get(start)})
	c.wbuf = append(c.wbuf, c.body...)
	c.s.rec.Record(frontends.ActionUnknown, frontends.ResultClientError, start)
	c.linger = c.flush()
}

// flush writes the buffered responses, then hands the announces they
// answered to AfterAnnounce. A failed write does not undo those announces:
// the chain accepted them, and a client that hangs up right after
// event=stopped must still leave its swarm.
func (c *conn) flush() bool {
	ok := true
	if len(c.wbuf) > 0 {
		if err := c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout)); err != nil {
			ok = false
		} else if _, err := c.nc.Write(c.wbuf); err != nil {
			c.s.log.Debug("http: write failed", zap.Stringer("peer", c.peer), zap.Error(err))
			ok = false
		}
		if cap(c.wbuf) > maxRetainedBuf {
			c.wbuf = make([]byte, 0, initialBufSize)
		}
		c.wbuf = c.wbuf[:0]
	}
	for i := range c.pending {
		c.s.t.AfterAnnounce(&c.pending[i])
	}
	clear(c.pending) // drop the strings they hold
	c.pending = c.pending[:0]
	if cap(c.body) > maxRetainedBuf {
		c.body = make([]byte, 0, initialBufSize)
	}
	return ok
}

func (c *conn) readFailed(err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	c.s.log.Debug("http: read failed", zap.Stringer("peer", c.peer), zap.Error(err))
}

func (c *conn) close() {
	c.state.Store(stateClosed)
	if c.linger {
		c.lingerClose()
	}
	_ = c.nc.Close()
	c.s.removeConn(c)
}

// Lingering close bounds: at most this long and this many reads.
const (
	lingerTimeout = 500 * time.Millisecond
	lingerReads   = 64
)

// lingerClose half-closes the connection and discards unread input before
// the caller closes it. Closing a socket that still holds unread input
// makes the kernel reset the connection, and the reset can destroy the
// answer still on its way: a client sent "request too large" or a 400
// would see only a reset.
func (c *conn) lingerClose() {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	if c.nc.SetReadDeadline(time.Now().Add(min(lingerTimeout, c.s.cfg.ReadTimeout))) != nil {
		return
	}
	for range lingerReads {
		if _, err := c.nc.Read(c.rbuf); err != nil {
			return
		}
	}
}
