package cluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
)

// gatedTransport can hold back the handoff requests (MergeRequest) a node
// sends, to some destinations or all, until released or until the caller
// gives up: the late or stuck handoff of a real failover, made
// deterministic. Other requests pass untouched.
type gatedTransport struct {
	transport.Transport
	mu      sync.Mutex
	held    map[string]bool // destination addresses; "" holds every one
	release chan struct{}   // closed by open
	waiting atomic.Int32    // requests held right now
}

// hold holds handoff requests to addrs, or to every node without addrs.
func (g *gatedTransport) hold(addrs ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		g.held = map[string]bool{}
		g.release = make(chan struct{})
	}
	if len(addrs) == 0 {
		addrs = []string{""}
	}
	for _, a := range addrs {
		g.held[a] = true
	}
}

// open lets every held request and every later one through.
func (g *gatedTransport) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.release)
		g.held = nil
	}
}

func (g *gatedTransport) Call(ctx context.Context, addr string, req transport.Request) (transport.Reply, error) {
	if _, ok := req.(*transport.MergeRequest); ok {
		g.mu.Lock()
		held, release := g.held[""] || g.held[addr], g.release
		g.mu.Unlock()
		if held {
			g.waiting.Add(1)
			defer g.waiting.Add(-1)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, fmt.Errorf("cluster: call %s: held back: %w", addr, errors.Join(transport.ErrUnreachable, ctx.Err()))
			}
		}
	}
	return g.Transport.Call(ctx, addr, req)
}

func (tc *testCluster) holdHandoffs() {
	for _, n := range tc.nodes {
		n.gate.hold()
	}
}

func (tc *testCluster) openHandoffs() {
	for _, n := range tc.nodes {
		n.gate.open()
	}
}

// split cuts every link between left and right, and each side declares
// the other dead.
func (tc *testCluster) split(left, right []string) {
	tc.t.Helper()
	for _, l := range left {
		for _, r := range right {
			tc.net.Cut(l, r)
		}
	}
	tc.see(left, left)
	tc.see(right, right)
}

func union(sets ...swarmSet) swarmSet {
	out := swarmSet{}
	for _, s := range sets {
		for ih, peers := range s {
			if out[ih] == nil {
				out[ih] = maps.Clone(peers)
				continue
			}
			maps.Copy(out[ih], peers)
		}
	}
	return out
}

// TestAnswersStayWholeWhileHandoffIsLate is the read rule's specification:
// after each kind of membership change, with every handoff held back (as
// when the previous owner's pass is stuck on a node that is not answering),
// every node still answers every peer a surviving owner holds, and the
// peers announced after the change too. A node that has just gained a
// swarm holds only the announces forwarded to it since; answering from
// that copy alone hid most of the swarm until the handoff arrived.
func TestAnswersStayWholeWhileHandoffIsLate(t *testing.T) {
	tests := []struct {
		name  string
		dc    map[string]string
		nodes []string
		// change makes the membership change and returns the groups of
		// nodes that see each other after it, each announcing and
		// expected to answer for itself.
		change func(tc *testCluster) [][]string
	}{
		{
			name:  "datacenter cut off",
			dc:    map[string]string{"a1": "dc1", "a2": "dc1", "b1": "dc2", "b2": "dc2"},
			nodes: []string{"a1", "a2", "b1", "b2"},
			change: func(tc *testCluster) [][]string {
				left, right := []string{"a1", "a2"}, []string{"b1", "b2"}
				tc.split(left, right)
				return [][]string{left, right}
			},
		},
		{
			name:  "node killed",
			nodes: []string{"a", "b", "c"},
			change: func(tc *testCluster) [][]string {
				tc.net.Isolate("c")
				tc.nodes["c"].stop()
				delete(tc.nodes, "c")
				live := []string{"a", "b"}
				tc.see(live, live)
				return [][]string{live}
			},
		},
		{
			name:  "node joins",
			nodes: []string{"a", "b", "c"},
			change: func(tc *testCluster) [][]string {
				tc.start("d").gate.hold()
				all := []string{"a", "b", "c", "d"}
				tc.see(all, all)
				return [][]string{all}
			},
		},
		{
			name:  "node leaves",
			nodes: []string{"a", "b", "c", "d"},
			change: func(tc *testCluster) [][]string {
				all, rest := []string{"a", "b", "c", "d"}, []string{"a", "b", "c"}
				tc.see(all, rest)
				return [][]string{rest}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tc := newTestCluster(t, 2, nil)
				tc.dc, tc.every = tt.dc, tt.dc != nil
				before := tc.populated(tt.nodes, 40, 320)
				tc.waitSettled(tt.nodes...)

				tc.holdHandoffs()
				groups := tt.change(tc)
				for i, g := range groups {
					after := swarmSet{}
					tc.announce(after, g, 40, 80, 20+i)
					// Wait for the new peers to be answered: by then the nodes
					// that gained swarms hold the writes forwarded to them.
					tc.waitPresent(after, g...)
					if miss := tc.missing(before, false, g...); len(miss) > 0 {
						t.Fatalf("with the handoff late, %d peers announced before the change are missing, e.g. %v",
							len(miss), miss[:min(5, len(miss))])
					}
					// Whole at every moment, not once: keep reading a while.
					for range 5 {
						if miss := tc.missing(union(before, after), false, g...); len(miss) > 0 {
							t.Fatalf("%d peers missing, e.g. %v", len(miss), miss[:min(5, len(miss))])
						}
					}
				}
				tc.openHandoffs()
				for i, g := range groups {
					tc.waitSettled(g...)
					after := swarmSet{}
					tc.announce(after, g, 40, 40, 40+i)
					tc.waitPresent(union(before, after), g...)
				}
			})
		})
	}
}

