package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

// snapshotByAddr indexes a Swarm snapshot by address, failing on
// duplicates and on changes that are not puts of ih.
func snapshotByAddr(t *testing.T, ih bittorrent.InfoHash, snap []bittorrent.Change) map[netip.AddrPort]bittorrent.Change {
	t.Helper()
	out := make(map[netip.AddrPort]bittorrent.Change, len(snap))
	for _, c := range snap {
		if c.InfoHash != ih || c.Op != bittorrent.OpPut {
			t.Fatalf("snapshot change %+v: want an OpPut of %x", c, ih)
		}
		if _, dup := out[c.Peer.Addr]; dup {
			t.Fatalf("snapshot has %s twice", c.Peer.Addr)
		}
		out[c.Peer.Addr] = c
	}
	return out
}

func testSwarm(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	s.Apply([]bittorrent.Change{
		putID(ihA, "10.0.0.1:6881", true, 1),
		putID(ihA, "10.0.0.2:6881", false, 2),
		putID(ihA, "[::ffff:10.0.0.3]:6881", false, 3),
		putID(ihA, "[2001:db8::1]:6881", true, 4),
		complete(ihA, "10.0.0.2:6881"), // now a seeder, one snatch
		putID(ihB, "10.0.9.9:1", false, 9),
	})
	snap, counts, ok := s.Swarm(ihA, 0, nil)
	if !ok {
		t.Fatal("Swarm: swarm does not exist")
	}
	if want := (bittorrent.Counts{Seeders: 3, Leechers: 1, Snatches: 1}); counts != want {
		t.Errorf("counts = %+v, want %+v", counts, want)
	}
	got := snapshotByAddr(t, ihA, snap)
	want := map[netip.AddrPort]struct {
		id     bittorrent.PeerID
		seeder bool
	}{
		ap("10.0.0.1:6881"):      {id(1), true},
		ap("10.0.0.2:6881"):      {id(1), true}, // the complete carried id(1)
		ap("10.0.0.3:6881"):      {id(3), false},
		ap("[2001:db8::1]:6881"): {id(4), true},
	}
	if len(got) != len(want) {
		t.Errorf("snapshot has %d peers, want %d: %v", len(got), len(want), snap)
	}
	for addr, w := range want {
		c, ok := got[addr]
		switch {
		case !ok:
			t.Errorf("peer %s missing from the snapshot", addr)
		case c.Peer.ID != w.id || c.Seeder != w.seeder:
			t.Errorf("peer %s: id %q seeder %v, want %q %v", addr, c.Peer.ID[:], c.Seeder, w.id[:], w.seeder)
		}
	}

	prefix := []bittorrent.Change{put(ihB, "10.9.9.9:9", false)}
	out, _, _ := s.Swarm(ihA, 0, prefix)
	if len(out) != 5 || out[0] != prefix[0] {
		t.Errorf("Swarm did not append to dst: got %d changes starting %+v", len(out), out[0])
	}

	if out, counts, ok := s.Swarm(bittorrent.InfoHash{0xee}, 0, prefix); ok || counts != (bittorrent.Counts{}) || len(out) != 1 {
		t.Errorf("unknown swarm: got %d changes, counts %+v, exists %v; want dst unchanged, zero, false", len(out), counts, ok)
	}
	s.Apply([]bittorrent.Change{remove(ihB, "10.0.9.9:1")})
	if _, _, ok := s.Swarm(ihB, 0, nil); !ok {
		// Backends may keep an emptied swarm until garbage collection, or
		// not; both are fine, but an existing swarm must snapshot empty.
		return
	}
	if out, counts, _ := s.Swarm(ihB, 0, nil); len(out) != 0 || counts != (bittorrent.Counts{}) {
		t.Errorf("emptied swarm: got %v, counts %+v; want nothing", out, counts)
	}
}

