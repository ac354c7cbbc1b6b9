package webtorrent

import (
	"errors"
	"net/netip"
	"time"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// maxScrapeHashes bounds the swarms one scrape message may name; the
// chain's tracker.max_scrape_hashes may refuse fewer.
const maxScrapeHashes = 1000

// scrape answers a scrape of the named swarms, or of every swarm when
// none is named and full_scrape is on.
func (c *conn) scrape(r *request) {
	start := time.Now()
	ihs, err := parseScrapeHashes(r.InfoHash, maxScrapeHashes, nil)
	if err != nil {
		c.fail(start, frontends.ActionScrape, nil, err)
		return
	}
	req := bittorrent.ScrapeRequest{InfoHashes: ihs, Addr: netipPort0(c), Params: c.params}
	if len(ihs) == 0 {
		c.fullScrape(start, &req)
		return
	}
	var resp bittorrent.ScrapeResponse
	if err := c.s.t.Scrape(c.s.ctx, &req, &resp); err != nil {
		c.fail(start, frontends.ActionScrape, nil, err)
		return
	}
	b := make([]byte, 0, 48+len(resp.Files)*96)
	b = append(b, `{"action":"scrape","files":{`...)
	for i := range resp.Files {
		b = appendScrapeFile(b, &resp.Files[i], i == 0)
	}
	c.enqueue(append(b, "}}"...))
	c.s.rec.Record(frontends.ActionScrape, frontends.ResultOK, start)
}

// fullScrape lists every swarm in one message, at most once per
// full_scrape_interval on this node.
func (c *conn) fullScrape(start time.Time, req *bittorrent.ScrapeRequest) {
	fs, ok := c.s.t.(hooks.FullScraper)
	if !c.s.cfg.FullScrape || !ok {
		c.s.rec.FullScrape(frontends.FullScrapeDisabled)
		c.fail(start, frontends.ActionScrape, nil, errFullScrape)
		return
	}
	c.s.fullMu.Lock()
	if !c.s.lastFull.IsZero() && start.Sub(c.s.lastFull) < c.s.cfg.FullScrapeInterval {
		c.s.fullMu.Unlock()
		c.s.rec.FullScrape(frontends.FullScrapeRateLimited)
		c.fail(start, frontends.ActionScrape, nil, errFullLimited)
		return
	}
	c.s.lastFull = start
	c.s.fullMu.Unlock()
	b := append(make([]byte, 0, 4096), `{"action":"scrape","files":{`...)
	first := true
	err := fs.ScrapeAll(c.s.ctx, req, func(batch []bittorrent.Scrape) error {
		for i := range batch {
			b = appendScrapeFile(b, &batch[i], first)
			first = false
		}
		return nil
	})
	if err != nil {
		var ce bittorrent.ClientError
		if errors.As(err, &ce) {
			c.s.rec.FullScrape(frontends.FullScrapeRefused)
		} else {
			c.s.rec.FullScrape(frontends.FullScrapeError)
		}
		c.fail(start, frontends.ActionScrape, nil, err)
		return
	}
	c.s.rec.FullScrape(frontends.FullScrapeOK)
	c.enqueue(append(b, "}}"...))
	c.s.rec.Record(frontends.ActionScrape, frontends.ResultOK, start)
}

// netipPort0 is the client's address with port 0, as scrapes carry it.
func netipPort0(c *conn) netip.AddrPort { return netip.AddrPortFrom(c.ip, 0) }
