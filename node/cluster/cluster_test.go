package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// scriptedViews is a Views whose view the test sets, standing in for
// membership so a test decides who sees whom.
type scriptedViews struct {
	v       atomic.Pointer[ring.View]
	changed chan struct{}
}

func (s *scriptedViews) View() *ring.View         { return s.v.Load() }
func (s *scriptedViews) Changed() <-chan struct{} { return s.changed }
func (s *scriptedViews) set(v *ring.View) {
	s.v.Store(v)
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

type testNode struct {
	name  string
	boot  int
	store *store.Memory
	views *scriptedViews
	c     *Cluster
	reg   *prometheus.Registry
	gate  *gatedTransport // holds back this node's handoff requests on demand
}

// testCluster runs nodes over a MemNet with scripted membership.
type testCluster struct {
	t        *testing.T
	net      *transport.MemNet
	cfg      Config
	replicas int
	nodes    map[string]*testNode
	epoch    uint64
	boots    int
	dc       map[string]string // node name → datacenter; "dc1" when absent
	every    bool              // every_datacenter placement
	// wrap, if set, stands between a node and its transport.
	wrap func(name string, tr transport.Transport) transport.Transport
}

// newTestCluster is called inside a synctest bubble (each test is
// synctest.Test around its lower-case twin): the nodes talk over the
// in-memory transport, so every timer (forward delay and retry, read
// timeout and cache TTL, repair interval, handoff grace) runs on the fake
// clock and a test waits out seconds of cluster time in milliseconds.
func newTestCluster(t *testing.T, replicas int, mutate func(*Config)) *testCluster {
	cfg := DefaultConfig()
	cfg.ForwardDelay = time.Millisecond
	cfg.ForwardRetry = 500 * time.Millisecond
	cfg.ReadTimeout = 200 * time.Millisecond // generous: -race on two cores
	cfg.RepairInterval = time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	return &testCluster{t: t, net: transport.NewMemNet(), cfg: cfg, replicas: replicas, nodes: map[string]*testNode{}}
}

// start starts a node with an empty store; the same name again is a
// restart with a new boot.
func (tc *testCluster) start(name string) *testNode {
	t := tc.t
	t.Helper()
	st, err := store.NewMemory(store.DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tc.boots++
	n := &testNode{name: name, boot: tc.boots, store: st, views: &scriptedViews{changed: make(chan struct{}, 1)}, reg: prometheus.NewRegistry()}
	n.views.v.Store(tc.view(name, []string{name}, n))
	tr := tc.net.Transport(name)
	if tc.wrap != nil {
		tr = tc.wrap(name, tr)
	}
	n.gate = &gatedTransport{Transport: tr}
	n.c, err = New(tc.cfg, Options{Store: st, Transport: n.gate, Views: n.views, Registerer: n.reg, Log: zaptest.NewLogger(t).Named(name)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.c.Start(); err != nil {
		t.Fatal(err)
	}
	tc.nodes[name] = n
	t.Cleanup(func() { n.stop() })
	return n
}

func (n *testNode) stop() {
	_ = n.c.Close()
	_ = n.store.Close()
}

// view builds self's view of members. newcomer supplies the boot of a node
// not yet in tc.nodes.
func (tc *testCluster) view(self string, members []string, newcomer *testNode) *ring.View {
	tc.t.Helper()
	var infos []ring.NodeInfo
	for _, m := range members {
		n := tc.nodes[m]
		if newcomer != nil && newcomer.name == m {
			n = newcomer
		}
		dc := tc.dc[m]
		if dc == "" {
			dc = "dc1"
		}
		infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: m, Datacenter: dc, Zone: m}, DataAddr: m, Boot: fmt.Sprint(n.boot)})
	}
	tc.epoch++
	v, err := ring.NewView(infos, self, tc.replicas, ring.Options{VNodes: 64, EveryDatacenter: tc.every}, tc.epoch)
	if err != nil {
		tc.t.Fatal(err)
	}
	return v
}

// see gives each of observers the view over members and waits until
// their data planes route by it.
func (tc *testCluster) see(observers, members []string) {
	tc.t.Helper()
	for _, o := range observers {
		tc.nodes[o].views.set(tc.view(o, members, nil))
	}
	for _, o := range observers {
		n := tc.nodes[o]
		eventually.True(tc.t, 5*time.Second, o+" adopts its new view", func() bool { return n.c.View() == n.views.View() })
	}
}

// waitSettled waits until every listed node has run a complete handoff
// pass for its current view and has nothing queued.
func (tc *testCluster) waitSettled(names ...string) {
	tc.t.Helper()
	eventually.True(tc.t, 15*time.Second, fmt.Sprintf("%v settle", names), func() bool {
		for _, name := range names {
			c := tc.nodes[name].c
			if c.settled.Load() != c.View() || c.queued() != 0 {
				return false
			}
		}
		return true
	})
}

var reader = netip.MustParseAddrPort("192.0.2.1:1")

// visible is what node name answers for ih: the peers' addresses and the
// counts.
func (tc *testCluster) visible(name string, ih bittorrent.InfoHash) (map[netip.AddrPort]bool, bittorrent.Counts) {
	peers, counts, _ := tc.nodes[name].c.AnnouncePeers(ih, reader, false, 1000, nil)
	out := make(map[netip.AddrPort]bool, len(peers))
	for _, p := range peers {
		out[p.Addr] = true
	}
	return out, counts
}

// swarmSet is what the test announced: swarm → peer addresses.
type swarmSet map[bittorrent.InfoHash]map[netip.AddrPort]bool

func ihN(i int) bittorrent.InfoHash {
	return bittorrent.InfoHash{byte(i), byte(i >> 8), 0xca, 0xfe}
}

// announce applies nPeers new peers over swarms through the given nodes in
// turn, as their swarm-write hooks would, recording them in want.
func (tc *testCluster) announce(want swarmSet, via []string, swarms, nPeers, base int) {
	for i := range nPeers {
		ih := ihN(i % swarms)
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(base), byte(i >> 8), byte(i)}), 6881)
		ch := bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: i%3 == 0, Peer: bittorrent.Peer{Addr: addr, ID: bittorrent.PeerID{byte(i)}}}
		tc.nodes[via[i%len(via)]].c.Apply([]bittorrent.Change{ch})
		if want[ih] == nil {
			want[ih] = map[netip.AddrPort]bool{}
		}
		want[ih][addr] = true
	}
}

