package cluster

import (
	"net/netip"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/store"
	"github.com/karuta-tracker/karuta/store/storetest"
)

// readThrough is a store.Store whose writes go to the owner's store and
// whose reads are answered by another node, one that owns nothing: the
// fetch, the snapshot and its peer choice. Running the store conformance
// suite on it holds a node's reads of swarms owned elsewhere to the same
// contract as the owner's own store.
type readThrough struct {
	store.Store // the owner's
	reader      *Cluster
}

func (s readThrough) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	return s.reader.AnnouncePeers(ih, announcer, seeder, n, dst)
}

func (s readThrough) Counts(ih bittorrent.InfoHash) bittorrent.Counts { return s.reader.Counts(ih) }

func TestRemoteReadsConform(t *testing.T) {
	storetest.Run(t, func(t *testing.T, lim store.Limits) store.Store {
		net := transport.NewMemNet()
		// Every read fetches (a zero read_cache_ttl), and a fetch takes
		// the whole of the suite's largest swarm.
		noCache := func(c *Config) {
			c.ReadCacheTTL = 0
			c.ReadMaxPeers = 10000
			c.ReadTimeout = 5 * time.Second
		}
		_, owner := newLoneCluster(t, net, "owner", []string{"owner"}, nil, noCache)
		owner.SetLimits(lim)
		reader, _ := newLoneCluster(t, net, "reader", []string{"owner"}, nil, noCache)
		if reader.View().Self >= 0 {
			t.Fatal("the reader owns swarms; its reads would not go remote")
		}
		// Until the reader has taken in its first view it clears its
		// cache, which can drop a fetch's answer before the read that
		// waited for it looks (a read racing a view change falls back to
		// the local store).
		eventually.True(t, 5*time.Second, "the reader takes in its view", func() bool { return reader.settled.Load() == reader.View() })
		return readThrough{Store: owner, reader: reader}
	})
}
