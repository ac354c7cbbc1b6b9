package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// scrapeAll collects a node's full scrape, failing on a swarm listed twice.
func scrapeAll(t *testing.T, c *Cluster) map[bittorrent.InfoHash]bittorrent.Counts {
	t.Helper()
	got := map[bittorrent.InfoHash]bittorrent.Counts{}
	err := c.ScrapeAll(context.Background(), func(files []bittorrent.Scrape) error {
		for _, f := range files {
			if _, dup := got[f.InfoHash]; dup {
				return fmt.Errorf("swarm %x listed twice", f.InfoHash[:4])
			}
			got[f.InfoHash] = f.Counts
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ScrapeAll: %v", err)
	}
	return got
}

// TestFullScrapeCountsEachSwarmOnce announces over three nodes with two
// replicas, and checks each node's full scrape lists every swarm of the
// cluster exactly once with its counts, snatches included, in pages small
// enough that every node needs several.
func TestFullScrapeCountsEachSwarmOnce(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	const swarms, peers = 60, 300
	tc.populated(all, swarms, peers)
	// One snatch in every fifth swarm, announced through rotating nodes.
	want := map[bittorrent.InfoHash]bittorrent.Counts{}
	for i := range peers {
		c := want[ihN(i%swarms)]
		if i%3 == 0 {
			c.Seeders++
		} else {
			c.Leechers++
		}
		want[ihN(i%swarms)] = c
	}
	for s := 0; s < swarms; s += 5 {
		ih := ihN(s)
		done := bittorrent.Peer{Addr: netip.MustParseAddrPort("192.0.2.99:7000"), ID: bittorrent.PeerID{0x99}}
		tc.nodes[all[s%3]].c.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpComplete, Peer: done}})
		c := want[ih]
		c.Seeders++
		c.Snatches = 1
		want[ih] = c
	}
	tc.waitSettled(all...)
	for _, name := range all {
		tc.nodes[name].c.scrapePage = 4
	}
	for _, name := range all {
		var got map[bittorrent.InfoHash]bittorrent.Counts
		eventually.True(t, 10*time.Second, name+"'s full scrape shows every swarm with its counts", func() bool {
			got = scrapeAll(t, tc.nodes[name].c)
			if len(got) != len(want) {
				return false
			}
			for ih, w := range want {
				if got[ih] != w {
					return false
				}
			}
			return true
		})
	}
}

// TestScrapePageReportsFirstOwned asks a node for pages directly: paging
// ends, and it reports exactly the swarms it is first owner of.
func TestScrapePageReportsFirstOwned(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	tc.populated(all, 50, 100)
	tc.waitSettled(all...)
	b := tc.nodes["b"].c
	v := b.View()
	var firstOwner int
	var buf [8]int
	for s := range 50 {
		if v.OwnersOf(ihN(s), buf[:0])[0] == v.Self {
			firstOwner++
		}
	}
	if firstOwner == 0 {
		t.Fatal("b is first owner of no swarm; the test would prove nothing")
	}
	req := &transport.ScrapeRequest{Max: 3}
	seen := map[bittorrent.InfoHash]bool{}
	for pages := 0; ; pages++ {
		if pages > 2000 {
			t.Fatal("paging never ends")
		}
		rep, err := b.Handle(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		r := rep.(*transport.ScrapeReply)
		for _, f := range r.Files {
			if v.OwnersOf(f.InfoHash, buf[:0])[0] != v.Self {
				t.Errorf("b reports %x, whose first owner is another node", f.InfoHash[:4])
			}
			seen[f.InfoHash] = true
		}
		if r.Done {
			break
		}
		req.Cursor = r.Next
	}
	if len(seen) != firstOwner {
		t.Errorf("b reported %d swarms, want the %d it is first owner of", len(seen), firstOwner)
	}
}

// TestFullScrapeFailsWhenAMemberIsCut checks a full scrape is never
// silently partial: with the link to c cut, a's full scrape fails naming
// c, and succeeds again once the link heals.
func TestFullScrapeFailsWhenAMemberIsCut(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	tc.populated(all, 20, 40)
	tc.waitSettled(all...)
	tc.net.Cut("a", "c")
	err := tc.nodes["a"].c.ScrapeAll(context.Background(), func([]bittorrent.Scrape) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "full scrape of c") {
		t.Fatalf("ScrapeAll with c cut off = %v; want an error naming c", err)
	}
	tc.net.Heal()
	if got := scrapeAll(t, tc.nodes["a"].c); len(got) != 20 {
		t.Errorf("after the heal a's full scrape lists %d swarms, want 20", len(got))
	}
}
