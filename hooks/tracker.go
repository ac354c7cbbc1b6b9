// Package hooks is Karuta's protocol-agnostic middleware: a chain of
// PreHooks that build the answer to an announce or scrape, and PostHooks that
// run after the client has its answer, off the request path.
package hooks

import (
	"context"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Tracker is what frontends call; *Chain implements it. Frontends depend on
// this interface only, never on stores or the ring.
type Tracker interface {
	// Announce fills resp for req. An error whose chain holds a
	// bittorrent.ClientError is shown to the client as its failure reason.
	// Safe for concurrent use; req and resp belong to the caller.
	Announce(ctx context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error

	// Scrape fills resp for req, one entry per requested infohash.
	Scrape(ctx context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error

	// AfterAnnounce hands a successfully answered announce to the PostHooks.
	// Call it after the answer was sent. It copies req and never blocks:
	// when the queue is full the announce is dropped and counted.
	AfterAnnounce(req *bittorrent.AnnounceRequest)
}

// BatchTracker is a Tracker that also takes answered announces a batch at
// a time: a frontend holding several at once (a batch of datagrams) hands
// them to the PostHooks in one go rather than one by one. *Chain
// implements it.
type BatchTracker interface {
	Tracker
	// AfterAnnounceBatch is AfterAnnounce for each of reqs, in order, and
	// keeps none of them.
	AfterAnnounceBatch(reqs []*bittorrent.AnnounceRequest)
}

// Prefetcher is implemented by Trackers and PeerSources whose reads may wait
// on the network, such as a cluster node asking a swarm's owner. Prefetch
// starts, without waiting, whatever the next announces and scrapes of ihs
// will read, so that a frontend holding several requests at once (a batch
// of datagrams) has their reads overlap instead of waiting for each in
// turn. It must not keep ihs, and must be cheap when nothing needs
// fetching.
type Prefetcher interface {
	Prefetch(ihs []bittorrent.InfoHash)
}