// missing lists, per observer, the announced peers it does not show.
func (tc *testCluster) missing(want swarmSet, exact bool, observers ...string) []string {
	var out []string
	for _, o := range observers {
		for ih, peers := range want {
			got, counts := tc.visible(o, ih)
			for addr := range peers {
				if !got[addr] {
					out = append(out, fmt.Sprintf("%s lacks %s in %x", o, addr, ih[:2]))
				}
			}
			if exact && int(counts.Seeders+counts.Leechers) != len(peers) {
				out = append(out, fmt.Sprintf("%s counts %d peers in %x, want %d", o, counts.Seeders+counts.Leechers, ih[:2], len(peers)))
			}
		}
	}
	return out
}

// waitVisible waits until observers show exactly the peers in want.
func (tc *testCluster) waitVisible(want swarmSet, observers ...string) {
	tc.t.Helper()
	tc.waitFor(want, true, observers...)
}

// waitPresent waits until observers show at least the peers in want.
func (tc *testCluster) waitPresent(want swarmSet, observers ...string) {
	tc.t.Helper()
	tc.waitFor(want, false, observers...)
}

func (tc *testCluster) waitFor(want swarmSet, exact bool, observers ...string) {
	tc.t.Helper()
	eventually.NoError(tc.t, 15*time.Second, "every peer where it belongs", func() error {
		if last := tc.missing(want, exact, observers...); len(last) > 0 {
			return fmt.Errorf("%d problems, e.g. %v", len(last), last[:min(5, len(last))])
		}
		return nil
	})
}

