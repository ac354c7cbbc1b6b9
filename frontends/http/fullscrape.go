package http

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net"
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

// fullScrapeGate lets one full scrape be answered at a time, and at most
// one start per interval, since each walks every swarm and sends them all.
// Safe for concurrent use.
type fullScrapeGate struct {
	interval time.Duration

	mu   sync.Mutex
	busy bool
	next time.Time // no new full scrape before this
}

// acquire reports whether a full scrape may start at now; if so, the
// caller must release it when done.
func (g *fullScrapeGate) acquire(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy || now.Before(g.next) {
		return false
	}
	g.busy, g.next = true, now.Add(g.interval)
	return true
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
				c.s.log.Info("http: full scrapes refused: another was answered less than full_scrape_interval ago or is still being sent",
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
	if !c.s.fullGate.acquire(start) {
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
