package cluster

import (
	"slices"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/ring"
	"github.com/karuta-tracker/karuta/store"
)

// aeView is self's view of members, each in its own zone, boot "1".
func aeView(t *testing.T, self string, members []string, replicas int, opts ring.Options) *ring.View {
	t.Helper()
	var infos []ring.NodeInfo
	for _, m := range members {
		infos = append(infos, ring.NodeInfo{Member: ring.Member{Name: m, Zone: m}, DataAddr: m, Boot: "1"})
	}
	v, err := ring.NewView(infos, self, replicas, opts, 1)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAERange(t *testing.T) {
	for ih, want := range map[bittorrent.InfoHash]int{
		{}:                       0,
		{0xab, 0xcd, 0xef}:       0xabc,
		{0xff, 0xff}:             transport.DigestRanges - 1,
		{0x00, 0x10, 0xff, 0xff}: 1,
	} {
		if got := aeRange(&ih); got != want {
			t.Errorf("aeRange(%x) = %#x, want %#x", ih[:3], got, want)
		}
	}
}

// TestDigestPlan feeds a view's digests to the plan and checks each
// member's sums against the sums over exactly the swarms both own.
func TestDigestPlan(t *testing.T) {
	members := []string{"a", "b", "c", "d"}
	for _, tc := range []struct {
		name string
		opts ring.Options
		all  bool
	}{
		{"placed", ring.Options{VNodes: 64}, false},
		{"full replication", ring.Options{VNodes: 64, FullReplication: 4}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := aeView(t, "b", members, 2, tc.opts)
			p := newDigestPlan(v)
			want := map[int]*rangeSums{}
			for i := range 5000 {
				d := store.SwarmDigest{InfoHash: ihN(i), Digest: uint64(i)*0x9e3779b97f4a7c15 + 1}
				p.add(&d)
				owners := v.OwnersOf(d.InfoHash, nil)
				if tc.all != (len(owners) == len(members)) {
					t.Fatalf("swarm %d has %d owners", i, len(owners))
				}
				if !slices.Contains(owners, v.Self) {
					continue
				}
				for _, o := range owners {
					if o == v.Self {
						continue
					}
					if want[o] == nil {
						want[o] = &rangeSums{}
					}
					want[o].add(&d)
				}
			}
			if len(p.peers) != len(want) || len(want) == 0 {
				t.Fatalf("sums for %d members, want %d", len(p.peers), len(want))
			}
			for o, w := range want {
				if got := p.peers[o]; got == nil || got.sum != w.sum || got.count != w.count {
					t.Errorf("member %s: sums differ from the swarms both own", members[o])
				}
			}
			if p.peers[v.Self] != nil {
				t.Error("the plan sums for this node itself")
			}
		})
	}
}

func TestCoOwnersNotMine(t *testing.T) {
	v := aeView(t, "a", []string{"a", "b", "c"}, 1, ring.Options{VNodes: 64})
	for i := range 200 {
		ih := ihN(i)
		got := coOwners(v, false, &ih, []int{42})
		if owner := v.OwnersOf(ih, nil)[0]; owner != v.Self && !slices.Equal(got, []int{42}) {
			t.Fatalf("swarm %d owned by %d: coOwners = %v, want nothing added", i, owner, got)
		}
	}
	leaving := aeView(t, "x", []string{"a", "b"}, 2, ring.Options{})
	ih := ihN(1)
	if got := coOwners(leaving, true, &ih, nil); len(got) != 0 {
		t.Errorf("a node outside the view shares swarms with %v", got)
	}
}

func TestDifferingRanges(t *testing.T) {
	var mine rangeSums
	mine.sum[3], mine.sum[4095] = 7, 9
	theirs := make([]uint64, transport.DigestRanges)
	theirs[3], theirs[10] = 7, 1
	if got := differingRanges(&mine, theirs); !slices.Equal(got, []uint16{10, 4095}) {
		t.Errorf("differingRanges = %v, want [10 4095]", got)
	}
	if got := differingRanges(&mine, nil); !slices.Equal(got, []uint16{3, 4095}) {
		t.Errorf("against no sums: %v, want every range held here", got)
	}
	if got := differingRanges(&rangeSums{}, make([]uint64, transport.DigestRanges)); len(got) != 0 {
		t.Errorf("two empty stores differ in %v", got)
	}
}

func TestWanted(t *testing.T) {
	here := map[bittorrent.InfoHash]uint64{{1}: 10, {2}: 20}
	listed := []transport.SwarmDigest{{InfoHash: bittorrent.InfoHash{1}, Digest: 10}, {InfoHash: bittorrent.InfoHash{2}, Digest: 21}, {InfoHash: bittorrent.InfoHash{3}, Digest: 30}}
	got := wanted(listed, func(ih bittorrent.InfoHash) (uint64, bool) { d, ok := here[ih]; return d, ok })
	if !slices.Equal(got, []uint16{1, 2}) {
		t.Errorf("wanted = %v, want the differing and the missing swarm, [1 2]", got)
	}
}

// TestViewFingerprint checks that every member of a view computes the
// same fingerprint, and that anything changing placement changes it.
func TestViewFingerprint(t *testing.T) {
	members := []string{"a", "b", "c"}
	base := viewFingerprint(aeView(t, "a", members, 2, ring.Options{VNodes: 64}))
	if got := viewFingerprint(aeView(t, "c", members, 2, ring.Options{VNodes: 64})); got != base {
		t.Error("two members of one view disagree on its fingerprint")
	}
	rebooted := aeView(t, "a", members, 2, ring.Options{VNodes: 64})
	rebooted.Boots = append([]string(nil), rebooted.Boots...)
	rebooted.Boots[1] = "2"
	for name, v := range map[string]*ring.View{
		"a member more":    aeView(t, "a", append(members, "d"), 2, ring.Options{VNodes: 64}),
		"a member less":    aeView(t, "a", members[:2], 2, ring.Options{VNodes: 64}),
		"more replicas":    aeView(t, "a", members, 3, ring.Options{VNodes: 64}),
		"a member reboots": rebooted,
	} {
		if viewFingerprint(v) == base {
			t.Errorf("%s: same fingerprint", name)
		}
	}
}
