package webtorrent

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Reasons a socket is closed, used as metric labels.
const (
	closeClient     = "client"        // the client closed it, or it broke
	closeIdle       = "idle"          // nothing received for idle_timeout
	closeTooBig     = "message_size"  // a message over max_message_bytes
	closeRate       = "message_rate"  // over messages_per_second
	closeSlowReader = "slow_reader"   // its send queue filled
	closeWrite      = "write_timeout" // a write did not finish in time
	closeProtocol   = "protocol"      // a malformed frame
	closeShutdown   = "shutdown"      // the node stopped
)

var closeReasons = []string{closeClient, closeIdle, closeTooBig, closeRate, closeSlowReader, closeWrite, closeProtocol, closeShutdown}

// conn is one client socket. The read loop owns the token bucket; the
// rest is guarded by mu, since signals for the socket arrive from other
// sockets' goroutines and from other nodes.
type conn struct {
	s      *Server
	nc     net.Conn
	id     uint32
	addr   netip.AddrPort // its WebRTC address
	ip     netip.Addr     // the client's IP
	src    netip.Addr     // the source it counts as for per-IP limits
	params bittorrent.Params

	lastRead atomic.Int64 // unix nanoseconds of the last frame received
	pinged   atomic.Bool

	tokens   float64
	lastFill time.Time
	hdr      [ws.MaxHeaderSize]byte
	first    firstByte
	br       *bufio.Reader // while bytes are waiting; see startReading
	fd       int           // the descriptor the poller watches
	lastWake int64         // unix nanoseconds of the poller's last wake; see linger
	msg      []byte        // fragments of a message being read

	mu      sync.Mutex
	closed  bool
	swarms  []joined      // swarms this socket is a peer of
	offers  []outstanding // offers it made, waiting for answers
	pending []outstanding // offers relayed to it, waiting for its answer
	out     [][]byte      // frames waiting to be written
	writing bool          // a flush goroutine is running
}

// joined is a swarm a socket announced in, under a peer ID.
type joined struct {
	ih bittorrent.InfoHash
	id bittorrent.PeerID
}

// outstanding is an offer waiting for its answer. For an offer made by
// the socket, peer is the target; for one relayed to it, the offerer.
type outstanding struct {
	ih      bittorrent.InfoHash
	offerID string
	peer    netip.AddrPort
	peerID  bittorrent.PeerID
	expires int64 // unix nanoseconds
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readLoop reads messages until the socket closes, when the socket has a
// goroutine of its own (wss://, or a platform without epoll; see
// poll_linux.go for the usual way, where an idle socket has none).
func (c *conn) readLoop() {
	defer c.s.wg.Done()
	c.read(false, 0)
}

// linger is how long a busy socket (one woken again within busyWithin of
// its last wake) keeps its goroutine waiting for more after its last message,
// before handing itself back to the poller: it then costs the runtime's
// own cheap wake-ups rather than a round through the poller per message (a
// quarter more CPU per relayed message). A socket woken for the first time
// in a while, like the many that announce once and then idle, goes back
// at once, so a burst of them never holds a goroutine each.
const (
	linger     = 2 * time.Second
	busyWithin = 10 * time.Second
)

// wake reads and handles messages while they keep coming, then hands the
// socket back to the poller. The poller starts it when the socket has
// bytes waiting, never twice at once for one socket (one-shot
// registration), so it reads alone.
func (c *conn) wake() {
	defer c.s.wg.Done()
	// The poller's hand-off goes through the kernel, which the Go memory
	// model does not see: taking the lock that was held when the socket
	// was armed orders this goroutine after whatever read the socket last.
	c.mu.Lock()
	//nolint:staticcheck // SA2001: an empty critical section, for ordering
	c.mu.Unlock()
	now := time.Now().UnixNano()
	wait := time.Duration(0)
	if now-c.lastWake < int64(busyWithin) {
		wait = linger
	}
	c.lastWake = now
	if !c.read(true, wait) {
		return
	}
	// Re-arm under the lock that close takes first, so the descriptor is
	// still this socket's: once closed, its number may be another's.
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if err := c.s.poll.rearm(c); err != nil {
		c.mu.Unlock()
		c.close(closeClient)
		c.mu.Lock()
	}
}

// read reads and handles messages until the socket closes (false) or,
// when polled, until it has been quiet for wait (true). A polled socket
// has bytes waiting when read is called.
//
// A whole message is handled on a goroutine of its own while this one
// waits: parsing and running the hook chain need a deep stack, and a
// goroutine's stack, once grown, stays grown until a garbage collection
// finds it mostly unused. Handled here, a waiting socket would keep the
// stack its busiest message needed.
func (c *conn) read(polled bool, wait time.Duration) bool {
	done := make(chan struct{})
	for first := true; ; first = false {
		if c.br == nil {
			// Wait for the next byte holding no buffer.
			if polled && !first {
				if wait == 0 {
					return true
				}
				_ = c.nc.SetReadDeadline(time.Now().Add(wait))
			}
			_, err := c.nc.Read(c.hdr[:1])
			if polled && !first {
				// The rest of a message may take longer than wait.
				_ = c.nc.SetReadDeadline(time.Time{})
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return true
				}
			}
			if err != nil {
				c.close(closeClient)
				return false
			}
			c.startReading(c.hdr[0])
		}
		msg, reason := c.readFrame()
		if reason != "" {
			c.stopReading()
			c.close(reason)
			return false
		}
		if msg != nil {
			go func() {
				c.handle(msg)
				done <- struct{}{}
			}()
			<-done
		}
	}
}

