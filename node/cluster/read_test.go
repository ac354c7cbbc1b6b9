package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// callCounter counts the requests a node sends, by destination and type.
type callCounter struct {
	transport.Transport
	mu    sync.Mutex
	calls map[string]int // "addr type"
}

func (cc *callCounter) Call(ctx context.Context, addr string, req transport.Request) (transport.Reply, error) {
	cc.mu.Lock()
	cc.calls[fmt.Sprintf("%s %T", addr, req)]++
	cc.mu.Unlock()
	return cc.Transport.Call(ctx, addr, req)
}

func (cc *callCounter) reset() map[string]int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	out := cc.calls
	cc.calls = map[string]int{}
	return out
}

// countingCluster is a 3-node cluster, one replica, whose node a counts
// what it sends.
func countingCluster(t *testing.T, mutate func(*Config)) (*testCluster, *callCounter) {
	tc := newTestCluster(t, 1, mutate)
	var counter *callCounter
	tc.wrap = func(name string, tr transport.Transport) transport.Transport {
		if name != "a" {
			return tr
		}
		counter = &callCounter{Transport: tr, calls: map[string]int{}}
		return counter
	}
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	return tc, counter
}

// remoteOf returns the first n infohashes (by ihN) that a does not own.
func remoteOf(tc *testCluster, n int) []bittorrent.InfoHash {
	v := tc.nodes["a"].c.View()
	var out []bittorrent.InfoHash
	for i := 0; len(out) < n; i++ {
		if ih := ihN(i); !v.Owns(ih, nil) {
			out = append(out, ih)
		}
	}
	return out
}

// TestScrapeFetchesOncePerOwner scrapes 64 swarms owned by the two other
// nodes: the scrape must make one request to each owner, carrying all of
// that owner's swarms, and answer every swarm's counts.
func TestScrapeFetchesOncePerOwner(t *testing.T) {
	tc, counter := countingCluster(t, nil)
	ihs := remoteOf(tc, 64)
	v := tc.nodes["a"].c.View()
	owners := map[string]bool{}
	for i, ih := range ihs {
		owner := v.Members()[v.OwnersOf(ih, nil)[0]].Name
		owners[owner] = true
		// Two peers each, stored at the owner.
		for k := range 2 {
			tc.nodes[owner].store.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Seeder: k == 0,
				Peer: testPeerN(i*2 + k)}})
		}
	}
	if len(owners) != 2 {
		t.Fatalf("owners %v; the test needs swarms on both other nodes", owners)
	}
	counter.reset()

	var resp bittorrent.ScrapeResponse
	if err := hooks.NewResponder(tc.nodes["a"].c).HandleScrape(context.Background(), &bittorrent.ScrapeRequest{InfoHashes: ihs}, &resp); err != nil {
		t.Fatal(err)
	}
	for i, f := range resp.Files {
		if f.InfoHash != ihs[i] || f.Counts.Seeders != 1 || f.Counts.Leechers != 1 {
			t.Errorf("file %d: %x %+v; want %x with a seeder and a leecher", i, f.InfoHash[:4], f.Counts, ihs[i][:4])
		}
	}
	calls := counter.reset()
	want := map[string]int{}
	for o := range owners {
		want[o+" *transport.FetchManyRequest"] = 1
	}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("requests sent for the scrape: %v; want %v", calls, want)
	}
}

// TestBatchWaitsOneReadTimeout reads 64 swarms whose owners answer far
// too late, after one Prefetch as a UDP reader does for a batch: together
// the reads must wait about one read_timeout, not one each.
func TestBatchWaitsOneReadTimeout(t *testing.T) {
	const readTimeout = 100 * time.Millisecond
	tc, counter := countingCluster(t, func(c *Config) { c.ReadTimeout = readTimeout })
	ihs := remoteOf(tc, 64)
	a := tc.nodes["a"].c
	tc.net.SetDelay(time.Hour) // owners that never answer in time
	start := time.Now()
	a.Prefetch(ihs)
	for _, ih := range ihs {
		if counts := a.Counts(ih); counts != (bittorrent.Counts{}) {
			t.Fatalf("%x: counts %+v from owners that did not answer", ih[:4], counts)
		}
	}
	// One read_timeout each would be 6.4 s; the bound leaves room for a
	// loaded machine running -race.
	if took := time.Since(start); took > 20*readTimeout {
		t.Errorf("64 reads of a batch took %s; want about one read_timeout (%s)", took, readTimeout)
	}
	calls := counter.reset()
	if len(calls) != 2 || calls["b *transport.FetchManyRequest"] != 1 || calls["c *transport.FetchManyRequest"] != 1 {
		t.Errorf("requests: %v; want one FetchManyRequest to each of b and c", calls)
	}
}