// checkPlacement verifies every swarm is stored on exactly its owners.
func (tc *testCluster) checkPlacement(want swarmSet, live []string) {
	tc.t.Helper()
	v := tc.nodes[live[0]].c.View()
	for ih := range want {
		owners := map[string]bool{}
		for _, o := range v.OwnersOf(ih, nil) {
			owners[v.Members()[o].Name] = true
		}
		for _, name := range live {
			_, _, has := tc.nodes[name].store.Swarm(ih, 1, nil)
			if has != owners[name] {
				tc.t.Errorf("swarm %x on %s: stored %v, owner %v", ih[:2], name, has, owners[name])
			}
		}
	}
}

// populated starts nodes that all see each other and announces nPeers
// over swarms through them, returning what was announced once every node
// shows it.
func (tc *testCluster) populated(all []string, swarms, nPeers int) swarmSet {
	tc.t.Helper()
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	want := swarmSet{}
	tc.announce(want, all, swarms, nPeers, 1)
	tc.waitVisible(want, all...)
	return want
}

func TestEveryPeerVisibleFromEveryNode(t *testing.T) {
	synctest.Test(t, testEveryPeerVisibleFromEveryNode)
}

func testEveryPeerVisibleFromEveryNode(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	want := tc.populated(all, 40, 400)
	tc.waitSettled(all...)
	tc.checkPlacement(want, all)

	reads := testutil.ToFloat64(tc.nodes["a"].c.m.reads.WithLabelValues("fetched")) + testutil.ToFloat64(tc.nodes["a"].c.m.reads.WithLabelValues("cached"))
	if reads == 0 {
		t.Error("node a never read a swarm it does not own from an owner")
	}
	if ok := testutil.ToFloat64(tc.nodes["a"].c.m.forwarded.WithLabelValues("ok")); ok == 0 {
		t.Error("node a forwarded nothing")
	}
}

func TestNodeFailureLosesNoPeer(t *testing.T) { synctest.Test(t, testNodeFailureLosesNoPeer) }

func testNodeFailureLosesNoPeer(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c"}
	want := tc.populated(all, 40, 400)

	// c crashes: it vanishes from the network, and the others' failure
	// detection drops it from their views.
	tc.net.Isolate("c")
	tc.nodes["c"].stop()
	delete(tc.nodes, "c")
	live := []string{"a", "b"}
	// Writes keep coming while the survivors have not noticed yet; they
	// must reach the new owners once the view changes.
	tc.announce(want, live, 40, 100, 2)
	tc.see(live, live)
	tc.waitSettled(live...)
	tc.waitVisible(want, live...)
	tc.checkPlacement(want, live)
}

func TestGracefulLeaveAndRollingRestart(t *testing.T) {
	synctest.Test(t, testGracefulLeaveAndRollingRestart)
}

func testGracefulLeaveAndRollingRestart(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c", "d"}
	want := tc.populated(all, 60, 600)

	for round, name := range all {
		// Graceful leave: everyone, the leaver included, drops it from the
		// ring; it hands its swarms over and drains before going.
		rest := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == name })
		tc.see(all, rest)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := tc.nodes[name].c.Drain(ctx); err != nil {
			t.Fatalf("round %d: drain %s: %v", round, name, err)
		}
		cancel()
		if n := tc.nodes[name].store.Stats().Swarms; n != 0 {
			t.Fatalf("round %d: %s still holds %d swarms after draining", round, name, n)
		}
		tc.net.Isolate(name)
		tc.nodes[name].stop()
		delete(tc.nodes, name)
		tc.waitSettled(rest...)
		tc.waitVisible(want, rest...)
		tc.checkPlacement(want, rest)

		// It comes back empty, under the same name, and is fed again.
		tc.net.Heal()
		tc.start(name)
		tc.see(all, all)
		tc.announce(want, all, 60, 40, 10+round)
		tc.waitSettled(all...)
		tc.waitVisible(want, all...)
		tc.checkPlacement(want, all)
	}
}

func TestJoinsKeepEverySwarmVisible(t *testing.T) { synctest.Test(t, testJoinsKeepEverySwarmVisible) }