// TestLocalCopiesTrustedAgainAfterTheWindow checks the other half of the
// read rule: once the handoff is done and a repair interval has passed, a
// node answers the swarms it gained from its own store again, without
// asking anyone.
func TestLocalCopiesTrustedAgainAfterTheWindow(t *testing.T) {
	synctest.Test(t, testLocalCopiesTrustedAgainAfterTheWindow)
}

func testLocalCopiesTrustedAgainAfterTheWindow(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	want := tc.populated(all, 30, 240)
	tc.waitSettled(all...)
	tc.start("d")
	all = append(all, "d")
	tc.see(all, all)
	tc.waitSettled(all...)
	d := tc.nodes["d"]
	v := d.c.View()
	var gained []int
	for ih := range want {
		owners := v.OwnersOf(ih, nil)
		if isOwner(owners, v.Self) {
			gained = append(gained, int(ih[0]))
		}
	}
	if len(gained) == 0 {
		t.Fatal("d gained no swarm; the test would prove nothing")
	}
	eventually.True(t, 10*time.Second, "d trusts its copies after a repair interval", d.c.Trusted)
	tc.waitVisible(want, "d")
	local := testutil.ToFloat64(d.c.m.reads.WithLabelValues("local"))
	fetched := testutil.ToFloat64(d.c.m.reads.WithLabelValues("fetched")) + testutil.ToFloat64(d.c.m.reads.WithLabelValues("cached"))
	for ih := range want {
		tc.visible("d", ih)
	}
	if got := testutil.ToFloat64(d.c.m.reads.WithLabelValues("local")) - local; got != float64(len(gained)) {
		t.Errorf("%v local reads, want one per swarm d owns (%d)", got, len(gained))
	}
	if got := testutil.ToFloat64(d.c.m.reads.WithLabelValues("fetched")) + testutil.ToFloat64(d.c.m.reads.WithLabelValues("cached")) - fetched; got != float64(len(want)-len(gained)) {
		t.Errorf("%v remote reads, want one per swarm d does not own (%d)", got, len(want)-len(gained))
	}
}

// TestHandoffNotBlockedByAnUnreachableNode: a handoff pass that is waiting
// on a node that does not answer ends as soon as that node leaves the view,
// so the next pass (here: the one that hands swarms back after the node is
// declared dead) does not wait out the 10-second request timeout.
func TestHandoffNotBlockedByAnUnreachableNode(t *testing.T) {
	synctest.Test(t, testHandoffNotBlockedByAnUnreachableNode)
}

func testHandoffNotBlockedByAnUnreachableNode(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	tc.populated(all, 40, 320)
	tc.waitSettled(all...)
	// d joins and, before it has received anything, stops answering: the
	// others' handoff requests to it hang as over a cut link.
	for _, n := range all {
		tc.nodes[n].gate.hold("d")
	}
	tc.start("d")
	four := append(slices.Clone(all), "d")
	tc.see(four, four)
	eventually.True(t, 5*time.Second, "a handoff request to d is in flight", func() bool {
		for _, n := range all {
			if tc.nodes[n].gate.waiting.Load() > 0 {
				return true
			}
		}
		return false
	})
	start := time.Now()
	tc.see(all, all)
	tc.waitSettled(all...)
	if took := time.Since(start); took >= mergeTimeout/2 {
		t.Errorf("settling after d was dropped took %s; the pass waited for d", took)
	}
}

