package http

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Failure reasons of full scrapes.
const (
	errFullScrapeOff     = bittorrent.ClientError("full scrape is disabled on this tracker; name the torrents with info_hash")
	errFullScrapeLimited = bittorrent.ClientError("full scrape rate limit exceeded; try again later")
)

// fullScrapeGate lets one full scrape be answered at a time, since each
// walks every swarm and sends them all, and each source (an address, an
// IPv6 /64) start at most one per interval: a client polling cannot take
// every turn, as it could when the interval was shared by all clients.
// It remembers the sources of the last interval, at most
// maxFullScrapeSources of them. Safe for concurrent use.
type fullScrapeGate struct {
	interval time.Duration

	mu   sync.Mutex
	busy bool
	last map[netip.Addr]time.Time // when each recent source last started one
}

// maxFullScrapeSources bounds the sources the gate remembers; past it the
// one that started longest ago is forgotten, which at worst gives it its
// next turn early.
const maxFullScrapeSources = 4096

// acquire reports whether a full scrape for src may start at now; if so,
// the caller must release it when done.
func (g *fullScrapeGate) acquire(src netip.Addr, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := fullScrapeSource(src)
	if g.busy {
		return false
	}
	if t, ok := g.last[key]; ok && now.Sub(t) < g.interval {
		return false
	}
	if g.last == nil {
		g.last = map[netip.Addr]time.Time{}
	}
	if len(g.last) >= maxFullScrapeSources {
		g.forget(now)
	}
	g.busy, g.last[key] = true, now
	return true
}

// forget drops the sources whose interval has passed, or, when none has,
// the one that started longest ago. Called with mu held.
func (g *fullScrapeGate) forget(now time.Time) {
	var oldest netip.Addr
	var at time.Time
	for k, t := range g.last {
		switch {
		case now.Sub(t) >= g.interval:
			delete(g.last, k)
		case at.IsZero() || t.Before(at):
			oldest, at = k, t
		}
	}
	if len(g.last) >= maxFullScrapeSources {
		delete(g.last, oldest)
	}
}

// fullScrapeSource is the gate's key for a client address: the address,
// or an IPv6 address's /64.
func fullScrapeSource(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64) // fails only for an invalid address, whose key is the zero prefix's
		return p.Addr()
	}
	return a
}

func (g *fullScrapeGate) release() {
	g.mu.Lock()
	g.busy = false
	g.mu.Unlock()
}

// fullScrape answers a scrape that names no infohash with every swarm the
// tracker has, or refuses it. The answer is sent as it is encoded, gzipped
// if the client accepts it, without a Content-Length, and the connection is
// closed after it, so the node holds the swarm list once (32 bytes a swarm,
// to sort it as bencode wants) and never the encoded answer. It reports
// whether the connection stays open, which only a refusal allows.
func (c *conn) fullScrape(h head, isHead, keep bool, start time.Time) bool {
	refuse := func(reason bittorrent.ClientError, outcome, result string) bool {
		c.s.rec.FullScrape(outcome)
		if outcome == frontends.FullScrapeRateLimited {
			if n, ok := c.s.fullLog.Allow(); ok {
				c.s.log.Info("http: full scrapes refused: another is being sent, or the same client had one less than full_scrape_interval ago",
					zap.Uint64("refused_since_last_log", n), zap.Duration("full_scrape_interval", c.s.cfg.FullScrapeInterval))
			}
		}
		c.body = appendFailure(c.body[:0], string(reason))
		c.answer(h, isHead, keep, c.body)
		c.s.rec.Record(frontends.ActionScrape, result, start)
		return keep
	}
	fs, ok := c.s.t.(hooks.FullScraper)
	if !c.s.cfg.FullScrape || !ok {
		return refuse(errFullScrapeOff, frontends.FullScrapeDisabled, frontends.ResultClientError)
	}
	if !c.s.fullGate.acquire(c.sreq.Addr.Addr(), start) {
		return refuse(errFullScrapeLimited, frontends.FullScrapeRateLimited, frontends.ResultClientError)
	}
	defer c.s.fullGate.release()

	var files []bittorrent.Scrape
	err := fs.ScrapeAll(c.s.ctx, &c.sreq, func(batch []bittorrent.Scrape) error {
		files = append(files, batch...)
		return nil
	})
	if err != nil {
		var ce bittorrent.ClientError
		if errors.As(err, &ce) {
			return refuse(ce, frontends.FullScrapeRefused, frontends.ResultClientError)
		}
		if n, ok := c.s.errLog.Allow(); ok {
			c.s.log.Warn("http: full scrape failed", zap.Error(err), zap.Uint64("errors_since_last_log", n))
		}
		c.s.rec.FullScrape(frontends.FullScrapeError)
		c.body = appendFailure(c.body[:0], string(bittorrent.ErrInternal))
		c.answer(h, isHead, keep, c.body)
		c.s.rec.Record(frontends.ActionScrape, frontends.ResultError, start)
		return keep
	}
	slices.SortFunc(files, func(a, b bittorrent.Scrape) int { return bytes.Compare(a.InfoHash[:], b.InfoHash[:]) })

	h.conn, h.stream, h.gzip = connClose, true, c.req.gzip
	c.wbuf = appendHead(c.wbuf, h)
	if !c.flush() {
		c.s.rec.FullScrape(frontends.FullScrapeError)
		c.s.rec.Record(frontends.ActionScrape, frontends.ResultError, start)
		return false
	}
	result, outcome := frontends.ResultOK, frontends.FullScrapeOK
	if !isHead {
		if err := c.streamFiles(files); err != nil {
			c.s.log.Debug("http: full scrape cut short", zap.Stringer("peer", c.peer), zap.Error(err))
			result, outcome = frontends.ResultError, frontends.FullScrapeError
		}
	}
	c.s.rec.FullScrape(outcome)
	c.s.rec.Record(frontends.ActionScrape, result, start)
	return false
}