// startReading takes a pooled read buffer for a socket that has bytes
// waiting, the first of which, b, has been read already.
func (c *conn) startReading(b byte) {
	c.first = firstByte{nc: c.nc, b: b, has: true}
	c.br = readers.Get().(*bufio.Reader)
	c.br.Reset(&c.first)
}

// stopReading gives the read buffer back.
func (c *conn) stopReading() {
	if c.br != nil {
		c.br.Reset(nil)
		readers.Put(c.br)
		c.br = nil
	}
}

// readFrame reads one frame with the ws package (header, unmasking) and
// returns a whole message once its last fragment is in; fragments are
// joined up to max_message_bytes. Control frames are answered here. It
// gives the read buffer back once nothing is left in it. A non-empty
// reason says why the socket must close. Only one goroutine reads a
// socket at a time.
func (c *conn) readFrame() (msg []byte, reason string) {
	br := c.br
	h, err := ws.ReadHeaderBuffer(br, c.hdr[:0])
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrUnexpectedEOF) {
			var ne net.Error
			if !errors.As(err, &ne) {
				return nil, closeProtocol
			}
		}
		return nil, closeClient
	}
	if !h.Masked || h.Rsv != 0 || (h.OpCode.IsControl() && (h.Length > 125 || !h.Fin)) {
		return nil, closeProtocol
	}
	if h.Length+int64(len(c.msg)) > int64(c.s.cfg.MaxMessageBytes) {
		c.s.m.refused.WithLabelValues("message_size").Inc()
		c.sendClose(ws.StatusMessageTooBig)
		return nil, closeTooBig
	}
	start := len(c.msg)
	var body []byte
	if h.OpCode.IsControl() {
		start = 0
		body = make([]byte, h.Length)
	} else {
		c.msg = grow(c.msg, int(h.Length))
		body = c.msg[start : start+int(h.Length)]
	}
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, closeClient
	}
	ws.Cipher(body, h.Mask, 0)
	c.lastRead.Store(time.Now().UnixNano())
	c.pinged.Store(false)
	if br.Buffered() == 0 {
		c.stopReading()
	}
	switch h.OpCode {
	case ws.OpPing:
		c.enqueueFrame(ws.OpPong, body)
		return nil, ""
	case ws.OpPong:
		return nil, ""
	case ws.OpClose:
		c.sendClose(ws.StatusNormalClosure)
		return nil, closeClient
	case ws.OpText, ws.OpBinary:
		if start != 0 {
			return nil, closeProtocol
		}
	case ws.OpContinuation:
		if start == 0 {
			return nil, closeProtocol
		}
	default:
		return nil, closeProtocol
	}
	if !h.Fin {
		return nil, ""
	}
	if !c.take(time.Now()) {
		c.s.m.refused.WithLabelValues("message_rate").Inc()
		c.sendClose(ws.StatusPolicyViolation)
		return nil, closeRate
	}
	msg, c.msg = c.msg, nil // an idle socket keeps no buffer
	return msg, ""
}