func testJoinsKeepEverySwarmVisible(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	members := []string{"a", "b", "c"}
	for _, n := range members {
		tc.start(n)
	}
	tc.see(members, members)
	want := swarmSet{}
	tc.announce(want, members, 80, 800, 1)
	tc.waitVisible(want, members...)
	for i, joiner := range []string{"d", "e"} {
		tc.start(joiner)
		members = append(members, joiner)
		tc.see(members, members)
		tc.announce(want, members, 80, 50, 20+i)
		tc.waitSettled(members...)
		tc.waitVisible(want, members...)
		tc.checkPlacement(want, members)
	}
	if sent := testutil.ToFloat64(tc.nodes["a"].c.m.handoff.WithLabelValues("sent")) +
		testutil.ToFloat64(tc.nodes["b"].c.m.handoff.WithLabelValues("sent")) +
		testutil.ToFloat64(tc.nodes["c"].c.m.handoff.WithLabelValues("sent")); sent == 0 {
		t.Error("no swarm was handed to the joiners")
	}
}

func TestPartitionAndHeal(t *testing.T) { synctest.Test(t, testPartitionAndHeal) }

func testPartitionAndHeal(t *testing.T) {
	tc := newTestCluster(t, 2, nil)
	all := []string{"a", "b", "c", "d"}
	want := tc.populated(all, 30, 300)

	left, right := []string{"a", "b"}, []string{"c", "d"}
	tc.split(left, right)
	wantLeft, wantRight := swarmSet{}, swarmSet{}
	tc.announce(wantLeft, left, 30, 60, 2)
	tc.announce(wantRight, right, 30, 60, 3)
	// Both sides keep answering, each with what it has: at least its own
	// side's new peers.
	tc.waitSettled(all...)
	tc.waitPresent(wantLeft, left...)
	tc.waitPresent(wantRight, right...)
	for _, n := range all {
		for ih := range want {
			done := make(chan struct{})
			go func() { tc.visible(n, ih); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Fatalf("%s did not answer for %x during the partition", n, ih[:2])
			}
		}
	}

	tc.net.Heal()
	tc.see(all, all)
	for _, side := range []swarmSet{wantLeft, wantRight} {
		for ih, peers := range side {
			for addr := range peers {
				if want[ih] == nil {
					want[ih] = map[netip.AddrPort]bool{}
				}
				want[ih][addr] = true
			}
		}
	}
	tc.waitSettled(all...)
	tc.waitVisible(want, all...)
	tc.checkPlacement(want, all)
}

func TestForwardDropsAreCounted(t *testing.T) { synctest.Test(t, testForwardDropsAreCounted) }

func testForwardDropsAreCounted(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.ForwardQueue, c.ForwardBatch = 8, 4
		c.ForwardRetry = 200 * time.Millisecond
	})
	a, _ := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	tc.net.Cut("a", "b")
	// Only swarms b owns, so every change must be queued for b.
	v := a.c.View()
	var changes []bittorrent.Change
	for i := 0; len(changes) < 50; i++ {
		ih := ihN(i)
		if v.OwnersOf(ih, nil)[0] == v.Index("b") {
			changes = append(changes, bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort("10.0.0.1:1")}})
		}
	}
	a.c.Apply(changes)
	full := testutil.ToFloat64(a.c.m.forwarded.WithLabelValues("queue_full"))
	if full != 42 {
		t.Errorf("queue_full drops = %v, want 42 (50 changes, room for 8)", full)
	}
	eventually.True(t, 5*time.Second, "queued changes given up as unreachable", func() bool {
		return testutil.ToFloat64(a.c.m.forwarded.WithLabelValues("unreachable")) == 8
	})
	if d := a.c.QueueDepths()["b"]; d != 0 {
		t.Errorf("queue depth for b = %d after giving up, want 0", d)
	}
	if n := testutil.ToFloat64(a.c.m.forwarded.WithLabelValues("ok")); n != 0 {
		t.Errorf("ok = %v over a cut link", n)
	}
	if got := testutil.CollectAndCount(a.reg, "karuta_cluster_forward_queue_depth"); got != 1 {
		t.Errorf("forward_queue_depth series = %d, want 1", got)
	}
	// What could not be sent is kept on a, not lost, and reaches b once
	// the link is back.
	for _, ch := range changes[:8] {
		if got := a.store.Counts(ch.InfoHash); got.Leechers != 1 {
			t.Errorf("swarm %x: a keeps %+v of the change it could not forward, want the leecher", ch.InfoHash[:4], got)
		}
	}
	tc.net.Heal()
	eventually.True(t, 10*time.Second, "the kept changes reach b and leave a", func() bool {
		for _, ch := range changes[:8] {
			_, _, onA := a.store.Swarm(ch.InfoHash, 1, nil)
			if onA || tc.nodes["b"].store.Counts(ch.InfoHash).Leechers != 1 {
				return false
			}
		}
		return true
	})
}