func testPeerN(i int) bittorrent.Peer {
	return bittorrent.Peer{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 6881), ID: bittorrent.PeerID{byte(i), byte(i >> 8)}}
}

// TestHandleFetchManyShareOneBudget asks an owner for MaxFetchMany swarms
// at once with a huge MaxPeers: the reply answers every swarm in order,
// and the peers of the whole reply stay within one budget.
func TestHandleFetchManyShareOneBudget(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	b := tc.start("b")
	ihs := make([]bittorrent.InfoHash, transport.MaxFetchMany)
	for i := range ihs {
		ihs[i] = ihN(i)
	}
	const big = 1000
	for k := range big {
		b.store.Apply([]bittorrent.Change{{InfoHash: ihs[7], Op: bittorrent.OpPut, Peer: testPeerN(k)}})
	}
	rep, err := b.c.Handle(context.Background(), &transport.FetchManyRequest{InfoHashes: ihs, MaxPeers: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	fr, ok := rep.(*transport.FetchManyReply)
	if !ok || len(fr.Swarms) != len(ihs) {
		t.Fatalf("reply %T with %d swarms; want a FetchManyReply of %d", rep, len(fr.Swarms), len(ihs))
	}
	perSwarm := maxFetchManyPeers / len(ihs)
	for i, sw := range fr.Swarms {
		want := 0
		if i == 7 {
			want = perSwarm
		}
		if len(sw.Peers) != want {
			t.Errorf("swarm %d: %d peers, want %d", i, len(sw.Peers), want)
		}
	}
	if fr.Swarms[7].Counts.Leechers != big {
		t.Errorf("swarm 7 counts %+v; want all %d leechers counted", fr.Swarms[7].Counts, big)
	}
}

// TestReadKeepsItsFetchAcrossAClear is the race between a fetch and a new
// view: the fetch a read waits on (here a prefetch's) finishes, then the
// new view clears the read cache, and only then does the read look for
// the answer. It must answer what the fetch delivered, not report a failed
// read and answer empty.
func TestReadKeepsItsFetchAcrossAClear(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	a := tc.start("a").c
	ih := ihN(1)
	now := a.clock.Now()
	prefetch, fetch := a.cache.lookup(ih, now, true)
	if !fetch {
		t.Fatal("an empty cache did not ask for a fetch")
	}
	read, fetch := a.cache.lookup(ih, now, false)
	if fetch {
		t.Fatal("a read started a second fetch while one is in flight")
	}
	want := newSnapshot(&transport.FetchReply{
		Counts: bittorrent.Counts{Seeders: 1},
		Peers:  []transport.SwarmPeer{{Peer: testPeerN(1), Seeder: true}},
	}, now)
	a.cache.finish(ih, prefetch, want)
	a.cache.clear() // the new view lands before the read looks
	if got := a.await(ih, read, now, false); got != want {
		t.Errorf("the read got %+v; want the snapshot its fetch delivered, %+v", got, want)
	}
	if got := testutil.ToFloat64(a.m.readFailed); got != 0 {
		t.Errorf("%v failed reads; want 0", got)
	}
	if got := testutil.ToFloat64(a.m.readFetched); got != 1 {
		t.Errorf("%v fetched reads; want 1", got)
	}
}

// TestConcurrentReadsShareRequests reads 64 swarms that one other node
// owns, each from its own goroutine and without a prefetch, as HTTP's
// connections do: the reads must share requests (fetchBatcher), not
// send one each, and each must get its own swarm.
func TestConcurrentReadsShareRequests(t *testing.T) {
	tc, counter := countingCluster(t, nil)
	a := tc.nodes["a"].c
	v := a.View()
	var ihs []bittorrent.InfoHash
	for _, ih := range remoteOf(tc, 200) {
		if v.Members()[v.OwnersOf(ih, nil)[0]].Name == "b" && len(ihs) < 64 {
			ihs = append(ihs, ih)
		}
	}
	for i, ih := range ihs {
		tc.nodes["b"].store.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: testPeerN(i)}})
	}
	counter.reset()
	tc.net.SetDelay(5 * time.Millisecond) // so the reads overlap
	var wg sync.WaitGroup
	for i, ih := range ihs {
		wg.Go(func() {
			peers, counts, _ := a.AnnouncePeers(ih, reader, false, 50, nil)
			if len(peers) != 1 || peers[0] != testPeerN(i) || counts.Leechers != 1 {
				t.Errorf("%x: peers %v, counts %+v; want its one peer %v", ih[:4], peers, counts, testPeerN(i))
			}
		})
	}
	wg.Wait()
	calls := counter.reset()
	if n := calls["b *transport.FetchManyRequest"]; n == 0 || n > len(ihs)/4 {
		t.Errorf("%d requests to b for %d concurrent reads (%v); want them shared, at most %d", n, len(ihs), calls, len(ihs)/4)
	}
}

