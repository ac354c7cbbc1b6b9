package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// scrapePage bounds the swarms one ScrapeRequest reads. At about 26 bytes
// a swarm a reply is some 210 KiB, far below the transport's frame limit,
// and the handler holds the transport's goroutine for a millisecond or so.
const scrapePage = 8192

// scrapeCallTimeout bounds one page request of a full scrape.
const scrapeCallTimeout = 10 * time.Second

// ScrapeAll implements hooks.SwarmLister for the whole cluster, so that any
// node answers a full scrape with every swarm of the cluster, each once:
// a swarm is reported by the first of its owners in the view, which holds
// it (writes reach every owner). This node pages through its own store
// and asks every other member of its view for the pages of swarms it is
// first owner of, one member after another. While views disagree (a join
// or leave in flight) a swarm may be reported by two nodes or by none;
// the HTTP frontend drops repeats after sorting.
func (c *Cluster) ScrapeAll(ctx context.Context, fn func([]bittorrent.Scrape) error) error {
	v := c.view.Load()
	if len(v.Members()) == 0 {
		// Leaving the last member: nobody else holds anything.
		return c.store.ScrapeAll(ctx, fn)
	}
	for i := range v.Members() {
		var err error
		if i == v.Self {
			err = c.scrapeLocal(ctx, v, fn)
		} else {
			err = c.scrapeRemote(ctx, v.Members()[i].Name, v.DataAddrs[i], fn)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) scrapeLocal(ctx context.Context, v *ring.View, fn func([]bittorrent.Scrape) error) error {
	var (
		page   []bittorrent.Scrape
		cursor uint64
		done   bool
	)
	for !done {
		if err := ctx.Err(); err != nil {
			return err
		}
		page, cursor, done = c.store.ScrapePage(cursor, c.scrapePage, page[:0])
		if page = firstOwned(v, page); len(page) > 0 {
			if err := fn(page); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) scrapeRemote(ctx context.Context, name, addr string, fn func([]bittorrent.Scrape) error) error {
	req := &transport.ScrapeRequest{Max: c.scrapePage}
	for {
		callCtx, cancel := context.WithTimeout(ctx, scrapeCallTimeout)
		rep, err := c.tr.Call(callCtx, addr, req)
		cancel()
		if err != nil {
			return fmt.Errorf("cluster: full scrape of %s: %w", name, err)
		}
		r, ok := rep.(*transport.ScrapeReply)
		if !ok {
			return fmt.Errorf("cluster: full scrape of %s: reply %T, want a scrape reply", name, rep)
		}
		if len(r.Files) > 0 {
			if err := fn(r.Files); err != nil {
				return err
			}
		}
		if r.Done {
			return nil
		}
		if r.Next <= req.Cursor {
			// A cursor that does not advance would page forever.
			return fmt.Errorf("cluster: full scrape of %s: cursor %d after %d does not advance", name, r.Next, req.Cursor)
		}
		req.Cursor = r.Next
	}
}

// scrapePageFor answers another node's ScrapeRequest from the store.
func (c *Cluster) scrapePageFor(r *transport.ScrapeRequest) *transport.ScrapeReply {
	files, next, done := c.store.ScrapePage(r.Cursor, min(max(r.Max, 1), scrapePage), nil)
	return &transport.ScrapeReply{Files: firstOwned(c.view.Load(), files), Next: next, Done: done}
}

// firstOwned keeps, in place, the swarms whose first owner in v is this
// node.
func firstOwned(v *ring.View, files []bittorrent.Scrape) []bittorrent.Scrape {
	if v.Self < 0 {
		return files[:0]
	}
	var buf [8]int
	kept := files[:0]
	for _, f := range files {
		if owners := v.OwnersOf(f.InfoHash, buf[:0]); len(owners) > 0 && owners[0] == v.Self {
			kept = append(kept, f)
		}
	}
	return kept
}