func TestReadFallsBackWhenOwnersAreDown(t *testing.T) {
	synctest.Test(t, testReadFallsBackWhenOwnersAreDown)
}

func testReadFallsBackWhenOwnersAreDown(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) {
		c.ReadCacheTTL = 20 * time.Millisecond
		c.ReadTimeout = 50 * time.Millisecond
	})
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	v := a.c.View()
	var ih bittorrent.InfoHash
	for i := 0; ; i++ {
		if ih = ihN(i); v.OwnersOf(ih, nil)[0] == v.Index("b") {
			break
		}
	}
	peer := netip.MustParseAddrPort("10.0.0.7:7")
	b.store.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Seeder: true, Peer: bittorrent.Peer{Addr: peer}}})
	if got, counts := tc.visible("a", ih); !got[peer] || counts.Seeders != 1 {
		t.Fatalf("a sees %v %+v, want the seeder", got, counts)
	}
	tc.net.Cut("a", "b")
	time.Sleep(30 * time.Millisecond) // fake clock: past the TTL
	start := time.Now()
	got, counts := tc.visible("a", ih)
	if !got[peer] || counts.Seeders != 1 {
		t.Errorf("with the owner cut off a answers %v %+v, want its older copy", got, counts)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("answer took %s with the owner unreachable", took)
	}
	if n := testutil.ToFloat64(a.c.m.reads.WithLabelValues("stale")); n != 1 {
		t.Errorf("stale reads = %v, want 1", n)
	}
	// A swarm never fetched: nothing to fall back on but the local store.
	var other bittorrent.InfoHash
	for i := 1000; ; i++ {
		if other = ihN(i); v.OwnersOf(other, nil)[0] == v.Index("b") {
			break
		}
	}
	if got, counts := tc.visible("a", other); len(got) != 0 || counts != (bittorrent.Counts{}) {
		t.Errorf("unknown swarm: %v %+v", got, counts)
	}
	if n := testutil.ToFloat64(a.c.m.reads.WithLabelValues("failed")); n != 1 {
		t.Errorf("failed reads = %v, want 1", n)
	}
}