// readers are the read buffers of sockets with bytes waiting; an idle
// socket holds none.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// firstByte reads the byte an idle socket woke up with, then the socket.
type firstByte struct {
	nc  net.Conn
	b   byte
	has bool
}

func (f *firstByte) Read(p []byte) (int, error) {
	if f.has && len(p) > 0 {
		p[0], f.has = f.b, false
		return 1, nil
	}
	return f.nc.Read(p)
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, len(b)+n+n/4)
	copy(nb, b)
	return nb
}

// take spends one token of the socket's message budget.
func (c *conn) take(now time.Time) bool {
	cfg := &c.s.cfg
	c.tokens = min(float64(cfg.MessageBurst), c.tokens+now.Sub(c.lastFill).Seconds()*cfg.MessagesPerSecond)
	c.lastFill = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// handle answers one message.
func (c *conn) handle(msg []byte) {
	var r request
	if err := decodeRequest(msg, &r); err != nil {
		c.s.rec.Record(frontends.ActionUnknown, frontends.ResultClientError, time.Now())
		c.enqueue(failure("announce", nil, string(errBadJSON)))
		return
	}
	switch r.Action {
	case "announce":
		c.announce(&r)
	case "scrape":
		c.scrape(&r)
	default:
		c.s.rec.Record(frontends.ActionUnknown, frontends.ResultClientError, time.Now())
		c.enqueue(failure(r.Action, nil, string(errBadAction)))
	}
}

// announce answers an announce: an answer to an offer is relayed, anything
// else runs the hook chain and relays the announce's offers to the peers
// it was given.
func (c *conn) announce(r *request) {
	start := time.Now()
	ih, err := parseInfoHash(r.InfoHash)
	if err != nil {
		c.fail(start, frontends.ActionAnnounce, nil, err)
		return
	}
	id, err := parsePeerID(r.PeerID)
	if err != nil {
		c.fail(start, frontends.ActionAnnounce, &ih, err)
		return
	}
	if r.Answer != nil {
		c.answer(start, r, ih, id)
		return
	}
	ev, err := parseEvent(r.Event)
	if err != nil {
		c.fail(start, frontends.ActionAnnounce, &ih, err)
		return
	}
	offers := r.Offers
	for _, o := range offers {
		if o.OfferID == "" || len(o.OfferID) > bittorrent.MaxOfferIDLen || !isObject(o.Offer) {
			c.fail(start, frontends.ActionAnnounce, &ih, errBadOffer)
			return
		}
	}
	if len(offers) > c.s.cfg.MaxOffers {
		c.s.m.signals.WithLabelValues("offer", "over_max_offers").Add(float64(len(offers) - c.s.cfg.MaxOffers))
		offers = offers[:c.s.cfg.MaxOffers]
	}
	if ev == bittorrent.EventStopped {
		offers = nil
	}
	if !c.join(ih, id, ev) {
		c.fail(start, frontends.ActionAnnounce, &ih, errTooManyIHs)
		return
	}
	req := bittorrent.AnnounceRequest{
		InfoHash: ih, PeerID: id, Addr: c.addr, Source: c.ip, Event: ev,
		Uploaded: count(r.Uploaded, 0), Downloaded: count(r.Downloaded, 0), Left: count(r.Left, 1),
		NumWant: uint32(len(offers)), NumWantSet: true, //nolint:gosec // G115: at most max_offers
		Params: c.params,
	}
	var resp bittorrent.AnnounceResponse
	if err := c.s.t.Announce(c.s.ctx, &req, &resp); err != nil {
		c.leave(ih) // a refused announce joins nothing
		c.fail(start, frontends.ActionAnnounce, &ih, err)
		return
	}
	c.enqueue(announceReply(ih, &resp))
	c.s.rec.Record(frontends.ActionAnnounce, frontends.ResultOK, start)
	c.s.t.AfterAnnounce(&req)
	if ev == bittorrent.EventStopped {
		c.leave(ih)
	}
	for i, p := range resp.Peers {
		if i >= len(offers) {
			break
		}
		if !bittorrent.IsWebRTC(p.Addr) || p.Addr == c.addr {
			continue
		}
		sig := bittorrent.Signal{
			Kind: bittorrent.SignalOffer, InfoHash: ih, From: c.addr, FromID: id,
			To: p.Addr, ToID: p.ID, OfferID: offers[i].OfferID, SDP: offers[i].Offer,
		}
		if !c.expect(&sig, start) {
			c.s.m.signals.WithLabelValues("offer", "over_outstanding").Inc()
			continue
		}
		c.s.route(&sig)
	}
}

// answer relays the answer to an offer this socket was sent, while that
// offer is outstanding.
func (c *conn) answer(start time.Time, r *request, ih bittorrent.InfoHash, id bittorrent.PeerID) {
	to, err := parsePeerID(r.ToPeerID)
	if err != nil || r.OfferID == nil || !isObject(r.Answer) {
		c.fail(start, frontends.ActionAnnounce, &ih, errBadAnswer)
		return
	}
	now := start.UnixNano()
	c.mu.Lock()
	var from netip.AddrPort
	for i, p := range c.pending {
		if p.ih == ih && p.offerID == *r.OfferID && p.peerID == to && p.expires > now {
			from = p.peer
			c.pending = deleteAt(c.pending, i)
			break
		}
	}
	c.mu.Unlock()
	if !from.IsValid() {
		c.s.m.signals.WithLabelValues("answer", "no_offer").Inc()
		c.s.rec.Record(frontends.ActionAnnounce, frontends.ResultClientError, start)
		return
	}
	// An answer to an offer the socket was sent is work the tracker asked
	// for, bounded by the offers it relays: it does not spend the socket's
	// message budget.
	c.tokens = min(float64(c.s.cfg.MessageBurst), c.tokens+1)
	c.s.rec.Record(frontends.ActionAnnounce, frontends.ResultOK, start)
	sig := bittorrent.Signal{
		Kind: bittorrent.SignalAnswer, InfoHash: ih, From: c.addr, FromID: id,
		To: from, ToID: to, OfferID: *r.OfferID, SDP: r.Answer,
	}
	c.s.route(&sig)
}

func deleteAt(s []outstanding, i int) []outstanding {
	s[i] = s[len(s)-1]
	s[len(s)-1] = outstanding{}
	return s[:len(s)-1]
}

// prune drops expired offers from s.
func prune(s []outstanding, now int64) ([]outstanding, int) {
	n := 0
	for i := 0; i < len(s); {
		if s[i].expires <= now {
			s = deleteAt(s, i)
			n++
			continue
		}
		i++
	}
	return s, n
}

// expect records an offer the socket is about to send, unless it has
// max_outstanding_offers waiting already.
func (c *conn) expect(sig *bittorrent.Signal, now time.Time) bool {
	t := now.UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	var expired int
	c.offers, expired = prune(c.offers, t)
	c.s.m.expired.Add(float64(expired))
	if len(c.offers) >= c.s.cfg.MaxOutstandingOffers {
		return false
	}
	c.offers = append(c.offers, outstanding{
		ih: sig.InfoHash, offerID: sig.OfferID, peer: sig.To, peerID: sig.ToID,
		expires: t + int64(c.s.cfg.OfferTimeout),
	})
	return true
}

// join records that the socket is a peer of ih, unless it is in too many
// swarms already. A stopped event for a swarm it is not in joins nothing.
func (c *conn) join(ih bittorrent.InfoHash, id bittorrent.PeerID, ev bittorrent.Event) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.swarms {
		if c.swarms[i].ih == ih {
			c.swarms[i].id = id
			return true
		}
	}
	if ev == bittorrent.EventStopped {
		return true
	}
	if len(c.swarms) >= c.s.cfg.MaxSwarmsPerConnection {
		c.s.m.refused.WithLabelValues("max_swarms").Inc()
		return false
	}
	c.swarms = append(c.swarms, joined{ih: ih, id: id})
	return true
}

