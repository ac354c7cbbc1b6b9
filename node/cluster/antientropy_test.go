package cluster

import (
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/ring"
)

// putAt is a put of peer number i (of network net) in swarm ih.
func putAt(ih bittorrent.InfoHash, net, i int, seeder bool) bittorrent.Change {
	return bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: seeder, Peer: bittorrent.Peer{
		ID:   bittorrent.PeerID{byte(net), byte(i)},
		Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(net), byte(i >> 8), byte(i)}), 6881),
	}}
}

// waitWhole waits until the named nodes trust their copies whole, which
// anti-entropy waits for after a view change.
func (tc *testCluster) waitWhole(names ...string) {
	tc.t.Helper()
	tc.waitSettled(names...)
	eventually.True(tc.t, 15*time.Second, fmt.Sprintf("%v trust their copies", names), func() bool {
		for _, n := range names {
			if !tc.nodes[n].c.Trusted() {
				return false
			}
		}
		return true
	})
}

// differences lists the swarms whose copies on the named nodes differ.
func (tc *testCluster) differences(ihs []bittorrent.InfoHash, names ...string) []string {
	var out []string
	for _, ih := range ihs {
		first, _ := tc.nodes[names[0]].store.Digest(ih)
		for _, n := range names[1:] {
			if d, _ := tc.nodes[n].store.Digest(ih); d != first {
				out = append(out, fmt.Sprintf("swarm %x differs between %s and %s", ih[:2], names[0], n))
			}
		}
	}
	return out
}

func TestDivergedReplicasConverge(t *testing.T) { synctest.Test(t, testDivergedReplicasConverge) }

// testDivergedReplicasConverge makes the two owners of every swarm
// diverge, as forwards dropped at either would (writes applied to one
// store only), and checks that within one repair_interval, with no
// announce, both hold the union: every peer, the later state of a peer
// both hold, the larger snatch count.
func testDivergedReplicasConverge(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	tc.waitWhole("a", "b")

	var ihs []bittorrent.InfoHash
	var onlyA, onlyB, both []bittorrent.Change
	for s := range 60 {
		ih := ihN(s)
		ihs = append(ihs, ih)
		both = append(both, putAt(ih, 1, s, false))
		switch {
		case s < 30: // a heard of peers b missed
			for p := range 3 {
				onlyA = append(onlyA, putAt(ih, 2, s*3+p, p == 0))
			}
		case s < 45: // and b of others
			onlyB = append(onlyB, putAt(ih, 3, s, true))
		}
	}
	for s := 60; s < 70; s++ { // swarms only b holds
		ih := ihN(s)
		ihs = append(ihs, ih)
		onlyB = append(onlyB, putAt(ih, 4, s, false))
	}
	a.store.Apply(both)
	b.store.Apply(both)
	time.Sleep(tc.cfg.RepairInterval) // a pass finds them in sync
	synctest.Wait()
	a.store.Apply(onlyA)
	b.store.Apply(onlyB)
	// A peer both hold that b heard become a seeder later, and a
	// completion only a counted.
	b.store.Apply([]bittorrent.Change{putAt(ihN(50), 1, 50, true)})
	a.store.MergeSnatches(ihN(51), 5)
	if diff := tc.differences(ihs, "a", "b"); len(diff) != 30+15+10+2 {
		t.Fatalf("%d swarms differ before the repair, want 57: %v", len(diff), diff)
	}
	received := testutil.ToFloat64(b.c.m.received)

	time.Sleep(tc.cfg.RepairInterval)
	synctest.Wait()

	if diff := tc.differences(ihs, "a", "b"); len(diff) > 0 {
		t.Fatalf("%d swarms still differ one repair_interval later: %v", len(diff), diff[:min(5, len(diff))])
	}
	if c := a.store.Counts(ihN(50)); c.Seeders != 1 || c.Leechers != 0 {
		t.Errorf("swarm 50 on a: %+v, want b's later announce, seeding, to win", c)
	}
	if c := b.store.Counts(ihN(51)); c.Snatches != 5 {
		t.Errorf("swarm 51 on b: %d snatches, want a's 5", c.Snatches)
	}
	for _, n := range []*testNode{a, b} {
		if got := testutil.ToFloat64(n.c.m.ae.exchanges[aeRepaired]); got < 1 {
			t.Errorf("%s: %v repaired exchanges, want at least one", n.name, got)
		}
	}
	added := testutil.ToFloat64(a.c.m.ae.peersAdded) + testutil.ToFloat64(b.c.m.ae.peersAdded)
	if want := float64(len(onlyA) + len(onlyB)); added != want {
		t.Errorf("peers added by repairs: %v, want the %v each side lacked", added, want)
	}
	if got := testutil.ToFloat64(b.c.m.received); got != received {
		t.Errorf("b applied %v forwarded changes during the repair; the repair must need no announce", got-received)
	}

	// Converged copies stay quiet: the next pass finds nothing to send.
	sent := testutil.ToFloat64(a.c.m.ae.swarms[aeSent])
	time.Sleep(tc.cfg.RepairInterval)
	synctest.Wait()
	if got := testutil.ToFloat64(a.c.m.ae.swarms[aeSent]); got != sent {
		t.Errorf("a sent %v swarms once the copies agreed", got-sent)
	}
	if got := testutil.ToFloat64(a.c.m.ae.exchanges[aeInSync]); got < 1 {
		t.Error("no exchange found the copies in sync")
	}
}