func TestChooseFromSnapshot(t *testing.T) {
	mk := func(s string, seeder bool) transport.SwarmPeer {
		return transport.SwarmPeer{Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort(s)}, Seeder: seeder}
	}
	snap := newSnapshot(&transport.FetchReply{Counts: bittorrent.Counts{Seeders: 2, Leechers: 3}, Peers: []transport.SwarmPeer{
		mk("10.0.0.1:1", true), mk("10.0.0.2:1", true),
		mk("10.0.0.3:1", false), mk("10.0.0.4:1", false), mk("10.0.0.5:1", false),
		mk("[2001:db8::1]:1", true),
	}}, time.Now())
	tests := []struct {
		name      string
		announcer string
		seeder    bool
		n         int
		wantLen   int
		wantFirst map[string]bool // the first min(n, len) peers come from here
		wantState bittorrent.PeerState
	}{
		{"leecher gets seeders first", "10.9.9.9:1", false, 2, 2, map[string]bool{"10.0.0.1:1": true, "10.0.0.2:1": true}, bittorrent.Absent},
		{"seeder gets leechers first", "10.9.9.9:1", true, 3, 3, map[string]bool{"10.0.0.3:1": true, "10.0.0.4:1": true, "10.0.0.5:1": true}, bittorrent.Absent},
		{"never the announcer", "10.0.0.3:1", false, 10, 4, nil, bittorrent.Leeching},
		{"mapped announcer is found", "[::ffff:10.0.0.1]:1", true, 10, 4, nil, bittorrent.Seeding},
		{"ipv6 gets ipv6", "[2001:db8::9]:1", false, 10, 1, map[string]bool{"[2001:db8::1]:1": true}, bittorrent.Absent},
		{"zero wanted", "10.9.9.9:1", false, 0, 0, nil, bittorrent.Absent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 20 {
				peers, state := snap.choose(netip.MustParseAddrPort(tt.announcer), tt.seeder, tt.n, nil)
				if len(peers) != tt.wantLen || state != tt.wantState {
					t.Fatalf("got %d peers, state %v; want %d, %v", len(peers), state, tt.wantLen, tt.wantState)
				}
				seen := map[netip.AddrPort]bool{}
				for i, p := range peers {
					if seen[p.Addr] {
						t.Fatalf("peer %s twice", p.Addr)
					}
					seen[p.Addr] = true
					if samePeer(p.Addr, netip.MustParseAddrPort(tt.announcer)) || p.Addr.String() == tt.announcer {
						t.Fatalf("announcer given to itself")
					}
					if tt.wantFirst != nil && i < len(tt.wantFirst) && !tt.wantFirst[p.Addr.String()] {
						t.Fatalf("peer %d is %s, want one of %v first", i, p.Addr, tt.wantFirst)
					}
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.ForwardBatch = 0 }, "forward_batch: 0 is out of range"},
		{func(c *Config) { c.ForwardQueue = 10 }, "forward_queue: 10 is smaller than forward_batch"},
		{func(c *Config) { c.ReadTimeout = 0 }, "read_timeout: 0s is out of range"},
		{func(c *Config) { c.ReadMaxPeers = -1 }, "read_max_peers: -1 is out of range"},
		{func(c *Config) { c.RepairInterval = time.Millisecond }, "repair_interval: 1ms is out of range"},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.mutate(&c)
		if err := c.Validate(); err == nil || !contains(err.Error(), tt.want) {
			t.Errorf("Validate() = %v, want %q", err, tt.want)
		}
	}
}

func contains(s, sub string) bool {
	return len(sub) <= len(s) && (s[:len(sub)] == sub || contains(s[1:], sub))
}

// Changes queued for a node that drops out of a view are re-routed, not
// lost, even while post-hook workers keep applying.
func TestApplyDuringViewChanges(t *testing.T) { synctest.Test(t, testApplyDuringViewChanges) }

func testApplyDuringViewChanges(t *testing.T) {
	// 160 peers a swarm: a reader must be able to see every peer.
	tc := newTestCluster(t, 2, func(c *Config) { c.ReadMaxPeers = 200 })
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	a := tc.nodes["a"].c
	want := make([]swarmSet, 4)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range want {
		want[w] = swarmSet{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// 4 workers × 800 peers over 20 swarms stays under
			// read_max_peers (set above), so a reader can see every peer.
			for i := 0; i < 800; i++ {
				time.Sleep(200 * time.Microsecond) // fake clock: paced across the view flaps
				select {
				case <-stop:
					return
				default:
				}
				ih := ihN(i % 20)
				addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(100 + w), byte(i >> 8), byte(i)}), 6881)
				a.Apply([]bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{Addr: addr}}})
				if want[w][ih] == nil {
					want[w][ih] = map[netip.AddrPort]bool{}
				}
				want[w][ih][addr] = true
			}
		}()
	}
	for range 5 { // 20 ms apart on the fake clock, while the writers run
		tc.see([]string{"a"}, []string{"a", "b"})
		time.Sleep(20 * time.Millisecond)
		tc.see([]string{"a"}, all)
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	merged := swarmSet{}
	for _, ws := range want {
		for ih, peers := range ws {
			if merged[ih] == nil {
				merged[ih] = map[netip.AddrPort]bool{}
			}
			for p := range peers {
				merged[ih][p] = true
			}
		}
	}
	tc.waitSettled(all...)
	tc.waitVisible(merged, all...)
	if n := testutil.ToFloat64(a.m.forwarded.WithLabelValues("queue_full")) + testutil.ToFloat64(a.m.forwarded.WithLabelValues("unreachable")); n != 0 {
		t.Errorf("%v changes dropped", n)
	}
}

