package udp

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// slot is one datagram of a batch and everything needed to answer it. A
// reader owns batch_size slots and reuses them, so answering allocates
// nothing. The announce request lives here rather than in the handler
// because it is handed to AfterAnnounce only once the whole batch's replies
// are sent.
type slot struct {
	buf  []byte // receive buffer: the datagram is buf[:n]; cap is maxPacket+1
	n    int
	from netip.AddrPort
	out  []byte // reply buffer of maxReply bytes

	// Set by handle.
	reply     []byte // to send to from; nil for none
	action    string // metric label; empty when dropped
	result    string
	drop      string // drop reason, if dropped
	announced bool   // req was answered and goes to AfterAnnounce once sent
	req       bittorrent.AnnounceRequest

	// Set by prefetch: the connection ID was verified at receipt time, so
	// handle need not verify it again.
	verified bool

	// Set by packetIO.write.
	unsent bool // the reply could not be sent
}

func newSlot() slot {
	return slot{
		buf: make([]byte, maxPacket+1),
		out: make([]byte, maxReply),
	}
}

// handler parses requests, asks the tracker and writes replies. Each reader
// has its own, with its own scratch space. Not safe for concurrent use.
type handler struct {
	t       hooks.Tracker
	rec     *frontends.Recorder
	keys    *atomic.Pointer[keyring]
	ctx     context.Context
	log     *zap.Logger
	failLog *ratelog.Limiter

	// limit, nil for none, bounds each source's connects; limitLog, shared
	// by a server's readers, keeps the warning about it to one a period.
	limit    *connectLimiter
	limitLog *ratelog.Limiter

	tally frontends.Tally // the outcomes of the batch in hand
	// bt is t when it takes announces a batch at a time, and after the
	// batch's answered announces for it.
	bt    hooks.BatchTracker
	after []*bittorrent.AnnounceRequest
	pf    hooks.Prefetcher      // nil unless something behind t prefetches
	ihs   []bittorrent.InfoHash // prefetch scratch
	mac   idMAC
	url   urlData
	resp  bittorrent.AnnounceResponse
	sreq  bittorrent.ScrapeRequest
	sresp bittorrent.ScrapeResponse
}

// newHandler returns a handler answering from t with the keys in force in
// keys. failLog limits warnings about failed requests; share it between the
// readers of a server so that they log one line per period between them.
func newHandler(ctx context.Context, t hooks.Tracker, rec *frontends.Recorder, keys *atomic.Pointer[keyring], log *zap.Logger, failLog *ratelog.Limiter) *handler {
	bt, _ := t.(hooks.BatchTracker)
	return &handler{
		bt:      bt,
		pf:      hooks.PrefetcherOf(t),
		ihs:     make([]bittorrent.InfoHash, 0, maxPrefetch),
		t:       t,
		rec:     rec,
		keys:    keys,
		ctx:     ctx,
		log:     log,
		failLog: failLog,
		url:     urlData{buf: make([]byte, 0, maxPacket)},
		sreq:    bittorrent.ScrapeRequest{InfoHashes: make([]bittorrent.InfoHash, 0, maxHashes)},
	}
}

// maxPrefetch bounds the infohashes one batch prefetches; past it the rest
// are read on demand, as without prefetching, each scrape prefetching its
// own. It holds a default batch (32 datagrams) of full scrapes, so the
// reads of such a batch share one fetch deadline (about 65 KB per reader).
const maxPrefetch = 32 * maxHashes

// prefetch hands the tracker, when it prefetches, the infohashes of the
// batch's announces and scrapes, before any is answered: a cluster node
// then asks the owners for all the swarms it lacks at once rather than one
// after another. Only requests whose connection ID verifies count, so
// forged datagrams cannot make a node fetch; the check is recorded for
// handle. A single datagram has nothing to overlap with and is skipped.
func (h *handler) prefetch(batch []slot, now time.Time) {
	if h.pf == nil || len(batch) < 2 {
		return
	}
	h.mac.use(h.keys.Load())
	h.ihs = h.ihs[:0]
	for i := range batch {
		s := &batch[i]
		pkt := s.buf[:s.n]
		if len(pkt) < headerLen || len(pkt) > maxPacket || !s.from.IsValid() {
			continue
		}
		var first, last int // the infohashes' byte range
		switch be.Uint32(pkt[8:]) {
		case actionAnnounce:
			if len(pkt) < announceLen {
				continue
			}
			first, last = headerLen, headerLen+infoHashLen
		case actionScrape:
			first, last = headerLen, headerLen+(len(pkt)-headerLen)/infoHashLen*infoHashLen
		default:
			continue
		}
		if !h.mac.verify(be.Uint64(pkt), s.from.Addr(), now) {
			continue
		}
		s.verified = true
		for o := first; o < last && len(h.ihs) < cap(h.ihs); o += infoHashLen {
			h.ihs = append(h.ihs, bittorrent.InfoHash(pkt[o:o+infoHashLen]))
		}
	}
	if len(h.ihs) > 0 {
		h.pf.Prefetch(h.ihs)
	}
}

