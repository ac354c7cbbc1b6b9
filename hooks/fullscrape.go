package hooks

import (
	"context"
	"errors"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// SwarmLister is a PeerSource that can list every swarm it answers for,
// for full scrapes. *store.Memory lists its own swarms; a cluster node
// lists every swarm of the cluster.
type SwarmLister interface {
	// ScrapeAll calls fn with the counts of every swarm that has peers, in
	// batches, each swarm once, until all are listed, fn returns an error
	// or ctx ends; it returns that error. Batches come in no particular
	// order; fn must not keep the slice and may block (a slow client).
	// ScrapeAll holds no lock of the source while fn runs.
	ScrapeAll(ctx context.Context, fn func([]bittorrent.Scrape) error) error
}

// FullScraper is a Tracker that can answer a scrape of every swarm (BEP 48's
// scrape without info_hash). *Chain implements it.
type FullScraper interface {
	// ScrapeAll runs the PreHooks on req, a scrape naming no infohash, so
	// access hooks (passkey, jwt, rate_limit) decide as for any scrape,
	// then streams every swarm's counts to fn as SwarmLister does.
	ScrapeAll(ctx context.Context, req *bittorrent.ScrapeRequest, fn func([]bittorrent.Scrape) error) error
}

// ErrNoFullScrape is returned by Chain.ScrapeAll when its PeerSource
// cannot list swarms.
var ErrNoFullScrape = errors.New("hooks: the peer source cannot list swarms for a full scrape")

var _ FullScraper = (*Chain)(nil)

// ScrapeAll implements FullScraper.
func (c *Chain) ScrapeAll(ctx context.Context, req *bittorrent.ScrapeRequest, fn func([]bittorrent.Scrape) error) error {
	if c.lister == nil {
		return ErrNoFullScrape
	}
	req.InfoHashes = req.InfoHashes[:0]
	var resp bittorrent.ScrapeResponse
	for _, h := range c.pre {
		if err := h.HandleScrape(ctx, req, &resp); err != nil {
			return err
		}
	}
	return c.lister.ScrapeAll(ctx, fn)
}