func testSwarmSample(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	const n4, n6 = 100, 30
	var changes []bittorrent.Change
	for i := range n4 {
		changes = append(changes, put(ihA, fmt.Sprintf("10.4.%d.%d:6881", i/200, i%200+1), i%4 == 0))
	}
	for i := range n6 {
		changes = append(changes, put(ihA, fmt.Sprintf("[2001:db8::%x]:6881", i+1), i%2 == 0))
	}
	s.Apply(changes)
	tests := []struct {
		max        int
		want4      int
		want6      int
		wantSeeds4 int // exact only when the whole family is taken
	}{
		{0, n4, n6, 25},
		{-1, n4, n6, 25},
		{n4, n4, n6, 25},
		{n4 + 1, n4, n6, 25},
		{10, 10, 10, -1},
		{1, 1, 1, -1},
		{50, 50, n6, -1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("max=%d", tt.max), func(t *testing.T) {
			seen := map[netip.AddrPort]bool{}
			for range 30 { // the sample is random; every draw must obey the limits
				snap, _, _ := s.Swarm(ihA, tt.max, nil)
				var got4, got6, seeds4 int
				for addr, c := range snapshotByAddr(t, ihA, snap) {
					seen[addr] = true
					if addr.Addr().Is4() {
						got4++
						if c.Seeder {
							seeds4++
						}
					} else {
						got6++
					}
				}
				if got4 != tt.want4 || got6 != tt.want6 {
					t.Fatalf("got %d IPv4 and %d IPv6 peers, want %d and %d", got4, got6, tt.want4, tt.want6)
				}
				if tt.wantSeeds4 >= 0 && seeds4 != tt.wantSeeds4 {
					t.Fatalf("got %d IPv4 seeders, want %d", seeds4, tt.wantSeeds4)
				}
			}
			if tt.max == 10 && len(seen) <= 20 {
				t.Errorf("30 samples of 10 per family covered only %d peers; the sample is not random", len(seen))
			}
		})
	}
}

// testSwarmRoundTrip moves a swarm the way a cluster hands it over and
// checks that the copy answers like the original.
func testSwarmRoundTrip(t *testing.T, open func(*testing.T) store.Store) {
	from, to := open(t), open(t)
	var changes []bittorrent.Change
	for i := range 60 {
		changes = append(changes, putID(ihA, fmt.Sprintf("10.5.0.%d:6881", i+1), i%3 == 0, byte(i)))
		changes = append(changes, putID(ihA, fmt.Sprintf("[2001:db8::5:%x]:6881", i+1), i%3 == 1, byte(i)))
	}
	changes = append(changes, complete(ihA, "10.5.0.2:6881"), complete(ihA, "10.5.0.3:6881"))
	from.Apply(changes)
	snap, counts, _ := from.Swarm(ihA, 0, nil)
	to.Apply(snap)
	to.MergeSnatches(ihA, counts.Snatches)
	if got := to.Counts(ihA); got != counts {
		t.Errorf("copy counts %+v, want %+v", got, counts)
	}
	for _, self := range []netip.AddrPort{outsider4, outsider6} {
		want := everyone(t, from, ihA, self)
		got := everyone(t, to, ihA, self)
		if len(got) != len(want) {
			t.Errorf("copy hands out %d peers to %s, original %d", len(got), self, len(want))
		}
		for addr, pid := range want {
			if gid := got[addr]; gid != pid {
				t.Errorf("copy: peer %s has ID %q, want %q", addr, gid[:], pid[:])
			}
		}
	}
	for _, c := range snap {
		if st := state(to, ihA, c.Peer.Addr); st != state(from, ihA, c.Peer.Addr) {
			t.Errorf("copy: %s is in state %d, original %d", c.Peer.Addr, st, state(from, ihA, c.Peer.Addr))
		}
	}
	// A handoff and a complete that reaches both the old and the new owner
	// (a forward routed by an older view) count the completion once.
	to.Apply([]bittorrent.Change{complete(ihA, "10.5.0.2:6881"), complete(ihA, "10.5.0.1:6881")})
	to.MergeSnatches(ihA, counts.Snatches)
	if got := to.Counts(ihA).Snatches; got != counts.Snatches {
		t.Errorf("completes repeated after the copy: snatches %d, want %d", got, counts.Snatches)
	}
}