// A swarm larger than one handoff request arrives whole, in parts.
func TestHandoffMovesLargeSwarm(t *testing.T) { synctest.Test(t, testHandoffMovesLargeSwarm) }

func testHandoffMovesLargeSwarm(t *testing.T) {
	tc := newTestCluster(t, 1, nil)
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	v := a.c.View()
	var ih bittorrent.InfoHash
	for i := 0; ; i++ {
		if ih = ihN(i); v.OwnersOf(ih, nil)[0] == v.Index("b") {
			break
		}
	}
	const n = mergePeers + mergePeers/2
	changes := make([]bittorrent.Change, n)
	for i := range changes {
		changes[i] = bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: i%2 == 0,
			Peer: bittorrent.Peer{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1)}}
	}
	// A stray: a holds a swarm it does not own, as after a write from a
	// node with an older view.
	a.store.Apply(changes)
	a.store.MergeSnatches(ih, 7)
	a.c.requestHandoff()
	eventually.True(t, 10*time.Second, "the swarm moves to b", func() bool {
		_, _, onA := a.store.Swarm(ih, 1, nil)
		return !onA && b.store.Counts(ih) == bittorrent.Counts{Seeders: n / 2, Leechers: n / 2, Snatches: 7}
	})
	if sent := testutil.ToFloat64(a.c.m.handoff.WithLabelValues("sent")); sent < 2 {
		t.Errorf("handoff sent %v parts, want at least 2 for %d peers", sent, n)
	}
}

// A write that reaches a node that does not own the swarm (its sender
// routed by another view) moves on to the owner at once, not at the next
// repair.
func TestStrayWriteMovesOnPromptly(t *testing.T) { synctest.Test(t, testStrayWriteMovesOnPromptly) }

func testStrayWriteMovesOnPromptly(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.RepairInterval = time.Hour })
	a, b := tc.start("a"), tc.start("b")
	tc.see([]string{"a", "b"}, []string{"a", "b"})
	tc.waitSettled("a", "b")
	v := a.c.View()
	var ih bittorrent.InfoHash
	for i := 0; ; i++ {
		if ih = ihN(i); v.OwnersOf(ih, nil)[0] == v.Index("a") {
			break
		}
	}
	peer := bittorrent.Peer{Addr: netip.MustParseAddrPort("10.3.3.3:3")}
	// As a node whose view had b as the owner would send it.
	if _, err := a.c.tr.Call(context.Background(), "b", &transport.ApplyRequest{Changes: []bittorrent.Change{{InfoHash: ih, Op: bittorrent.OpPut, Peer: peer}}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 5*time.Second, "the stray write reaches its owner a and leaves b", func() bool {
		_, _, onB := b.store.Swarm(ih, 1, nil)
		return !onB && a.store.Counts(ih).Leechers == 1
	})
}

