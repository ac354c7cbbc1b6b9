package ring

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// cluster returns n members named node-000… spread round-robin over dcs
// datacenters and, within each, over zones zones.
func cluster(n, dcs, zones int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{
			Name:       fmt.Sprintf("node-%03d", i),
			Datacenter: fmt.Sprintf("dc%d", i%dcs),
			Zone:       fmt.Sprintf("z%d", i/dcs%zones),
		}
	}
	return ms
}

func mustNew(tb testing.TB, ms []Member, opts Options) *Ring {
	tb.Helper()
	r, err := New(ms, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// randomInfoHashes returns n infohashes from a generator seeded with seed,
// so every run measures the same keys.
func randomInfoHashes(seed uint64, n int) []bittorrent.InfoHash {
	rng := rand.New(rand.NewPCG(seed, 0x6b617275))
	ihs := make([]bittorrent.InfoHash, n)
	for i := range ihs {
		for j := 0; j < len(ihs[i]); j += 8 {
			v := rng.Uint64()
			for k := j; k < min(j+8, len(ihs[i])); k++ {
				ihs[i][k] = byte(v)
				v >>= 8
			}
		}
	}
	return ihs
}

// names maps owner indices to member names.
func names(r *Ring, owners []int) []string {
	out := make([]string, len(owners))
	for i, o := range owners {
		out[i] = r.Members()[o].Name
	}
	return out
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members []Member
		opts    Options
		want    string
	}{
		{"empty name", []Member{{Name: "a"}, {Name: ""}}, Options{}, "empty name"},
		{"duplicate name", []Member{{Name: "a", Zone: "x"}, {Name: "b"}, {Name: "a", Zone: "y"}}, Options{}, `"a" appears twice`},
		{"negative vnodes", []Member{{Name: "a"}}, Options{VNodes: -1}, "vnodes -1"},
		{"too many vnodes", []Member{{Name: "a"}}, Options{VNodes: 1<<16 + 1}, "vnodes 65537"},
		{"negative full replication", []Member{{Name: "a"}}, Options{FullReplication: -1}, "full replication -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.members, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestEmptyAndSingle(t *testing.T) {
	var ih bittorrent.InfoHash
	empty := mustNew(t, nil, Options{EveryDatacenter: true})
	if got := empty.Owners(ih, 3, []int{7}); !slices.Equal(got, []int{7}) {
		t.Errorf("empty ring: Owners = %v, want dst unchanged [7]", got)
	}
	if n := empty.OwnerCount(3); n != 0 {
		t.Errorf("empty ring: OwnerCount = %d, want 0", n)
	}
	one := mustNew(t, []Member{{Name: "solo"}}, Options{})
	if got := one.Owners(ih, 3, nil); !slices.Equal(got, []int{0}) {
		t.Errorf("one member: Owners = %v, want [0]", got)
	}
}

func TestIndex(t *testing.T) {
	r := mustNew(t, []Member{{Name: "c"}, {Name: "a"}, {Name: "b"}}, Options{VNodes: 4})
	for i, m := range r.Members() {
		if got := r.Index(m.Name); got != i {
			t.Errorf("Index(%q) = %d, want %d", m.Name, got, i)
		}
	}
	if got := r.Index("zz"); got != -1 {
		t.Errorf("Index(absent) = %d, want -1", got)
	}
}

// TestOrderIndependence: nodes learn members in different orders and must
// still agree.
func TestOrderIndependence(t *testing.T) {
	ms := cluster(12, 2, 3)
	want := mustNew(t, ms, Options{EveryDatacenter: true})
	rng := rand.New(rand.NewPCG(1, 2))
	keys := randomInfoHashes(3, 500)
	for range 5 {
		shuffled := slices.Clone(ms)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := mustNew(t, shuffled, Options{EveryDatacenter: true})
		for _, ih := range keys {
			a, b := names(want, want.Owners(ih, 3, nil)), names(got, got.Owners(ih, 3, nil))
			if !slices.Equal(a, b) {
				t.Fatalf("%v: owners %v with one member order, %v with another", ih, a, b)
			}
		}
	}
}

// ringWalk is the reference for the first owner and the walk order: a plain
// binary search over the vnodes, independent of the bucket index.
func ringWalk(r *Ring, ih bittorrent.InfoHash) []int {
	h := keyToken(ih)
	i, _ := slices.BinarySearch(r.vnodes, h)
	var order []int
	for range r.vnodes {
		if i == len(r.vnodes) {
			i = 0
		}
		m := int(r.vnodes[i] & memberMask)
		if !slices.Contains(order, m) {
			order = append(order, m)
		}
		i++
	}
	return order
}

// TestOwnersRules checks the placement rules on many keys and topologies:
// distinct members, the primary is the first member clockwise, zones as
// even as the members allow, and with EveryDatacenter an owner in each
// datacenter.
func TestOwnersRules(t *testing.T) {
	uneven := []Member{
		{"a1", "east", "a"}, {"a2", "east", "a"}, {"a3", "east", "a"}, {"a4", "east", "a"},
		{"b1", "east", "b"}, {"c1", "west", "c"}, {"c2", "west", "c"}, {"d1", "south", ""},
	}
	keys := randomInfoHashes(4, 2000)
	for _, tc := range []struct {
		name     string
		members  []Member
		everyDC  bool
		replicas int
	}{
		{"flat r1", cluster(10, 1, 1), false, 1},
		{"flat r3", cluster(10, 1, 1), false, 3},
		{"flat r7 of 5", cluster(5, 1, 1), false, 7},
		{"3 zones r3", cluster(9, 1, 3), false, 3},
		{"3 zones r5", cluster(9, 1, 3), false, 5},
		{"2 zones r3", cluster(8, 1, 2), false, 3},
		{"uneven r3", uneven, false, 3},
		{"uneven r6", uneven, false, 6},
		{"uneven every dc r1", uneven, true, 1},
		{"uneven every dc r4", uneven, true, 4},
		{"uneven every dc r7", uneven, true, 7},
		{"3 dcs r2", cluster(12, 3, 2), true, 2},
		{"3 dcs r3", cluster(12, 3, 2), true, 3},
		{"3 dcs r5", cluster(12, 3, 2), true, 5},
		{"2 dcs no every r2", cluster(12, 2, 2), false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustNew(t, tc.members, Options{EveryDatacenter: tc.everyDC, VNodes: 64})
			want := r.OwnerCount(tc.replicas)
			zoneSize := map[int32]int{}
			dcs := map[int32]bool{}
			for i := range r.members {
				zoneSize[r.zone[i]]++
				dcs[r.dc[i]] = true
			}
			for _, ih := range keys {
				owners := r.Owners(ih, tc.replicas, nil)
				walk := ringWalk(r, ih)
				if len(owners) != want {
					t.Fatalf("%v: %d owners, want %d", ih, len(owners), want)
				}
				if owners[0] != walk[0] {
					t.Fatalf("%v: primary %d, want the first member clockwise, %d", ih, owners[0], walk[0])
				}
				seen := map[int]bool{}
				perZone := map[int32]int{}
				perDC := map[int32]int{}
				for _, o := range owners {
					if seen[o] {
						t.Fatalf("%v: owners %v repeat a member", ih, owners)
					}
					seen[o] = true
					perZone[r.zone[o]]++
					perDC[r.dc[o]]++
				}
				// Evenness: a zone may hold two more owners than another
				// only if the other has no member left to give.
				for za, a := range perZone {
					for zb := range zoneSize {
						if b := perZone[zb]; a >= b+2 && b < zoneSize[zb] {
							t.Fatalf("%v: owners %v put %d in zone %d but only %d in zone %d of %d members",
								ih, names(r, owners), a, za, b, zb, zoneSize[zb])
						}
					}
				}
				if tc.everyDC && len(perDC) != len(dcs) {
					t.Fatalf("%v: owners %v cover %d of %d datacenters", ih, names(r, owners), len(perDC), len(dcs))
				}
				// With one zone and no datacenter rule the owners are simply
				// the first members clockwise.
				if len(zoneSize) == 1 && !tc.everyDC && !slices.Equal(owners, walk[:want]) {
					t.Fatalf("%v: owners %v, want the first %d clockwise %v", ih, owners, want, walk[:want])
				}
			}
		})
	}
}

// TestFewerReplicasThanDatacenters pins the documented choice: with
// EveryDatacenter and fewer replicas than datacenters, the owner list grows
// to one per datacenter, and the primary is the one it would be without
// the option.
func TestFewerReplicasThanDatacenters(t *testing.T) {
	ms := cluster(15, 5, 1)
	every := mustNew(t, ms, Options{EveryDatacenter: true})
	plain := mustNew(t, ms, Options{})
	for _, tc := range []struct{ replicas, want int }{{1, 5}, {2, 5}, {4, 5}, {5, 5}, {6, 6}} {
		t.Run(fmt.Sprintf("replicas=%d", tc.replicas), func(t *testing.T) {
			if n := every.OwnerCount(tc.replicas); n != tc.want {
				t.Fatalf("OwnerCount(%d) = %d, want %d", tc.replicas, n, tc.want)
			}
			for _, ih := range randomInfoHashes(5, 1000) {
				owners := every.Owners(ih, tc.replicas, nil)
				dcs := map[string]int{}
				for _, o := range owners {
					dcs[every.Members()[o].Datacenter]++
				}
				if len(owners) != tc.want || len(dcs) != 5 {
					t.Fatalf("%v: owners %v, want %d covering all 5 datacenters", ih, names(every, owners), tc.want)
				}
				if p := plain.Owners(ih, 1, nil); owners[0] != p[0] {
					t.Fatalf("%v: primary %s, want %s as without EveryDatacenter", ih, names(every, owners[:1]), names(plain, p))
				}
			}
		})
	}
}

// TestOwnersAllocs: lookups run per request and, in handoff planning, per
// swarm, so they must not allocate when the caller provides room.
func TestOwnersAllocs(t *testing.T) {
	r := mustNew(t, cluster(30, 3, 2), Options{EveryDatacenter: true})
	keys := randomInfoHashes(6, 64)
	dst := make([]int, 0, 8)
	i := 0
	if n := testing.AllocsPerRun(200, func() {
		dst = r.Owners(keys[i%len(keys)], 3, dst[:0])
		i++
	}); n != 0 {
		t.Errorf("Owners: %v allocations per call, want 0", n)
	}
}

// TestGainedLost checks which owners a change of members adds and removes:
// a join only ever gains the new member, a leave only loses the leaver,
// and every gain displaces one owner.
func TestGainedLost(t *testing.T) {
	for _, tc := range []struct {
		name       string
		prev, next []Member
		everyDC    bool
		onlyGainer string // if set, every gain must be this member
		onlyLoser  string // if set, every loss must be this member
	}{
		{"same", cluster(5, 1, 1), cluster(5, 1, 1), false, "-", "-"},
		{"join", cluster(5, 1, 1), cluster(6, 1, 1), false, "node-005", ""},
		{"leave", cluster(6, 1, 1), cluster(5, 1, 1), false, "", "node-005"},
		{"join zones", cluster(6, 1, 3), cluster(7, 1, 3), false, "", ""},
		{"join dc", cluster(6, 2, 1), append(cluster(6, 2, 1), Member{"node-x", "dc2", "z0"}), true, "node-x", ""},
		{"rezone", cluster(6, 1, 1), cluster(6, 1, 2), false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := mustNew(t, tc.prev, Options{EveryDatacenter: tc.everyDC, VNodes: 64})
			next := mustNew(t, tc.next, Options{EveryDatacenter: tc.everyDC, VNodes: 64})
			var gains, losses int
			for _, ih := range randomInfoHashes(7, 2000) {
				was := names(prev, prev.Owners(ih, 2, nil))
				now := names(next, next.Owners(ih, 2, nil))
				var wantGain, wantLost []string
				for _, n := range now {
					if !slices.Contains(was, n) {
						wantGain = append(wantGain, n)
					}
				}
				for _, w := range was {
					if !slices.Contains(now, w) {
						wantLost = append(wantLost, w)
					}
				}
				gained := names(next, appendGained(prev, next, prev.Owners(ih, 2, nil), next.Owners(ih, 2, nil), nil))
				lost := names(prev, appendGained(next, prev, next.Owners(ih, 2, nil), prev.Owners(ih, 2, nil), nil))
				if !slices.Equal(gained, wantGain) || !slices.Equal(lost, wantLost) {
					t.Fatalf("%v: %v -> %v: Gained %v Lost %v, want %v and %v", ih, was, now, gained, lost, wantGain, wantLost)
				}
				for _, g := range gained {
					if tc.onlyGainer != "" && g != tc.onlyGainer {
						t.Fatalf("%v: %v -> %v gains %s, want only %q to gain", ih, was, now, g, tc.onlyGainer)
					}
				}
				for _, l := range lost {
					if tc.onlyLoser != "" && l != tc.onlyLoser {
						t.Fatalf("%v: %v -> %v loses %s, want only %q to lose", ih, was, now, l, tc.onlyLoser)
					}
				}
				gains += len(gained)
				losses += len(lost)
			}
			// Unless the owner count changes (a new datacenter with
			// EveryDatacenter), every gain displaces one owner.
			if prev.OwnerCount(2) == next.OwnerCount(2) && gains != losses {
				t.Errorf("%d gains but %d losses; each swarm keeps its owner count", gains, losses)
			}
			if tc.onlyGainer != "-" && gains == 0 {
				t.Errorf("no swarm moved; the change should move some")
			}
		})
	}
}

// TestFullReplication checks that a ring of at most FullReplication
// members makes every member an owner of every swarm, keeping the primary
// placement picks without it, and that a larger ring falls back to replicas.
func TestFullReplication(t *testing.T) {
	for _, tc := range []struct {
		members, full, replicas, want int
	}{
		{3, 3, 1, 3},
		{3, 3, 2, 3},
		{2, 3, 1, 2},
		{4, 3, 2, 2},
		{3, 0, 2, 2},
		{5, 5, 7, 5},
	} {
		t.Run(fmt.Sprintf("%d members, full %d, replicas %d", tc.members, tc.full, tc.replicas), func(t *testing.T) {
			plain := mustNew(t, cluster(tc.members, 1, 1), Options{VNodes: 64})
			r := mustNew(t, cluster(tc.members, 1, 1), Options{VNodes: 64, FullReplication: tc.full})
			if got := r.OwnerCount(tc.replicas); got != tc.want {
				t.Fatalf("OwnerCount(%d) = %d, want %d", tc.replicas, got, tc.want)
			}
			for _, ih := range randomInfoHashes(3, 500) {
				owners := r.Owners(ih, tc.replicas, nil)
				if len(owners) != tc.want || len(slices.Compact(slices.Sorted(slices.Values(owners)))) != tc.want {
					t.Fatalf("%v: owners %v; want %d distinct", ih, owners, tc.want)
				}
				if p := plain.Owners(ih, 1, nil)[0]; owners[0] != p {
					t.Fatalf("%v: primary %d, want %d as without full replication", ih, owners[0], p)
				}
			}
		})
	}
	// Growing past the limit: each swarm loses exactly the owners the
	// smaller count no longer has room for; nobody gains but the newcomer.
	prev := mustNew(t, cluster(3, 1, 1), Options{VNodes: 64, FullReplication: 3})
	next := mustNew(t, cluster(4, 1, 1), Options{VNodes: 64, FullReplication: 3})
	for _, ih := range randomInfoHashes(5, 500) {
		was, now := names(prev, prev.Owners(ih, 2, nil)), names(next, next.Owners(ih, 2, nil))
		var gained, lost []string
		for _, n := range now {
			if !slices.Contains(was, n) {
				gained = append(gained, n)
			}
		}
		for _, w := range was {
			if !slices.Contains(now, w) {
				lost = append(lost, w)
			}
		}
		if len(lost) != 3-2+len(gained) || (len(gained) > 0 && !slices.Equal(gained, []string{"node-003"})) {
			t.Fatalf("%v: gained %v, lost %v; want one loss per gain plus one, gains only by node-003", ih, gained, lost)
		}
	}
}

// goldenMembers is a small mixed topology whose placement is pinned.
var goldenMembers = []Member{
	{"ams-1", "ams", "a"}, {"ams-2", "ams", "b"}, {"ams-3", "ams", "a"},
	{"fra-1", "fra", "a"}, {"fra-2", "fra", "b"}, {"fra-3", "fra", "c"},
	{"nyc-1", "nyc", ""}, {"nyc-2", "nyc", ""},
}

// golden renders pinned placement: raw hash positions, then owners for
// fixed infohashes under a few options. Infohashes are SHA-1 of "swarm-i",
// so they never depend on a random generator's algorithm.
func golden(t *testing.T) []byte {
	var b bytes.Buffer
	fmt.Fprintln(&b, "# Pinned placement. If this changes, nodes of different versions")
	fmt.Fprintln(&b, "# disagree on owners: only regenerate (go test ./ring -run TestGolden -update)")
	fmt.Fprintln(&b, "# for a deliberate, announced layout change.")
	for _, m := range goldenMembers {
		fmt.Fprintf(&b, "member %s %s %q\n", m.Name, m.Datacenter, m.Zone)
	}
	for _, name := range []string{"ams-1", "nyc-2"} {
		for _, v := range []int{0, 1, 1023} {
			fmt.Fprintf(&b, "vnode %s %d %016x\n", name, v, vnodeToken(name, v))
		}
	}
	ihs := make([]bittorrent.InfoHash, 24)
	for i := range ihs {
		ihs[i] = sha1.Sum([]byte("swarm-" + strconv.Itoa(i)))
	}
	for _, ih := range ihs[:4] {
		fmt.Fprintf(&b, "key %v %016x\n", ih, keyToken(ih))
	}
	for _, c := range []struct {
		opts     Options
		replicas int
	}{
		{Options{}, 1}, {Options{}, 3}, {Options{EveryDatacenter: true}, 1}, {Options{EveryDatacenter: true}, 4}, {Options{VNodes: 16}, 2},
	} {
		r := mustNew(t, goldenMembers, c.opts)
		vnodes := "default"
		if c.opts.VNodes != 0 {
			vnodes = strconv.Itoa(c.opts.VNodes)
		}
		fmt.Fprintf(&b, "ring vnodes=%s every_datacenter=%t replicas=%d\n", vnodes, c.opts.EveryDatacenter, c.replicas)
		for _, ih := range ihs {
			fmt.Fprintf(&b, "owners %v %s\n", ih, strings.Join(names(r, r.Owners(ih, c.replicas, nil)), " "))
		}
	}
	return b.Bytes()
}

// TestGolden pins key placement so an accidental change of the hash layout
// fails here rather than splitting a mixed-version cluster.
func TestGolden(t *testing.T) {
	path := filepath.Join("testdata", "placement.golden")
	got := golden(t)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	gs, ws := bufio.NewScanner(bytes.NewReader(got)), bufio.NewScanner(bytes.NewReader(want))
	for line := 1; ; line++ {
		g, w := gs.Scan(), ws.Scan()
		if !g && !w {
			return
		}
		if gs.Text() != ws.Text() {
			t.Fatalf("%s:%d: placement changed\n got: %s\nwant: %s\nnodes of different versions would disagree on owners", path, line, gs.Text(), ws.Text())
		}
	}
}

// ownership is each member's share of swarms, as primary and as any owner.
type ownership struct {
	primary, total []float64
}

// exactOwnership integrates over the ring's arcs: every key in one arc has
// the same owners, so the shares are exact, free of sampling noise.
func exactOwnership(r *Ring, replicas int) ownership {
	o := ownership{make([]float64, len(r.members)), make([]float64, len(r.members))}
	want := r.OwnerCount(replicas)
	buf := make([]int, 0, want)
	forEachArc([]*Ring{r}, func(pos uint64, w float64) {
		owners := r.ownersAt(r.search(pos), want, buf[:0])
		o.primary[owners[0]] += w
		for _, m := range owners {
			o.total[m] += w
		}
	})
	return o
}

// forEachArc calls fn for every arc between consecutive vnode positions of
// all rings, with the arc's end (a key position that lands in it) and its
// fraction of the ring. Within one arc no ring changes owners.
func forEachArc(rings []*Ring, fn func(pos uint64, w float64)) {
	var pos []uint64
	for _, r := range rings {
		for _, v := range r.vnodes {
			pos = append(pos, v&^memberMask)
		}
	}
	slices.Sort(pos)
	pos = slices.Compact(pos)
	last := pos[len(pos)-1]
	for _, p := range pos {
		fn(p, float64(p-last)/math.Exp2(64)) // wraps around for the first arc
		last = p
	}
}

// sampledOwnership counts owners of keys.
func sampledOwnership(r *Ring, replicas int, keys []bittorrent.InfoHash) ownership {
	o := ownership{make([]float64, len(r.members)), make([]float64, len(r.members))}
	buf := make([]int, 0, r.OwnerCount(replicas))
	for _, ih := range keys {
		owners := r.Owners(ih, replicas, buf[:0])
		o.primary[owners[0]]++
		for _, m := range owners {
			o.total[m]++
		}
	}
	return o
}

// peak is the busiest member's load over the mean.
func peak(loads []float64) float64 {
	var sum, top float64
	for _, l := range loads {
		sum += l
		top = max(top, l)
	}
	return top / (sum / float64(len(loads)))
}

// balanceKeys is how many random infohashes the sampled figures use.
const balanceKeys = 200_000

// TestBalance: the busiest member owns at most 1.10 × the mean, both as
// primary and counting every replica, measured exactly over the ring's
// arcs and over random infohashes.
func TestBalance(t *testing.T) {
	keys := randomInfoHashes(8, balanceKeys)
	for _, tc := range []struct {
		nodes, dcs, zones, replicas int
		everyDC                     bool
	}{
		{3, 1, 1, 3, false}, {5, 1, 1, 3, false}, {10, 1, 1, 3, false}, {30, 1, 1, 3, false}, {100, 1, 1, 3, false},
		{30, 1, 3, 3, false}, {99, 1, 3, 3, false},
		{30, 3, 2, 4, true}, {96, 3, 2, 4, true},
	} {
		name := fmt.Sprintf("nodes=%d/dcs=%d/zones=%d/replicas=%d/every=%t", tc.nodes, tc.dcs, tc.zones, tc.replicas, tc.everyDC)
		t.Run(name, func(t *testing.T) {
			t.Parallel() // CPU-bound and independent: use every core
			r := mustNew(t, cluster(tc.nodes, tc.dcs, tc.zones), Options{EveryDatacenter: tc.everyDC})
			exact := exactOwnership(r, tc.replicas)
			sampled := sampledOwnership(r, tc.replicas, keys)
			figs := []struct {
				what  string
				loads []float64
			}{
				{"exact primary", exact.primary}, {"exact total", exact.total},
				{"sampled primary", sampled.primary}, {"sampled total", sampled.total},
			}
			var line strings.Builder
			for _, f := range figs {
				p := peak(f.loads)
				fmt.Fprintf(&line, " %s %.3f", f.what, p)
				if p > 1.10 {
					t.Errorf("%s: busiest member owns %.3f × the mean, want at most 1.10", f.what, p)
				}
			}
			t.Logf("max/mean:%s", line.String())
		})
	}
}

// TestJoinMovement: a join to N members moves at most 1.2/(N+1) of the
// swarms (the newcomer's fair share is 1/(N+1)), counting primaries and
// replica copies, and in a flat cluster every moved copy goes
// to the new member (no churn among the others). A leave moves exactly the
// leaver's copies.
func TestJoinMovement(t *testing.T) {
	keys := randomInfoHashes(9, balanceKeys)
	const replicas = 3
	for _, tc := range []struct{ nodes, zones int }{{3, 1}, {5, 1}, {10, 1}, {30, 1}, {100, 1}, {30, 3}} {
		t.Run(fmt.Sprintf("nodes=%d/zones=%d", tc.nodes, tc.zones), func(t *testing.T) {
			t.Parallel() // CPU-bound and independent: use every core
			prev := mustNew(t, cluster(tc.nodes, 1, tc.zones), Options{})
			next := mustNew(t, cluster(tc.nodes+1, 1, tc.zones), Options{})
			newcomer := next.Index(fmt.Sprintf("node-%03d", tc.nodes))
			bound := 1.2 / float64(tc.nodes+1)

			// Exact: integrate over the arcs of both rings. The leave is
			// the join reversed, so the same pass measures it: the copies
			// refilled must be the leaver's, all of them.
			var primary, copies, elsewhere, refilled, leaver float64
			pwant, nwant := prev.OwnerCount(replicas), next.OwnerCount(replicas)
			gbuf := make([]int, 0, replicas)
			pbuf := make([]int, 0, replicas)
			nbuf := make([]int, 0, replicas)
			forEachArc([]*Ring{prev, next}, func(pos uint64, w float64) {
				p := prev.ownersAt(prev.search(pos), pwant, pbuf[:0])
				n := next.ownersAt(next.search(pos), nwant, nbuf[:0])
				if prev.members[p[0]].Name != next.members[n[0]].Name {
					primary += w
				}
				for _, g := range appendGained(prev, next, p, n, gbuf[:0]) {
					copies += w / replicas
					if g != newcomer {
						elsewhere += w / replicas
					}
				}
				refilled += w / replicas * float64(len(appendGained(next, prev, n, p, gbuf[:0])))
				if slices.Contains(n, newcomer) {
					leaver += w / replicas
				}
			})

			// Sampled: the same over random infohashes.
			var sPrimary, sCopies float64
			dst := make([]int, 0, replicas)
			for _, ih := range keys {
				p := prev.Owners(ih, 1, dst[:0])[0]
				n := next.Owners(ih, 1, dst[:0])[0]
				if prev.Members()[p].Name != next.Members()[n].Name {
					sPrimary++
				}
				sCopies += float64(len(appendGained(prev, next, prev.Owners(ih, replicas, nil), next.Owners(ih, replicas, nil), dst[:0])))
			}
			sPrimary /= float64(len(keys))
			sCopies /= float64(len(keys) * replicas)

			t.Logf("moved: exact primary %.4f copies %.4f (%.4f not to the newcomer); sampled primary %.4f copies %.4f; 1/N %.4f, 1/(N+1) %.4f, 1.2/(N+1) %.4f",
				primary, copies, elsewhere, sPrimary, sCopies, 1/float64(tc.nodes), 1/float64(tc.nodes+1), bound)
			for _, f := range []struct {
				what string
				frac float64
			}{{"exact primary", primary}, {"exact copies", copies}, {"sampled primary", sPrimary}, {"sampled copies", sCopies}} {
				if f.frac > bound {
					t.Errorf("%s: join moved %.4f of swarms, want at most 1.2/(N+1) = %.4f", f.what, f.frac, bound)
				}
			}
			if tc.zones == 1 && elsewhere > 0 {
				t.Errorf("%.4f of copies moved between old members; a join in a flat cluster should only feed the newcomer", elsewhere)
			}

			if math.Abs(refilled-leaver) > 1e-9 {
				t.Errorf("leave moved %.6f of copies, want the leaver's share %.6f", refilled, leaver)
			}
		})
	}
}

// appendGained appends the members of now (indices into next) that are not
// in was (indices into prev), matching by name.
func appendGained(prev, next *Ring, was, now, dst []int) []int {
	for _, n := range now {
		if !slices.ContainsFunc(was, func(p int) bool { return prev.members[p].Name == next.members[n].Name }) {
			dst = append(dst, n)
		}
	}
	return dst
}