// TestTrustState pins the trust bookkeeping with time as an input: which
// view is trusted after adopting views and settling at given moments.
func TestTrustState(t *testing.T) {
	mk := func(epoch uint64, names ...string) *ring.View {
		var infos []ring.NodeInfo
		for _, n := range names {
			infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: n}, DataAddr: n, Boot: "1"})
		}
		v, err := ring.NewView(infos, "a", 2, ring.Options{VNodes: 16}, epoch)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	t0 := time.Unix(1000, 0)
	const window = 10 * time.Second
	v1, v2, v3 := mk(1, "a", "b", "c"), mk(2, "a", "b", "c", "d"), mk(3, "a", "b")
	tests := []struct {
		name  string
		steps func(tr *trust) []time.Duration // what each settle returned
		want  *ring.View                      // trusted at the end
		wants []time.Duration
	}{
		{"nothing is trusted before a window has passed", func(tr *trust) []time.Duration {
			tr.adopt(v1, t0)
			return []time.Duration{tr.settle(v1, t0.Add(4*time.Second), window)}
		}, nil, []time.Duration{6 * time.Second}},
		{"a view current for a window is trusted", func(tr *trust) []time.Duration {
			tr.adopt(v1, t0)
			return []time.Duration{tr.settle(v1, t0.Add(window), window), tr.settle(v1, t0.Add(2*window), window)}
		}, v1, []time.Duration{0, -1}},
		{"a change restarts the window and keeps the old trust", func(tr *trust) []time.Duration {
			tr.adopt(v1, t0)
			tr.settle(v1, t0.Add(window), window)
			tr.adopt(v2, t0.Add(20*time.Second))
			return []time.Duration{tr.settle(v2, t0.Add(25*time.Second), window)}
		}, v1, []time.Duration{5 * time.Second}},
		{"settling a view that is no longer current does nothing", func(tr *trust) []time.Duration {
			tr.adopt(v1, t0)
			tr.adopt(v2, t0.Add(time.Second))
			return []time.Duration{tr.settle(v1, t0.Add(time.Hour), window)}
		}, nil, []time.Duration{-1}},
		{"too many changes in one window forget the trusted view", func(tr *trust) []time.Duration {
			tr.adopt(v1, t0)
			tr.settle(v1, t0.Add(window), window)
			for i := range maxTrustViews {
				tr.adopt([]*ring.View{v2, v3}[i%2], t0.Add(window+time.Duration(i)*time.Millisecond))
			}
			return nil
		}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tr trust
			got := tt.steps(&tr)
			if !slices.Equal(got, tt.wants) {
				t.Errorf("settle returned %v, want %v", got, tt.wants)
			}
			if s := tr.cur.Load(); s.trusted != tt.want {
				t.Errorf("trusted view %v, want %v", s.trusted, tt.want)
			}
		})
	}
}

