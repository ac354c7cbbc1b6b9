package storetest

import (
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

// digests lists a store's digests by infohash, failing on a swarm listed
// twice.
func digests(t *testing.T, s store.Store) map[bittorrent.InfoHash]uint64 {
	t.Helper()
	out := map[bittorrent.InfoHash]uint64{}
	s.Digests(func(batch []store.SwarmDigest) bool {
		for _, d := range batch {
			if _, dup := out[d.InfoHash]; dup {
				t.Errorf("swarm %x listed twice", d.InfoHash[:2])
			}
			out[d.InfoHash] = d.Digest
		}
		return true
	})
	return out
}

func testDigests(t *testing.T, open func(*testing.T) store.Store) {
	const (
		a4 = "10.0.0.1:6881"
		b4 = "10.0.0.2:6881"
		c4 = "10.0.0.3:6881"
		a6 = "[2001:db8::1]:6881"
	)
	changes := []bittorrent.Change{
		put(ihA, a4, false), put(ihA, b4, true), put(ihA, a6, false), complete(ihA, c4),
		put(ihB, a4, true),
	}
	fill := func(t *testing.T, order []int) store.Store {
		s := open(t)
		for _, i := range order {
			s.Apply([]bittorrent.Change{changes[i]})
		}
		return s
	}
	base := digests(t, fill(t, []int{0, 1, 2, 3, 4}))
	if len(base) != 2 {
		t.Fatalf("Digests listed %d swarms, want 2", len(base))
	}
	if got := digests(t, fill(t, []int{4, 3, 2, 1, 0})); got[ihA] != base[ihA] || got[ihB] != base[ihB] {
		t.Errorf("the same peers put in another order: digests %x, want %x", got, base)
	}
	s := fill(t, []int{0, 1, 2, 3, 4})
	if d, ok := s.Digest(ihA); !ok || d != base[ihA] {
		t.Errorf("Digest(ihA) = %x, %v; want %x as listed", d, ok, base[ihA])
	}
	if _, ok := s.Digest(bittorrent.InfoHash{0xdd}); ok {
		t.Error("Digest of an unknown swarm reports one")
	}
	for _, tc := range []struct {
		name   string
		change func(store.Store)
	}{
		{"a peer more", func(s store.Store) { s.Apply([]bittorrent.Change{put(ihA, "10.0.0.9:1", false)}) }},
		{"a peer less", func(s store.Store) { s.Apply([]bittorrent.Change{remove(ihA, a6)}) }},
		{"another peer ID", func(s store.Store) { s.Apply([]bittorrent.Change{putID(ihA, a4, false, 7)}) }},
		{"a leecher seeding", func(s store.Store) { s.Apply([]bittorrent.Change{put(ihA, a4, true)}) }},
		{"another port", func(s store.Store) {
			s.Apply([]bittorrent.Change{remove(ihA, a4), put(ihA, "10.0.0.1:6882", false)})
		}},
		{"more snatches", func(s store.Store) { s.MergeSnatches(ihA, 5) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := fill(t, []int{0, 1, 2, 3, 4})
			tc.change(s)
			got := digests(t, s)
			if got[ihA] == base[ihA] {
				t.Errorf("digest of the changed swarm did not change")
			}
			if got[ihB] != base[ihB] {
				t.Errorf("digest of the other swarm changed")
			}
		})
	}
	t.Run("a re-announce changes nothing", func(t *testing.T) {
		s := fill(t, []int{0, 1, 2, 3, 4})
		s.Apply([]bittorrent.Change{put(ihA, a4, false), put(ihB, a4, true)})
		if got := digests(t, s); got[ihA] != base[ihA] || got[ihB] != base[ihB] {
			t.Errorf("digests after re-announces %x, want %x", got, base)
		}
	})
	t.Run("swarms without peers are not listed", func(t *testing.T) {
		s := fill(t, []int{4})
		s.MergeSnatches(ihA, 3)
		s.Apply([]bittorrent.Change{remove(ihB, a4)})
		if got := digests(t, s); len(got) != 0 {
			t.Errorf("Digests listed %d empty swarms", len(got))
		}
	})
	t.Run("fn stops the listing", func(t *testing.T) {
		s := open(t)
		for i := range 300 {
			s.Apply([]bittorrent.Change{put(bittorrent.InfoHash{0xd0, byte(i), byte(i >> 8)}, a4, false)})
		}
		var calls, listed int
		s.Digests(func(batch []store.SwarmDigest) bool { calls++; listed += len(batch); return false })
		if calls != 1 || listed == 300 && calls > 1 {
			t.Errorf("fn returning false: called %d times", calls)
		}
	})
}

func testMerge(t *testing.T, open func(*testing.T) store.Store) {
	now := time.Now()
	older, newer := now.Add(-2*time.Minute), now.Add(-time.Minute)
	sp := func(addr string, pid byte, seeder bool, seen time.Time) store.SeenPeer {
		return store.SeenPeer{Peer: bittorrent.Peer{ID: id(pid), Addr: ap(addr)}, Seeder: seeder, Seen: seen}
	}
	s := open(t)
	added := s.Merge(ihA, []store.SeenPeer{
		sp("10.0.0.1:1", 1, false, older),
		sp("10.0.0.2:1", 2, true, older),
		sp("[2001:db8::3]:1", 3, false, newer),
		sp("10.0.0.4:1", 4, true, now.Add(-8*24*time.Hour)), // expired everywhere
		sp("10.0.0.5:0", 5, true, newer),                    // no port: ignored
	}, 2)
	if added != 3 {
		t.Errorf("Merge into a new swarm added %d, want 3", added)
	}
	if c := s.Counts(ihA); c != (bittorrent.Counts{Seeders: 1, Leechers: 2, Snatches: 2}) {
		t.Errorf("after a merge: counts %+v", c)
	}
	peers, snatches, ok := s.SeenSwarm(ihA, nil)
	if !ok || snatches != 2 || len(peers) != 3 {
		t.Fatalf("SeenSwarm = %d peers, %d snatches, %v", len(peers), snatches, ok)
	}
	for _, p := range peers {
		want := older
		if p.Addr == ap("[2001:db8::3]:1") {
			want = newer
		}
		if d := p.Seen.Sub(want); d < -time.Second || d > time.Second {
			t.Errorf("peer %s seen %s, want %s: a merge keeps last-seen times", p.Addr, p.Seen, want)
		}
	}
	// Later wins, earlier loses; the snatch count only rises.
	added = s.Merge(ihA, []store.SeenPeer{
		sp("10.0.0.1:1", 9, true, newer),                // later: takes ID and role
		sp("10.0.0.2:1", 9, false, now.Add(-time.Hour)), // earlier: ignored
	}, 1)
	if added != 0 {
		t.Errorf("merging known peers added %d", added)
	}
	got := everyone(t, s, ihA, outsider4)
	if got[ap("10.0.0.1:1")] != id(9) || got[ap("10.0.0.2:1")] != id(2) {
		t.Errorf("after a second merge: peer IDs %v", got)
	}
	if c := s.Counts(ihA); c != (bittorrent.Counts{Seeders: 2, Leechers: 1, Snatches: 2}) {
		t.Errorf("after a second merge: counts %+v, want the later seeder and the larger snatch count", c)
	}

	// Two copies that exchange their peers agree.
	other := open(t)
	other.Apply([]bittorrent.Change{put(ihA, "10.0.0.7:1", true), complete(ihA, "10.0.0.8:1"), put(ihA, "10.0.0.2:1", true)})
	other.MergeSnatches(ihA, 7)
	mine, n1, _ := s.SeenSwarm(ihA, nil)
	theirs, n2, _ := other.SeenSwarm(ihA, nil)
	other.Merge(ihA, mine, n1)
	s.Merge(ihA, theirs, n2)
	d1, _ := s.Digest(ihA)
	d2, _ := other.Digest(ihA)
	if d1 != d2 {
		a, _, _ := s.SeenSwarm(ihA, nil)
		b, _, _ := other.SeenSwarm(ihA, nil)
		t.Errorf("copies differ after exchanging peers:\n%+v\n%+v", a, b)
	}
	if c := other.Counts(ihA); c.Seeders+c.Leechers != 5 || c.Snatches != 7 {
		t.Errorf("merged copy counts %+v, want 5 peers and the larger snatch count, 7", c)
	}
	// Nothing to merge creates nothing.
	if s.Merge(bittorrent.InfoHash{0xee}, []store.SeenPeer{sp("10.0.0.4:1", 4, true, now.Add(-8*24*time.Hour))}, 3); s.Counts(bittorrent.InfoHash{0xee}) != (bittorrent.Counts{}) {
		t.Error("a merge of only expired peers created a swarm")
	}
}
