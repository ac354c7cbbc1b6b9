// Package transport carries requests and replies between the nodes of a
// cluster: the messages and their codec, the authenticated TCP channel, and
// an in-memory network for tests. It knows nothing of placement or policy.
package transport

import (
	"context"
	"errors"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// Transport carries requests between nodes and their replies. The TCP
// implementation authenticates every frame with the cluster's secret keys;
// tests use an in-memory network that can cut links. Implementations are
// safe for concurrent use.
type Transport interface {
	// Call sends req to the node whose data channel is at addr and waits
	// for the reply, an error, or ctx.
	Call(ctx context.Context, addr string, req Request) (Reply, error)
	// Serve answers incoming requests with h until Close. It returns once
	// the listener is ready.
	Serve(h Handler) error
	// Addr is the address other nodes call this node at.
	Addr() string
	// Close stops serving and closes connections.
	Close() error
}

// Handler answers requests from other nodes. It is called concurrently and
// must not block for long: it runs on the transport's goroutines.
type Handler interface {
	Handle(ctx context.Context, req Request) (Reply, error)
}

// ErrUnreachable wraps failures to reach a node (dial, write, timeout), as
// opposed to the node answering with an error.
var ErrUnreachable = errors.New("transport: node unreachable")

// Request is one of *ApplyRequest, *FetchRequest, *FetchManyRequest,
// *MergeRequest, *ScrapeRequest or *SignalRequest.
type Request interface{ isRequest() }

// Reply is one of *Ack, *FetchReply, *FetchManyReply or *ScrapeReply.
type Reply interface{ isReply() }

// ApplyRequest carries swarm changes forwarded by the node that answered
// the announces, for swarms the receiver owns.
type ApplyRequest struct {
	// Stream identifies the sender's sequence of forwards to the receiver,
	// fresh each time the sender starts; zero means the changes carry no
	// sequence numbers.
	Stream uint64
	// Seq is the sequence number of Changes[0] in Stream; the others
	// follow it. A sender retrying after a lost reply sends the same
	// numbers again, so the receiver can skip what it already applied.
	Seq     uint64
	Changes []bittorrent.Change
}

// FetchRequest asks an owner for a swarm's counts and a sample of its
// peers, for a node answering an announce for a swarm it does not own.
type FetchRequest struct {
	InfoHash bittorrent.InfoHash
	// MaxPeers bounds the peers returned per address family.
	MaxPeers int
}

// FetchReply answers a FetchRequest. Peers are a random sample of up to
// MaxPeers per family, seeders and leechers marked.
type FetchReply struct {
	Counts bittorrent.Counts
	Peers  []SwarmPeer
}

// MaxFetchMany is the most swarms one FetchManyRequest may ask for.
const MaxFetchMany = 256

// FetchManyRequest asks an owner for several swarms in one round trip: the
// swarms a batch of requests (a scrape, a batch of datagrams) misses at
// that owner. It replaces one FetchRequest per swarm.
type FetchManyRequest struct {
	// InfoHashes are the swarms, at most MaxFetchMany.
	InfoHashes []bittorrent.InfoHash
	// MaxPeers bounds the peers returned per swarm and address family;
	// the owner may return fewer to keep the reply within its budget.
	MaxPeers int
}

// FetchManyReply answers a FetchManyRequest with one FetchReply per
// infohash, in the request's order.
type FetchManyReply struct {
	Swarms []FetchReply
}

// MergeRequest hands whole swarms to a node that now owns them (join,
// leave, repair after a failure). Merging is idempotent: peers are put,
// snatch counts take the larger value.
type MergeRequest struct {
	Swarms []Swarm
}

// ScrapeRequest asks a node for one page of the swarms it reports in a
// full scrape: those it holds whose first owner it is. Cursor is 0 for the
// first page and then the previous reply's Next; Max bounds the swarms the
// receiver reads for the page (a page may carry a few more, and fewer
// after leaving out swarms it is not first owner of).
type ScrapeRequest struct {
	Cursor uint64
	Max    int
}

// ScrapeReply answers a ScrapeRequest with one page of swarm counts. Done
// says there are no more pages; otherwise ask again with Next.
type ScrapeReply struct {
	Files []bittorrent.Scrape
	Next  uint64
	Done  bool
}

// Ack acknowledges an ApplyRequest or MergeRequest.
type Ack struct{}

// Swarm is a snapshot of one swarm as moved between nodes.
type Swarm struct {
	InfoHash bittorrent.InfoHash
	Snatches uint32
	Peers    []SwarmPeer
}

// SwarmPeer is a peer with its role in the swarm.
type SwarmPeer struct {
	bittorrent.Peer
	Seeder bool
}

func (*ApplyRequest) isRequest()     {}
func (*FetchRequest) isRequest()     {}
func (*FetchManyRequest) isRequest() {}
func (*MergeRequest) isRequest()     {}
func (*ScrapeRequest) isRequest()    {}
func (*Ack) isReply()                {}
func (*FetchReply) isReply()         {}
func (*FetchManyReply) isReply()     {}
func (*ScrapeReply) isReply()        {}