// TestLocalAlone is the read rule's table: whether node a's own copy
// answers alone, for swarms it kept, gained, received or lost and regained.
func TestLocalAlone(t *testing.T) {
	mk := func(self string, names ...string) *ring.View {
		var infos []ring.NodeInfo
		for _, n := range names {
			infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: n}, DataAddr: n, Boot: "1"})
		}
		v, err := ring.NewView(infos, self, 2, ring.Options{VNodes: 16}, 1)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	abc, abcd, ab, alone := mk("a", "a", "b", "c"), mk("a", "a", "b", "c", "d"), mk("a", "a", "b"), mk("a", "a")
	// find returns a swarm for which a's ownership in each view is as given.
	find := func(views []*ring.View, owns []bool) bittorrent.InfoHash {
		for i := 0; i < 1<<16; i++ {
			ih := bittorrent.InfoHash{byte(i), byte(i >> 8), 0x7a}
			ok := true
			for k, v := range views {
				ok = ok && v.Owns(ih, nil) == owns[k]
			}
			if ok {
				return ih
			}
		}
		t.Fatalf("no swarm with ownership %v", owns)
		return bittorrent.InfoHash{}
	}
	kept := find([]*ring.View{abcd, abc}, []bool{true, true})
	gained := find([]*ring.View{abcd, abc}, []bool{false, true}) // d left
	notMine := find([]*ring.View{abcd}, []bool{false})
	regained := find([]*ring.View{abc, abcd, ab}, []bool{true, false, true})
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name    string
		history []*ring.View // adopted in turn; the first is trusted
		ih      bittorrent.InfoHash
		recv    bool
		want    bool
	}{
		{"steady owner", []*ring.View{abc}, kept, false, true},
		{"steady non-owner", []*ring.View{abcd}, notMine, false, false},
		{"kept through a leave", []*ring.View{abcd, abc}, kept, false, true},
		{"gained in a leave", []*ring.View{abcd, abc}, gained, false, false},
		{"gained and handed over", []*ring.View{abcd, abc}, gained, true, true},
		{"lost and gained back", []*ring.View{abc, abcd, ab}, regained, false, false},
		{"alone", []*ring.View{alone}, kept, false, true},
		// c was cut off and took writes of its own: nothing is whole.
		{"a member comes back", []*ring.View{abc, ab, abc}, find([]*ring.View{abc, ab}, []bool{true, true}), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Cluster{}
			c.trust.adopt(tt.history[0], t0)
			c.trust.settle(tt.history[0], t0.Add(time.Minute), time.Second)
			for _, v := range tt.history[1:] {
				c.trust.adopt(v, t0.Add(2*time.Minute))
			}
			if tt.recv {
				c.trust.received(func(int) bittorrent.InfoHash { return tt.ih }, 1)
			}
			v := tt.history[len(tt.history)-1]
			if got := c.localAlone(v, tt.ih, v.OwnersOf(tt.ih, nil)); got != tt.want {
				t.Errorf("localAlone = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("nothing trusted yet", func(t *testing.T) {
		c := &Cluster{}
		c.trust.adopt(abc, t0)
		if c.localAlone(abc, kept, abc.OwnersOf(kept, nil)) {
			t.Error("a node that has just started trusts its copy")
		}
	})
}

// TestBatchedReadsStayWholeWhileHandoffIsLate is the read rule for a
// batch: after a node is killed, with every handoff held back, a
// survivor's Prefetch of every swarm (as a scrape or a UDP batch does)
// must fetch the swarms it gained, from the other owners and the previous
// ones, and its reads must answer every peer, those announced before the
// change and those forwarded to it since.
func TestBatchedReadsStayWholeWhileHandoffIsLate(t *testing.T) {
	synctest.Test(t, testBatchedReadsStayWholeWhileHandoffIsLate)
}

func testBatchedReadsStayWholeWhileHandoffIsLate(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	before := tc.populated(all, 40, 320)
	tc.waitSettled(all...)
	tc.holdHandoffs()
	tc.net.Isolate("c")
	tc.nodes["c"].stop()
	delete(tc.nodes, "c")
	live := []string{"a", "b"}
	tc.see(live, live)
	after := swarmSet{}
	tc.announce(after, live, 40, 80, 20)
	tc.waitPresent(after, live...)
	want := union(before, after)
	ihs := make([]bittorrent.InfoHash, 0, len(want))
	for ih := range want {
		ihs = append(ihs, ih)
	}
	for _, name := range live {
		c := tc.nodes[name].c
		if c.wholeIn(c.View()) {
			t.Fatalf("%s trusts its copies while its gained swarms' handoffs are held", name)
		}
		var gained int
		v := c.View()
		for _, ih := range ihs {
			if !c.localAlone(v, ih, v.OwnersOf(ih, nil)) {
				gained++
			}
		}
		if gained == 0 {
			t.Fatalf("%s gained no swarm; the test needs some", name)
		}
		time.Sleep(2 * tc.cfg.ReadCacheTTL) // let earlier copies go stale
		prefetched := testutil.ToFloat64(c.m.prefetches)
		c.Prefetch(ihs)
		if got := testutil.ToFloat64(c.m.prefetches) - prefetched; int(got) != gained {
			t.Errorf("%s prefetched %v swarms; want the %d it gained", name, got, gained)
		}
		if miss := tc.missing(want, false, name); len(miss) > 0 {
			t.Errorf("after a batch, %d peers missing, e.g. %v", len(miss), miss[:min(5, len(miss))])
		}
	}
	tc.openHandoffs()
	tc.waitSettled(live...)
}
