package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// routeView is self's view of members with replicas, each member in the
// datacenter dcs gives it ("" for all when dcs is nil).
func routeView(t *testing.T, self string, members []string, replicas int, dcs map[string]string) *ring.View {
	t.Helper()
	var infos []ring.NodeInfo
	for _, m := range members {
		infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: m, Zone: m, Datacenter: dcs[m]}, DataAddr: m, Boot: "1"})
	}
	v, err := ring.NewView(infos, self, replicas, ring.Options{VNodes: 64}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// swarmOwnedBy returns a swarm whose owners in v include every name in
// with and none in without.
func swarmOwnedBy(t *testing.T, v *ring.View, with, without []string) (bittorrent.InfoHash, []int) {
	t.Helper()
	for i := range 10000 {
		ih := ihN(i)
		owners := v.OwnersOf(ih, nil)
		ok := true
		for _, n := range with {
			ok = ok && slices.Contains(owners, v.Index(n))
		}
		for _, n := range without {
			ok = ok && !slices.Contains(owners, v.Index(n))
		}
		if ok {
			return ih, owners
		}
	}
	t.Fatalf("no swarm owned by %v and not by %v", with, without)
	return bittorrent.InfoHash{}, nil
}

func steadyIn(v *ring.View) *trustState {
	return &trustState{trusted: v, since: []*ring.View{v}, received: newReceivedSet()}
}

func noneFailing(int) bool { return false }

// In the steady state an owner answers alone and a non-owner asks one
// owner, the others only as hedges, in ring order.
func TestPlanReadSteady(t *testing.T) {
	members := []string{"a", "b", "c", "d", "e", "f"}
	v := routeView(t, "a", members, 2, nil)
	s := steadyIn(v)

	ih, owners := swarmOwnedBy(t, v, []string{"a"}, nil)
	if rt := planRead(v, s, ih, owners, noneFailing, nil); !rt.local || len(rt.ask) != 0 {
		t.Errorf("an owner with a whole copy: %+v; want local", rt)
	}

	ih, owners = swarmOwnedBy(t, v, nil, []string{"a"})
	rt := planRead(v, s, ih, owners, noneFailing, nil)
	if rt.local || rt.merge || rt.own {
		t.Errorf("a non-owner in the steady state: %+v; want one owner asked, no merge", rt)
	}
	if !slices.Equal(rt.ask, owners) {
		t.Errorf("asks %v; want the owners in ring order, %v", rt.ask, owners)
	}
}

// A member whose link fails is asked last, and members in this node's
// datacenter before the others.
func TestPlanReadPrefersWorkingNearOwners(t *testing.T) {
	members := []string{"a", "b", "c", "d", "e", "f"}
	dcs := map[string]string{"a": "x", "b": "x", "c": "x", "d": "y", "e": "y", "f": "y"}
	v := routeView(t, "a", members, 2, dcs)
	s := steadyIn(v)

	ih, owners := swarmOwnedBy(t, v, []string{"b", "d"}, []string{"a"})
	near, far := v.Index("b"), v.Index("d")
	if rt := planRead(v, s, ih, owners, noneFailing, nil); !slices.Equal(rt.ask, []int{near, far}) {
		t.Errorf("asks %v; want the near owner %d first, then %d", rt.ask, near, far)
	}
	failingNear := func(o int) bool { return o == near }
	if rt := planRead(v, s, ih, owners, failingNear, nil); !slices.Equal(rt.ask, []int{far, near}) {
		t.Errorf("with the near owner's link failing: asks %v; want %d, then %d", rt.ask, far, near)
	}
	allFailing := func(int) bool { return true }
	if rt := planRead(v, s, ih, owners, allFailing, nil); !slices.Equal(rt.ask, []int{near, far}) {
		t.Errorf("with every link failing: asks %v; want near first again, %d then %d", rt.ask, near, far)
	}
}

// Within a trust window (or before any view is trusted) a read merges
// every member that may hold part of the swarm.
func TestPlanReadMergesUntilTrusted(t *testing.T) {
	members := []string{"a", "b", "c", "d"}
	v := routeView(t, "a", members, 2, nil)
	ih, owners := swarmOwnedBy(t, v, nil, []string{"a"})
	for name, s := range map[string]*trustState{
		"no trust state":  nil,
		"nothing trusted": {since: []*ring.View{v}, received: newReceivedSet()},
	} {
		rt := planRead(v, s, ih, owners, noneFailing, nil)
		if rt.local || !rt.merge || !slices.Equal(rt.ask, owners) {
			t.Errorf("%s: %+v; want every owner, merged", name, rt)
		}
	}

	// An owner that has just gained a swarm asks its old owners too, and
	// merges its own copy.
	old := routeView(t, "a", []string{"b", "c", "d"}, 2, nil)
	oldS := &trustState{trusted: old, since: []*ring.View{old, v}, received: newReceivedSet()}
	gained, now := swarmOwnedBy(t, v, []string{"a"}, nil)
	rt := planRead(v, oldS, gained, now, noneFailing, nil)
	if rt.local || !rt.merge || !rt.own || len(rt.ask) == 0 {
		t.Errorf("an owner that has just gained the swarm: %+v; want the others asked, merged with its own copy", rt)
	}
}

// With no other member to ask, the route is empty and the read fails.
func TestPlanReadNobodyToAsk(t *testing.T) {
	v := routeView(t, "a", []string{"a", "b"}, 1, nil)
	s := steadyIn(v)
	ih, owners := swarmOwnedBy(t, v, []string{"b"}, nil)
	rt := planRead(v, s, ih, owners[:0], noneFailing, nil)
	if rt.local || len(rt.ask) != 0 {
		t.Errorf("no owners: %+v; want nothing to ask", rt)
	}
}

func TestHedgeDelay(t *testing.T) {
	if got := hedgeDelay(200 * time.Millisecond); got != 100*time.Millisecond {
		t.Errorf("hedgeDelay(200ms) = %s; want half", got)
	}
}

// distinctFirst counts the members a batch asks first.
func distinctFirst(asks [][]int) int {
	seen := map[int]bool{}
	for _, a := range asks {
		seen[a[0]] = true
	}
	return len(seen)
}

// At four nodes with replicas 2, the swarms a node does not own are held
// by two of the other three; a batch that holds every pair asks two
// members, not three, and every read still asks one of its own owners.
func TestCoverAsksAsksFewMembers(t *testing.T) {
	asks := [][]int{{1, 2}, {1, 3}, {2, 3}, {3, 1}, {2, 1}, {3, 2}}
	owners := make([][]int, len(asks))
	for i, a := range asks {
		owners[i] = slices.Clone(a)
	}
	coverAsks(asks, []int{2, 2, 2, 2, 2, 2})
	if n := distinctFirst(asks); n != 2 {
		t.Errorf("the batch asks %d members first (%v); want 2", n, asks)
	}
	for i, a := range asks {
		if !slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(owners[i]))) {
			t.Errorf("read %d asks %v; want a reordering of its owners %v", i, a, owners[i])
		}
	}
}