// brokenTo is a transport whose calls to one address fail: at once, as
// to a node that refuses connections, or, with hang, only when the
// caller gives up, as to a node that does not answer.
type brokenTo struct {
	transport.Transport
	addr string
	hang bool
}

func (b brokenTo) Call(ctx context.Context, addr string, req transport.Request) (transport.Reply, error) {
	if addr == b.addr {
		if b.hang {
			<-ctx.Done()
		}
		return nil, fmt.Errorf("call %s: %w", addr, transport.ErrUnreachable)
	}
	return b.Transport.Call(ctx, addr, req)
}

// TestReadHedgesToTheNextOwner: with two owners and the first one not
// answering, a read asks the second after half of read_timeout and
// answers from it, without a failed read.
func TestReadHedgesToTheNextOwner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		took := readPastFirstOwner(t, func(tr transport.Transport, first string) transport.Transport {
			return brokenTo{Transport: tr, addr: first, hang: true}
		})
		if took != hedgeDelay(hedgeReadTimeout) {
			t.Errorf("answered after %s; want %s, the hedge delay (the fake clock runs only while every goroutine waits)", took, hedgeDelay(hedgeReadTimeout))
		}
	})
}

// TestReadAsksTheNextOwnerOnFailure: a first owner whose fetch fails at
// once does not cost the hedge delay: the next is asked at once.
func TestReadAsksTheNextOwnerOnFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		took := readPastFirstOwner(t, func(tr transport.Transport, first string) transport.Transport {
			return brokenTo{Transport: tr, addr: first}
		})
		if took != 0 {
			t.Errorf("answered after %s; want at once (the fake clock runs only while every goroutine waits)", took)
		}
	})
}

const hedgeReadTimeout = 400 * time.Millisecond

// readPastFirstOwner starts four nodes with replicas 2, a's transport
// wrapped by wrap (given the first owner's address) and read_timeout
// hedgeReadTimeout, stores one peer at both owners of a swarm a does not
// own, reads it through a, and returns how long the read took on the
// fake clock. It fails the test unless the read got the peer, without a
// failed read.
func readPastFirstOwner(t *testing.T, wrap func(tr transport.Transport, first string) transport.Transport) time.Duration {
	tc := newTestCluster(t, 2, func(c *Config) { c.ReadTimeout = hedgeReadTimeout })
	all := []string{"a", "b", "c", "d"}
	// Placement does not depend on the transport, so a's view, and so the
	// swarm's first owner, can be known before a starts.
	v := routeView(t, "a", all, 2, map[string]string{"a": "dc1", "b": "dc1", "c": "dc1", "d": "dc1"})
	var ih bittorrent.InfoHash
	for i := 0; ; i++ {
		if ih = ihN(i); !v.Owns(ih, nil) {
			break
		}
	}
	owners := v.OwnersOf(ih, nil)
	first, second := v.Members()[owners[0]].Name, v.Members()[owners[1]].Name
	tc.wrap = func(name string, tr transport.Transport) transport.Transport {
		if name != "a" {
			return tr
		}
		return wrap(tr, first)
	}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	a := tc.nodes["a"].c
	if got := a.View().OwnersOf(ih, nil); fmt.Sprint(got) != fmt.Sprint(owners) {
		t.Fatalf("owners %v in the cluster's view, %v in the test's", got, owners)
	}
	for _, o := range []string{first, second} {
		tc.nodes[o].store.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: testPeerN(1)}})
	}
	tc.waitWhole(all...)
	start := time.Now()
	peers, _, _ := a.AnnouncePeers(ih, reader, false, 50, nil)
	took := time.Since(start)
	if len(peers) != 1 {
		t.Fatalf("got %v; want the peer, from %s", peers, second)
	}
	if got := testutil.ToFloat64(a.m.readFailed); got != 0 {
		t.Errorf("%v failed reads; want 0", got)
	}
	return took
}