func (c *conn) leave(ih bittorrent.InfoHash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.swarms {
		if c.swarms[i].ih == ih {
			c.swarms[i] = c.swarms[len(c.swarms)-1]
			c.swarms = c.swarms[:len(c.swarms)-1]
			return
		}
	}
}

// peerIDIn is the socket's peer ID in ih; ok is false if it is not a peer
// of ih. Call with mu held.
func (c *conn) peerIDIn(ih bittorrent.InfoHash) (bittorrent.PeerID, bool) {
	for i := range c.swarms {
		if c.swarms[i].ih == ih {
			return c.swarms[i].id, true
		}
	}
	return bittorrent.PeerID{}, false
}

// receive delivers a signal addressed to this socket. An offer is
// delivered if the socket is still the peer it was chosen as and has room
// for another pending offer; an answer only while the offer it answers is
// outstanding. It reports the drop reason, or "" when delivered.
func (c *conn) receive(sig *bittorrent.Signal, now int64) string {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "no_socket"
	}
	if id, ok := c.peerIDIn(sig.InfoHash); !ok || id != sig.ToID {
		c.mu.Unlock()
		return "not_in_swarm"
	}
	var expired int
	if sig.Kind == bittorrent.SignalOffer {
		c.pending, expired = prune(c.pending, now)
		if len(c.pending) >= c.s.cfg.MaxOutstandingOffers {
			c.mu.Unlock()
			c.s.m.expired.Add(float64(expired))
			return "over_outstanding"
		}
		c.pending = append(c.pending, outstanding{
			ih: sig.InfoHash, offerID: sig.OfferID, peer: sig.From, peerID: sig.FromID,
			expires: now + int64(c.s.cfg.OfferTimeout),
		})
	} else {
		found := false
		for i, o := range c.offers {
			if o.ih == sig.InfoHash && o.offerID == sig.OfferID && o.peer == sig.From && o.expires > now {
				c.offers = deleteAt(c.offers, i)
				found = true
				break
			}
		}
		if !found {
			c.mu.Unlock()
			return "no_offer"
		}
	}
	c.mu.Unlock()
	c.s.m.expired.Add(float64(expired))
	c.enqueue(signalMessage(sig))
	return ""
}

