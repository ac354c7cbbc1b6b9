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

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
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