func testMergeSnatches(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name   string
		before []bittorrent.Change
		merges []uint32
		want   bittorrent.Counts
	}{
		{"creates the swarm", nil, []uint32{3}, bittorrent.Counts{Snatches: 3}},
		{"raises", []bittorrent.Change{complete(ihA, "10.0.0.1:1")}, []uint32{5}, bittorrent.Counts{Seeders: 1, Snatches: 5}},
		{"never lowers", []bittorrent.Change{complete(ihA, "10.0.0.1:1"), complete(ihA, "10.0.0.2:1")}, []uint32{1}, bittorrent.Counts{Seeders: 2, Snatches: 2}},
		{"is idempotent", nil, []uint32{4, 4, 2, 4}, bittorrent.Counts{Snatches: 4}},
		{"zero into nothing", nil, []uint32{0}, bittorrent.Counts{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			s.Apply(tt.before)
			for _, n := range tt.merges {
				s.MergeSnatches(ihA, n)
			}
			if got := s.Counts(ihA); got != tt.want {
				t.Errorf("Counts = %+v, want %+v", got, tt.want)
			}
			if got := s.Counts(ihB); got != (bittorrent.Counts{}) {
				t.Errorf("another swarm's counts = %+v, want zero", got)
			}
		})
	}
}

func testRange(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	const swarms = 300
	want := map[bittorrent.InfoHash]bool{}
	var changes []bittorrent.Change
	for i := range swarms {
		ih := bittorrent.InfoHash{0x7a, byte(i >> 8), byte(i)}
		want[ih] = true
		changes = append(changes, put(ih, "10.6.0.1:6881", i%2 == 0))
	}
	s.Apply(changes)
	s.MergeSnatches(ihB, 1) // a swarm with snatches only
	want[ihB] = true

	got := map[bittorrent.InfoHash]int{}
	s.Range(func(ih bittorrent.InfoHash) bool {
		got[ih]++
		// fn may use the store, even the swarm being visited.
		s.Counts(ih)
		s.Apply([]bittorrent.Change{put(ih, "10.6.0.2:6881", false)})
		if ih == ihB {
			s.Drop(ih)
		}
		return true
	})
	for ih := range want {
		if got[ih] != 1 {
			t.Errorf("swarm %x visited %d times, want once", ih, got[ih])
		}
	}
	if len(got) != len(want) {
		t.Errorf("visited %d swarms, want %d", len(got), len(want))
	}

	var calls int
	s.Range(func(bittorrent.InfoHash) bool {
		calls++
		return calls < 10
	})
	if calls != 10 {
		t.Errorf("Range went on after fn returned false: %d calls, want 10", calls)
	}

	empty := open(t)
	empty.Range(func(ih bittorrent.InfoHash) bool {
		t.Errorf("empty store visited %x", ih)
		return true
	})
}