// fail answers a request with a failure reason and records it.
func (c *conn) fail(start time.Time, action string, ih *bittorrent.InfoHash, err error) {
	var ce bittorrent.ClientError
	result := frontends.ResultClientError
	if !errors.As(err, &ce) {
		result = frontends.ResultError
		if n, ok := c.s.warn.Allow(); ok {
			c.s.log.Warn("WebTorrent request failed", zap.Error(err), zap.Uint64("since_last_log", n))
		}
	}
	c.s.rec.Record(action, result, start)
	c.enqueue(failure(action, ih, bittorrent.FailureReason(err)))
}

// enqueue queues a text message for the socket.
func (c *conn) enqueue(msg []byte) { c.enqueueFrame(ws.OpText, msg) }

// enqueueFrame queues a frame and starts a flush if none is running. A
// socket whose queue is full is closed: it is not reading what it is sent.
func (c *conn) enqueueFrame(op ws.OpCode, payload []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if len(c.out) >= c.s.cfg.SendQueue {
		c.mu.Unlock()
		c.s.m.refused.WithLabelValues("slow_reader").Inc()
		c.close(closeSlowReader)
		return
	}
	var frame bytes.Buffer
	frame.Grow(ws.MaxHeaderSize + len(payload))
	_ = ws.WriteHeader(&frame, ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))})
	frame.Write(payload)
	c.out = append(c.out, frame.Bytes())
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		c.s.wg.Add(1)
		go c.flush()
	}
}