// answer queues a whole response with body, telling the client whether
// the connection stays open. HEAD is answered like GET, announce included,
// minus the body (RFC 9110 section 9.3.2).
func (c *conn) answer(h head, isHead, keep bool, body []byte) {
	switch {
	case !keep:
		h.conn = connClose
	case h.minor == 0:
		h.conn = connKeepAlive
	}
	h.contentLen = len(body)
	c.wbuf = appendHead(c.wbuf, h)
	if !isHead {
		c.wbuf = append(c.wbuf, body...)
	}
}

// streamFiles writes the full scrape's body to the connection, through
// gzip if the client accepts it. Every write gets write_timeout.
func (c *conn) streamFiles(files []bittorrent.Scrape) error {
	bw := bufio.NewWriterSize(&deadlineWriter{nc: c.nc, timeout: c.s.cfg.WriteTimeout}, flushThreshold)
	var out io.Writer = bw
	var zw *gzip.Writer
	if c.req.gzip {
		zw, _ = gzip.NewWriterLevel(bw, gzip.BestSpeed) // a valid level never fails
		out = zw
	}
	buf := make([]byte, 0, 128)
	buf = append(buf, "d5:filesd"...)
	for i := range files {
		if i > 0 && files[i].InfoHash == files[i-1].InfoHash {
			continue
		}
		buf = appendScrapeEntry(buf, &files[i])
		if len(buf) >= 64 {
			if _, err := out.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	buf = append(buf, "ee"...)
	if _, err := out.Write(buf); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// appendScrapeEntry appends one swarm's entry of a scrape's files
// dictionary: its raw infohash as the key, its counts as the value.
func appendScrapeEntry(dst []byte, f *bittorrent.Scrape) []byte {
	dst = append(dst, "20:"...)
	dst = append(dst, f.InfoHash[:]...)
	dst = append(dst, "d8:completei"...)
	dst = strconv.AppendUint(dst, uint64(f.Seeders), 10)
	dst = append(dst, "e10:downloadedi"...)
	dst = strconv.AppendUint(dst, uint64(f.Snatches), 10)
	dst = append(dst, "e10:incompletei"...)
	dst = strconv.AppendUint(dst, uint64(f.Leechers), 10)
	return append(dst, "ee"...)
}

// deadlineWriter gives every write to a connection its own deadline, so a
// long streamed answer is bounded per write, not as a whole.
type deadlineWriter struct {
	nc      net.Conn
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if err := w.nc.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.nc.Write(p)
}