func TestAntiEntropyRepairsOnlyTheOwners(t *testing.T) {
	synctest.Test(t, testAntiEntropyRepairsOnlyTheOwners)
}

// testAntiEntropyRepairsOnlyTheOwners diverges the copies of a and b in
// a three-node cluster where each swarm has two owners: a and b converge
// on the swarms they both own, and c receives none of them.
func testAntiEntropyRepairsOnlyTheOwners(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	tc.waitWhole(all...)
	a, b, c := tc.nodes["a"], tc.nodes["b"], tc.nodes["c"]
	v := a.c.View()
	var ihs []bittorrent.InfoHash
	for i := 0; len(ihs) < 40; i++ {
		ih := ihN(i)
		owners := v.OwnersOf(ih, nil)
		if len(owners) == 2 && owners[0] != v.Index("c") && owners[1] != v.Index("c") {
			ihs = append(ihs, ih)
			a.store.Apply([]bittorrent.Change{putAt(ih, 5, i, false)})
		}
	}
	time.Sleep(tc.cfg.RepairInterval)
	synctest.Wait()
	if diff := tc.differences(ihs, "a", "b"); len(diff) > 0 {
		t.Fatalf("%d swarms of a and b still differ: %v", len(diff), diff[:min(5, len(diff))])
	}
	for _, ih := range ihs {
		if _, _, ok := c.store.Swarm(ih, 1, nil); ok {
			t.Fatalf("c holds swarm %x, which it does not own", ih[:2])
		}
	}
	if got := testutil.ToFloat64(b.c.m.ae.swarms[aeReceived]); got != float64(len(ihs)) {
		t.Errorf("b received %v swarms, want %d", got, len(ihs))
	}
}

func TestAntiEntropyNeedsOneView(t *testing.T) { synctest.Test(t, testAntiEntropyNeedsOneView) }

// testAntiEntropyNeedsOneView gives b a view that places swarms otherwise
// than a's: their digests do not compare, so the exchange is refused and
// counted, and nothing moves.
func testAntiEntropyNeedsOneView(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a"}, []string{"a", "b"})
	var infos []ring.NodeInfo
	for _, n := range []*testNode{a, b} {
		infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: n.name, Datacenter: "dc1", Zone: n.name}, DataAddr: n.name, Boot: fmt.Sprint(n.boot)})
	}
	other, err := ring.NewView(infos, "b", 1, ring.Options{VNodes: 64}, 99) // one owner a swarm
	if err != nil {
		t.Fatal(err)
	}
	b.views.set(other)
	tc.waitWhole("a", "b")
	ih := ihN(7)
	a.store.Apply([]bittorrent.Change{putAt(ih, 6, 1, false)})
	time.Sleep(tc.cfg.RepairInterval)
	synctest.Wait()
	if got := testutil.ToFloat64(a.c.m.ae.exchanges[aeViewsDiffer]); got < 1 {
		t.Errorf("views_differ exchanges = %v, want at least one", got)
	}
	if got := testutil.ToFloat64(b.c.m.ae.swarms[aeReceived]); got != 0 {
		t.Errorf("b received %v swarms across differing views", got)
	}
}

func TestDroppedForwardsAreRepaired(t *testing.T) { synctest.Test(t, testDroppedForwardsAreRepaired) }

// testDroppedForwardsAreRepaired drops forwards the way a flood does: the
// link to the other owner is down and its queue overflows, so b never
// receives most of what a applied. Once the link is back, b holds every
// peer within one repair_interval, with no announce.
func testDroppedForwardsAreRepaired(t *testing.T) {
	tc := newTestCluster(t, 2, func(c *Config) {
		c.ForwardQueue, c.ForwardBatch = 8, 4
		c.ForwardRetry = 200 * time.Millisecond
	})
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	tc.waitWhole("a", "b")
	tc.net.Cut("a", "b")
	var changes []bittorrent.Change
	var ihs []bittorrent.InfoHash
	for i := range 50 {
		changes = append(changes, putAt(ihN(i), 7, i, i%2 == 0))
		ihs = append(ihs, ihN(i))
	}
	a.c.Apply(changes) // as a's swarm writer would, for 50 answered announces
	if dropped := testutil.ToFloat64(a.c.m.forwarded.WithLabelValues("queue_full")); dropped != 42 {
		t.Fatalf("queue_full drops = %v, want 42", dropped)
	}
	eventually.True(t, 5*time.Second, "a gives up the queued forwards", func() bool {
		return testutil.ToFloat64(a.c.m.forwarded.WithLabelValues("unreachable")) == 8
	})
	if diff := tc.differences(ihs, "a", "b"); len(diff) != 50 {
		t.Fatalf("%d swarms differ with the link down, want 50", len(diff))
	}
	tc.net.Heal()
	time.Sleep(tc.cfg.RepairInterval)
	synctest.Wait()
	if diff := tc.differences(ihs, "a", "b"); len(diff) > 0 {
		t.Fatalf("%d swarms still differ one repair_interval after the link came back: %v", len(diff), diff[:min(5, len(diff))])
	}
	if got := testutil.ToFloat64(b.c.m.ae.peersAdded); got != 50 {
		t.Errorf("b took %v peers from a's copies, want the 50 it missed", got)
	}
}