// flush writes queued frames, several per write, until the queue is empty.
// It exists only while there is something to write, so an idle socket
// costs no goroutine for writing.
func (c *conn) flush() {
	defer c.s.wg.Done()
	buf := bufPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 {
			buf.Reset()
			bufPool.Put(buf)
		}
	}()
	for {
		c.mu.Lock()
		if len(c.out) == 0 || c.closed {
			c.writing = false
			c.mu.Unlock()
			return
		}
		buf.Reset()
		for _, f := range c.out {
			buf.Write(f)
		}
		clear(c.out)
		c.out = c.out[:0]
		c.mu.Unlock()
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
		if _, err := c.nc.Write(buf.Bytes()); err != nil {
			var ne net.Error
			reason := closeClient
			if errors.As(err, &ne) && ne.Timeout() {
				reason = closeWrite
				c.s.m.refused.WithLabelValues("write_timeout").Inc()
			}
			c.mu.Lock()
			c.writing = false
			c.mu.Unlock()
			c.close(reason)
			return
		}
	}
}

// sendClose writes a close frame directly, best effort, as the socket is
// about to be closed.
func (c *conn) sendClose(code ws.StatusCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.writing {
		return
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_ = ws.WriteFrame(c.nc, ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
}

// tick is the sweeper's visit: ping a socket idle for half of
// idle_timeout, close one idle for all of it.
func (c *conn) tick(now time.Time) {
	idle := time.Duration(now.UnixNano() - c.lastRead.Load())
	switch {
	case idle >= c.s.cfg.IdleTimeout:
		c.s.m.refused.WithLabelValues("idle").Inc()
		c.close(closeIdle)
	case idle >= c.s.cfg.IdleTimeout/2 && !c.pinged.Swap(true):
		c.enqueueFrame(ws.OpPing, nil)
	}
}

// close closes the socket once, and removes its peers from their swarms
// as a stopped announce would.
func (c *conn) close(reason string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	swarms := c.swarms
	c.swarms, c.offers, c.pending, c.out = nil, nil, nil, nil
	c.mu.Unlock()
	_ = c.nc.Close()
	c.s.unregister(c)
	c.s.release(c.src)
	c.s.m.closed.WithLabelValues(reason).Inc()
	for _, j := range swarms {
		req := bittorrent.AnnounceRequest{InfoHash: j.ih, PeerID: j.id, Addr: c.addr, Source: c.ip, Event: bittorrent.EventStopped}
		c.s.t.AfterAnnounce(&req)
	}
}

// route sends a signal to its target's socket, here or on another node.
func (s *Server) route(sig *bittorrent.Signal) {
	node, _, ok := bittorrent.WebRTCParts(sig.To)
	switch {
	case !ok:
		s.m.signals.WithLabelValues(kindName(sig.Kind), "bad_address").Inc()
	case node == s.self:
		s.deliver(sig)
	default:
		s.m.relayed.WithLabelValues(kindName(sig.Kind)).Inc()
		s.relay.Send(node, sig)
	}
}

// deliver hands a signal to a socket of this node.
func (s *Server) deliver(sig *bittorrent.Signal) {
	kind := kindName(sig.Kind)
	node, id, ok := bittorrent.WebRTCParts(sig.To)
	if !ok || node != s.self {
		s.m.signals.WithLabelValues(kind, "not_here").Inc()
		return
	}
	c := s.lookup(id)
	if c == nil {
		s.m.signals.WithLabelValues(kind, "no_socket").Inc()
		return
	}
	if reason := c.receive(sig, time.Now().UnixNano()); reason != "" {
		s.m.signals.WithLabelValues(kind, reason).Inc()
		return
	}
	s.m.signals.WithLabelValues(kind, "delivered").Inc()
}

func kindName(k bittorrent.SignalKind) string {
	if k == bittorrent.SignalOffer {
		return "offer"
	}
	return "answer"
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}