// A read with one good member keeps it first, and the batch's other reads
// that member can answer go to it; a member no better than the first is
// never moved ahead of it, and the hedges keep their order.
func TestCoverAsksKeepsPreference(t *testing.T) {
	asks := [][]int{
		{3, 1},    // only 3 is good (1 is far or failing)
		{1, 3},    // either: 3 is already asked
		{2, 4},    // 2 only
		{1, 2, 4}, // 1, 2 or 4: 2 is already asked
		{4, 1, 2}, // 4 or 1: neither asked yet; one is chosen
	}
	coverAsks(asks, []int{1, 2, 1, 3, 2})
	want := [][]int{{3, 1}, {3, 1}, {2, 4}, {2, 1, 4}}
	for i, w := range want {
		if !slices.Equal(asks[i], w) {
			t.Errorf("read %d asks %v; want %v", i, asks[i], w)
		}
	}
	if a := asks[4]; !slices.Equal(a, []int{1, 4, 2}) && !slices.Equal(a, []int{4, 1, 2}) {
		t.Errorf("read 4 asks %v; want 1 or 4 first, 2 last", a)
	}
}

// planRead says how many of its first members are equally good.
func TestPlanReadEqual(t *testing.T) {
	members := []string{"a", "b", "c", "d", "e", "f"}
	v := routeView(t, "a", members, 2, nil)
	ih, owners := swarmOwnedBy(t, v, nil, []string{"a"})
	if rt := planRead(v, steadyIn(v), ih, owners, noneFailing, nil); rt.equal != 2 {
		t.Errorf("two working owners in one datacenter: equal %d; want 2", rt.equal)
	}
	first := func(o int) bool { return o == owners[0] }
	if rt := planRead(v, steadyIn(v), ih, owners, first, nil); rt.equal != 1 || rt.ask[0] != owners[1] {
		t.Errorf("with %d failing: %+v; want %d alone first", owners[0], rt, owners[1])
	}
}