// handle answers the datagram in s, received at now: it sets s.reply (nil
// for no reply) and the labels finish records. It never fails: whatever the
// bytes, the outcome is a reply, an error reply or a counted drop.
func (h *handler) handle(s *slot, now time.Time) {
	s.reply, s.action, s.result, s.drop, s.announced, s.unsent = nil, "", "", "", false, false
	verified := s.verified
	s.verified = false
	pkt := s.buf[:s.n]
	switch {
	case len(pkt) < headerLen:
		s.drop = frontends.DropTooShort
		return
	case len(pkt) > maxPacket:
		s.drop = frontends.DropTooLong
		return
	case !s.from.IsValid():
		return // no address to answer; cannot happen with IPv4 or IPv6 sockets
	}
	h.mac.use(h.keys.Load())
	connID, action, txID := be.Uint64(pkt), be.Uint32(pkt[8:]), be.Uint32(pkt[12:])
	switch action {
	case actionConnect:
		if !h.limit.allow(s.from.Addr(), now) {
			// Dropped, not answered with an error: the source may be
			// spoofed, and an answer would hand a victim a reply per
			// forged packet; a real client retransmits after 15 s
			// (BEP 15), by when its bucket has refilled.
			s.drop = frontends.DropConnectRate
			if n, ok := h.limitLog.Allow(); ok {
				h.log.Warn("udp: connects over frontends.udp.connect_rate dropped",
					zap.Stringer("source", s.from.Addr()), zap.Uint64("dropped_since_last_log", n))
			}
			return
		}
		s.action = frontends.ActionConnect
		if connID != protocolID {
			h.fail(s, txID, errBadProtocolID)
			return
		}
		s.reply = writeConnect(s.out, txID, h.mac.mint(s.from.Addr(), now))
		s.result = frontends.ResultOK
	case actionAnnounce:
		s.action = frontends.ActionAnnounce
		if !verified && !h.mac.verify(connID, s.from.Addr(), now) {
			h.fail(s, txID, errBadConnectionID)
			return
		}
		h.announce(s, pkt, txID)
	case actionScrape:
		s.action = frontends.ActionScrape
		if !verified && !h.mac.verify(connID, s.from.Addr(), now) {
			h.fail(s, txID, errBadConnectionID)
			return
		}
		h.scrape(s, pkt, txID)
	default:
		s.action = frontends.ActionUnknown
		h.fail(s, txID, errUnknownAction)
	}
}

func (h *handler) announce(s *slot, pkt []byte, txID uint32) {
	if err := parseAnnounce(pkt, s.from.Addr(), &s.req, &h.url); err != nil {
		h.fail(s, txID, err)
		return
	}
	v6 := s.req.Addr.Addr().Is6()
	// Peers beyond what a reply holds would be chosen only to be cut.
	peerLen := peer4Len
	if v6 {
		peerLen = peer6Len
	}
	//nolint:gosec // G115: s.out is maxReply bytes
	if fit := uint32((len(s.out) - announceReplyLen) / peerLen); s.req.NumWantSet && s.req.NumWant > fit {
		s.req.NumWant = fit
	}
	if err := h.t.Announce(h.ctx, &s.req, &h.resp); err != nil {
		h.fail(s, txID, err)
		return
	}
	s.reply = writeAnnounce(s.out, txID, &h.resp, v6)
	s.result = frontends.ResultOK
	s.announced = true
}

func (h *handler) scrape(s *slot, pkt []byte, txID uint32) {
	h.sreq.InfoHashes = parseScrape(pkt, h.sreq.InfoHashes[:0])
	h.sreq.Addr = netip.AddrPortFrom(s.from.Addr().Unmap().WithZone(""), s.from.Port())
	if err := h.t.Scrape(h.ctx, &h.sreq, &h.sresp); err != nil {
		h.fail(s, txID, err)
		return
	}
	s.reply = writeScrape(s.out, txID, h.sresp.Files)
	s.result = frontends.ResultOK
}

// fail answers s with an error reply for err, unless the packet looks like
// a tracker's reply (its first word is a reply action): then it is dropped,
// because every reply of ours starts that way too, and answering would let
// one spoofed packet set two trackers, or one tracker and itself, trading
// error packets forever.
func (h *handler) fail(s *slot, txID uint32, err error) {
	pkt := s.buf[:s.n]
	if be.Uint32(pkt) <= actionError {
		s.action, s.drop = "", frontends.DropResponse
		return
	}
	reason, client := failureReason(err)
	if client {
		s.result = frontends.ResultClientError
	} else {
		s.result = frontends.ResultError
		if n, ok := h.failLog.Allow(); ok {
			h.log.Warn("udp request failed", zap.String("action", s.action), zap.Error(err),
				zap.Uint64("failures_since_last_log", n))
		}
	}
	s.reply = writeError(s.out, txID, reason, len(pkt))
}

// finish tallies s's outcome once its reply was sent (or not), for the
// reader to record with the rest of the batch, and hands a successful
// announce to the PostHooks.
func (h *handler) finish(s *slot) {
	if s.drop != "" {
		h.rec.Drop(s.drop)
		return
	}
	if s.action == "" {
		return
	}
	result := s.result
	if s.unsent {
		result = frontends.ResultError
	}
	h.tally.Add(s.action, result)
	if s.announced && !s.unsent {
		if h.bt == nil {
			h.t.AfterAnnounce(&s.req)
		} else {
			h.after = append(h.after, &s.req)
		}
	}
}

// handOver passes the batch's answered announces to the PostHooks in one
// go, when the tracker takes them so; finish passed them one by one
// otherwise.
func (h *handler) handOver() {
	if len(h.after) > 0 {
		h.bt.AfterAnnounceBatch(h.after)
		clear(h.after) // keeps no pointers into the slots
		h.after = h.after[:0]
	}
}

// failureReason returns bittorrent.FailureReason(err) and whether err is a
// client error. An unwrapped ClientError, such as the frontend's own, is
// answered without errors.As, which allocates because it takes its target as
// an interface: garbage and stale connection IDs then cost no garbage.
func failureReason(err error) (reason string, client bool) {
	if ce, ok := err.(bittorrent.ClientError); ok { //nolint:errorlint // fast path; wrapped errors are handled below
		return string(ce), true
	}
	var ce bittorrent.ClientError
	return bittorrent.FailureReason(err), errors.As(err, &ce)
}