func TestMergeReplies(t *testing.T) {
	p := func(s string, seeder bool) transport.SwarmPeer {
		return transport.SwarmPeer{Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort(s)}, Seeder: seeder}
	}
	a := &transport.FetchReply{Counts: bittorrent.Counts{Seeders: 2, Leechers: 1, Snatches: 5}, Peers: []transport.SwarmPeer{
		p("10.0.0.1:1", true), p("10.0.0.2:1", true), p("10.0.0.3:1", false),
	}}
	b := &transport.FetchReply{Counts: bittorrent.Counts{Seeders: 2, Leechers: 2, Snatches: 4}, Peers: []transport.SwarmPeer{
		p("[::ffff:10.0.0.1]:1", true), // the same peer, written mapped
		p("10.0.0.4:1", false), p("10.0.0.5:1", false), p("[2001:db8::1]:1", true),
	}}
	got := mergeReplies(a, b, 4)
	if want := (bittorrent.Counts{Seeders: 2, Leechers: 2, Snatches: 5}); got.Counts != want {
		t.Errorf("counts = %+v, want %+v", got.Counts, want)
	}
	var addrs []string
	for _, sp := range got.Peers {
		addrs = append(addrs, sp.Addr.String())
	}
	// Four IPv4 at most (10.0.0.5 is cut), the duplicate once, IPv6 apart.
	want := "10.0.0.1:1 10.0.0.2:1 10.0.0.3:1 10.0.0.4:1 [2001:db8::1]:1"
	if fmt.Sprint(strings.Join(addrs, " ")) != want {
		t.Errorf("peers = %v, want %s", addrs, want)
	}
	if mergeReplies(nil, b, 4) != b {
		t.Error("merging into nothing should return the reply itself")
	}
}

// TestPrefetchFillsTheReadCache checks that Prefetch fetches, without
// waiting, exactly the swarms the node does not own and holds no copy of,
// and that the reads that follow are answered from those copies, with
// every peer.
func TestPrefetchFillsTheReadCache(t *testing.T) { synctest.Test(t, testPrefetchFillsTheReadCache) }

func testPrefetchFillsTheReadCache(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.ReadCacheTTL = time.Minute })
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	want := swarmSet{}
	tc.announce(want, []string{"b", "c"}, 30, 300, 1)

	a := tc.nodes["a"]
	v := a.c.View()
	var remote, local []bittorrent.InfoHash
	for ih := range want {
		owner := v.Members()[v.OwnersOf(ih, nil)[0]].Name
		if owner == "a" {
			local = append(local, ih)
			continue
		}
		remote = append(remote, ih)
		eventually.True(t, 5*time.Second, "owner "+owner+" holds its swarm", func() bool {
			return int(size(tc.nodes[owner].store.Counts(ih))) == len(want[ih])
		})
	}
	if len(remote) == 0 || len(local) == 0 {
		t.Fatalf("placement gave a %d remote and %d local swarms; the test needs both", len(remote), len(local))
	}

	a.c.Prefetch(append(slices.Clone(remote), local...))
	if got := testutil.ToFloat64(a.c.m.prefetches); got != float64(len(remote)) {
		t.Fatalf("%v prefetches, want one per remote swarm (%d)", got, len(remote))
	}
	eventually.True(t, 5*time.Second, "prefetched copies", func() bool {
		for _, ih := range remote {
			if s := a.c.cache.current(ih); s == nil || int(size(s.counts)) != len(want[ih]) {
				return false
			}
		}
		return true
	})
	a.c.Prefetch(remote) // fresh copies: nothing to fetch again
	if got := testutil.ToFloat64(a.c.m.prefetches); got != float64(len(remote)) {
		t.Errorf("%v prefetches after a second call, want still %d", got, len(remote))
	}

	fetched := testutil.ToFloat64(a.c.m.reads.WithLabelValues("fetched"))
	for _, ih := range remote {
		peers, _ := tc.visible("a", ih)
		if len(peers) != len(want[ih]) {
			t.Errorf("swarm %x: a shows %d peers, want %d", ih[:4], len(peers), len(want[ih]))
		}
	}
	if got := testutil.ToFloat64(a.c.m.reads.WithLabelValues("cached")); got != float64(len(remote)) {
		t.Errorf("%v reads answered from the cache, want %d", got, len(remote))
	}
	if got := testutil.ToFloat64(a.c.m.reads.WithLabelValues("fetched")); got != fetched {
		t.Errorf("reads fetched again after prefetching: %v, was %v", got, fetched)
	}
}