func testDrop(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	s.Apply([]bittorrent.Change{
		put(ihA, "10.0.0.1:1", true),
		put(ihA, "10.0.0.2:1", false),
		put(ihA, "[2001:db8::1]:1", true),
		put(ihA, "[2001:db8::2]:1", false),
		complete(ihA, "10.0.0.3:1"),
		put(ihB, "10.0.0.1:1", false),
	})
	s.Drop(ihA)
	s.Drop(bittorrent.InfoHash{0xee}) // unknown: nothing happens
	if got := s.Counts(ihA); got != (bittorrent.Counts{}) {
		t.Errorf("dropped swarm counts %+v, want zero", got)
	}
	if _, _, ok := s.Swarm(ihA, 0, nil); ok {
		t.Error("dropped swarm still exists")
	}
	if got, want := s.Stats(), (store.Stats{Swarms: 1, Leechers4: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	if got := s.Counts(ihB); got != (bittorrent.Counts{Leechers: 1}) {
		t.Errorf("other swarm counts %+v, want one leecher", got)
	}
	// The swarm can come back, without its old snatches.
	s.Apply([]bittorrent.Change{put(ihA, "10.0.0.9:1", false)})
	if got := s.Counts(ihA); got != (bittorrent.Counts{Leechers: 1}) {
		t.Errorf("recreated swarm counts %+v, want one leecher and no snatches", got)
	}
}

func testScrapeAll(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	const swarms = 3000 // more than one batch
	var changes []bittorrent.Change
	want := map[bittorrent.InfoHash]bittorrent.Counts{}
	for i := range swarms {
		ih := bittorrent.InfoHash{0x5c, byte(i >> 8), byte(i)}
		changes = append(changes, put(ih, fmt.Sprintf("10.1.%d.%d:1", i>>8, i&0xff), i%2 == 0))
		c := bittorrent.Counts{Leechers: 1}
		if i%2 == 0 {
			c = bittorrent.Counts{Seeders: 1}
		}
		if i%3 == 0 {
			changes = append(changes, complete(ih, "[2001:db8::1]:2"))
			c.Seeders++
			c.Snatches = 1
		}
		want[ih] = c
	}
	// A swarm whose only peer left has no peers and is not listed.
	gone := bittorrent.InfoHash{0x5d}
	changes = append(changes, put(gone, "10.9.9.9:1", false), remove(gone, "10.9.9.9:1"))
	s.Apply(changes)

	got := map[bittorrent.InfoHash]bittorrent.Counts{}
	batches := 0
	err := s.ScrapeAll(context.Background(), func(files []bittorrent.Scrape) error {
		batches++
		for _, f := range files {
			if _, dup := got[f.InfoHash]; dup {
				t.Errorf("swarm %x listed twice", f.InfoHash)
			}
			got[f.InfoHash] = f.Counts
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ScrapeAll: %v", err)
	}
	if len(got) != len(want) {
		t.Errorf("ScrapeAll listed %d swarms, want %d", len(got), len(want))
	}
	for ih, c := range want {
		if got[ih] != c {
			t.Errorf("swarm %x: %+v, want %+v", ih, got[ih], c)
		}
	}
	if _, ok := got[gone]; ok {
		t.Error("a swarm without peers was listed")
	}
	if batches < 2 {
		t.Errorf("%d swarms came in %d batch; want them spread over several", swarms, batches)
	}

	// Paging lists the same swarms once each, however small the pages.
	paged := map[bittorrent.InfoHash]bittorrent.Counts{}
	var (
		page   []bittorrent.Scrape
		cursor uint64
		done   bool
		pages  int
	)
	for !done {
		if pages++; pages > 10*swarms {
			t.Fatal("ScrapePage never reports done")
		}
		page, cursor, done = s.ScrapePage(cursor, 100, page[:0])
		for _, f := range page {
			if _, dup := paged[f.InfoHash]; dup {
				t.Errorf("ScrapePage listed %x twice", f.InfoHash)
			}
			paged[f.InfoHash] = f.Counts
		}
	}
	if !maps.Equal(paged, want) {
		t.Errorf("ScrapePage listed %d swarms, want the %d of ScrapeAll", len(paged), len(want))
	}
	if pages < 2 {
		t.Errorf("%d swarms in pages of 100 came in %d page", swarms, pages)
	}

	// An error from fn stops the listing and is returned.
	stop := errors.New("client went away")
	calls := 0
	if err := s.ScrapeAll(context.Background(), func([]bittorrent.Scrape) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ScrapeAll with a failing fn = %v after %d calls; want the error after 1", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.ScrapeAll(ctx, func([]bittorrent.Scrape) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("ScrapeAll with a cancelled context = %v, want context.Canceled", err)
	}
}
