// Package storetest is the conformance suite for store.Store: every backend
// runs Run, so all of them keep swarms and choose peers the same way.
package storetest

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

// Run checks every behaviour documented on store.Store. newStore must return
// a new, empty store with the given limits (a zero field: no limit) each
// time it is called; Run closes it when the subtest that asked for it ends.
// Nothing here depends on time passing, so peer expiry is left to
// backend-specific tests.
func Run(t *testing.T, newStore func(t *testing.T, lim store.Limits) store.Store) {
	openLimited := func(t *testing.T, lim store.Limits) store.Store {
		t.Helper()
		s := newStore(t, lim)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	open := func(t *testing.T) store.Store {
		t.Helper()
		return openLimited(t, store.Limits{})
	}
	t.Run("Apply", func(t *testing.T) { testApply(t, open) })
	t.Run("PeerIDs", func(t *testing.T) { testPeerIDs(t, open) })
	t.Run("Families", func(t *testing.T) { testFamilies(t, open) })
	t.Run("NeverTheAnnouncer", func(t *testing.T) { testNeverTheAnnouncer(t, open) })
	t.Run("Preference", func(t *testing.T) { testPreference(t, open) })
	t.Run("NumWant", func(t *testing.T) { testNumWant(t, open) })
	t.Run("Random", func(t *testing.T) { testRandom(t, open) })
	t.Run("LargeSwarm", func(t *testing.T) { testLargeSwarm(t, open) })
	t.Run("Stats", func(t *testing.T) { testStats(t, open) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, open) })
	t.Run("Swarm", func(t *testing.T) { testSwarm(t, open) })
	t.Run("SwarmSample", func(t *testing.T) { testSwarmSample(t, open) })
	t.Run("SwarmRoundTrip", func(t *testing.T) { testSwarmRoundTrip(t, open) })
	t.Run("MergeSnatches", func(t *testing.T) { testMergeSnatches(t, open) })
	t.Run("Range", func(t *testing.T) { testRange(t, open) })
	t.Run("Drop", func(t *testing.T) { testDrop(t, open) })
	t.Run("ScrapeAll", func(t *testing.T) { testScrapeAll(t, open) })
	t.Run("Digests", func(t *testing.T) { testDigests(t, open) })
	t.Run("Merge", func(t *testing.T) { testMerge(t, open) })
	t.Run("MaxSwarms", func(t *testing.T) { testMaxSwarms(t, openLimited) })
	t.Run("MaxPeers", func(t *testing.T) { testMaxPeers(t, openLimited) })
	t.Run("MaxPeersPerSource", func(t *testing.T) { testMaxPeersPerSource(t, openLimited) })
}

var (
	ihA = bittorrent.InfoHash{0xaa, 1}
	ihB = bittorrent.InfoHash{0xbb, 2}
)

// ap parses an address and port, such as "10.0.0.1:6881" or "[2001:db8::1]:6881".
func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// id makes a recognisable peer ID.
func id(b byte) bittorrent.PeerID {
	var p bittorrent.PeerID
	copy(p[:], "-KT0001-")
	for i := 8; i < len(p); i++ {
		p[i] = b
	}
	return p
}

func put(ih bittorrent.InfoHash, addr string, seeder bool) bittorrent.Change {
	return bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{ID: id(1), Addr: ap(addr)}, Op: bittorrent.OpPut, Seeder: seeder}
}

func putID(ih bittorrent.InfoHash, addr string, seeder bool, pid byte) bittorrent.Change {
	c := put(ih, addr, seeder)
	c.Peer.ID = id(pid)
	return c
}

func complete(ih bittorrent.InfoHash, addr string) bittorrent.Change {
	return bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{ID: id(1), Addr: ap(addr)}, Op: bittorrent.OpComplete, Seeder: true}
}

// repeat returns n copies of c.
func repeat(c bittorrent.Change, n int) []bittorrent.Change {
	out := make([]bittorrent.Change, n)
	for i := range out {
		out[i] = c
	}
	return out
}

// completeBatch is a batch as a node forwards it: a put of a leecher and
// its complete for each address, in swarm ihA.
func completeBatch(addrs ...string) []bittorrent.Change {
	var out []bittorrent.Change
	for _, a := range addrs {
		out = append(out, put(ihA, a, false), complete(ihA, a))
	}
	return out
}

func remove(ih bittorrent.InfoHash, addr string) bittorrent.Change {
	return bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{ID: id(1), Addr: ap(addr)}, Op: bittorrent.OpRemove}
}

// state returns addr's state in ih, as AnnouncePeers reports it.
func state(s store.Store, ih bittorrent.InfoHash, addr netip.AddrPort) bittorrent.PeerState {
	_, _, st := s.AnnouncePeers(ih, addr, false, 0, nil)
	return st
}

// everyone returns all peers of addr's family in ih that addr would be
// given, keyed by address, failing on duplicates.
func everyone(t *testing.T, s store.Store, ih bittorrent.InfoHash, addr netip.AddrPort) map[netip.AddrPort]bittorrent.PeerID {
	t.Helper()
	peers, _, _ := s.AnnouncePeers(ih, addr, false, 1<<20, nil)
	return byAddr(t, peers)
}

func byAddr(t *testing.T, peers []bittorrent.Peer) map[netip.AddrPort]bittorrent.PeerID {
	t.Helper()
	m := make(map[netip.AddrPort]bittorrent.PeerID, len(peers))
	for _, p := range peers {
		if _, dup := m[p.Addr]; dup {
			t.Errorf("peer %s returned twice", p.Addr)
		}
		m[p.Addr] = p.ID
	}
	return m
}

// outsider4 and outsider6 are announcers that are never in a swarm.
var (
	outsider4 = ap("192.0.2.200:1")
	outsider6 = ap("[2001:db8::ffff]:1")
)

func testApply(t *testing.T, open func(*testing.T) store.Store) {
	const (
		a4  = "10.0.0.1:6881"
		b4  = "10.0.0.2:6881"
		a6  = "[2001:db8::1]:6881"
		m4  = "[::ffff:10.0.0.1]:6881" // a4, IPv4-mapped
		a4p = "10.0.0.1:6882"          // a4's address with another port
	)
	tests := []struct {
		name    string
		changes []bittorrent.Change
		counts  bittorrent.Counts // of ihA
		stats   store.Stats
		states  map[string]bittorrent.PeerState // in ihA
	}{
		{
			name:    "empty store",
			changes: nil,
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent},
		},
		{
			name:    "put leecher",
			changes: []bittorrent.Change{put(ihA, a4, false)},
			counts:  bittorrent.Counts{Leechers: 1},
			stats:   store.Stats{Swarms: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Leeching, b4: bittorrent.Absent},
		},
		{
			name:    "put seeder",
			changes: []bittorrent.Change{put(ihA, a4, true)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name:    "re-announce is no duplicate",
			changes: []bittorrent.Change{put(ihA, a4, false), put(ihA, a4, false), putID(ihA, a4, false, 9)},
			counts:  bittorrent.Counts{Leechers: 1},
			stats:   store.Stats{Swarms: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Leeching},
		},
		{
			name:    "put moves leecher to seeders",
			changes: []bittorrent.Change{put(ihA, a4, false), put(ihA, b4, false), put(ihA, a4, true)},
			counts:  bittorrent.Counts{Seeders: 1, Leechers: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding, b4: bittorrent.Leeching},
		},
		{
			name:    "put moves seeder to leechers",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihA, b4, true), put(ihA, a4, false)},
			counts:  bittorrent.Counts{Seeders: 1, Leechers: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Leeching, b4: bittorrent.Seeding},
		},
		{
			name:    "complete makes a leecher a seeder and counts a snatch",
			changes: []bittorrent.Change{put(ihA, a4, false), complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1, Snatches: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name:    "complete of an unknown peer adds a seeder",
			changes: []bittorrent.Change{complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1, Snatches: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name: "complete with Seeder false still seeds",
			changes: []bittorrent.Change{{
				InfoHash: ihA, Peer: bittorrent.Peer{ID: id(1), Addr: ap(a4)}, Op: bittorrent.OpComplete,
			}},
			counts: bittorrent.Counts{Seeders: 1, Snatches: 1},
			stats:  store.Stats{Swarms: 1, Seeders4: 1},
			states: map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name:    "a complete counts once per peer",
			changes: append(repeat(complete(ihA, a4), 50), complete(ihA, b4), complete(ihA, m4)),
			counts:  bittorrent.Counts{Seeders: 2, Snatches: 2},
			stats:   store.Stats{Swarms: 1, Seeders4: 2},
		},
		{
			// A forward retried after its acknowledgement was lost reaches
			// the owner twice.
			name:    "a batch applied twice counts its completes once",
			changes: append(completeBatch(a4, a6), completeBatch(a4, a6)...),
			counts:  bittorrent.Counts{Seeders: 2, Snatches: 2},
			stats:   store.Stats{Swarms: 1, Seeders4: 1, Seeders6: 1},
		},
		{
			name:    "a seeder's complete counts nothing",
			changes: []bittorrent.Change{put(ihA, a4, true), complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name:    "a peer that leeches again does not complete again",
			changes: []bittorrent.Change{complete(ihA, a4), put(ihA, a4, false), complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1, Snatches: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
		},
		{
			name:    "a seeder that leeches again does not complete",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihA, a4, false), complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
		},
		{
			name:    "a peer that stopped counts its next complete",
			changes: []bittorrent.Change{complete(ihA, a4), remove(ihA, a4), complete(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1, Snatches: 2},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
		},
		{
			name:    "remove leecher",
			changes: []bittorrent.Change{put(ihA, a4, false), put(ihA, b4, false), remove(ihA, a4)},
			counts:  bittorrent.Counts{Leechers: 1},
			stats:   store.Stats{Swarms: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent, b4: bittorrent.Leeching},
		},
		{
			name:    "remove seeder",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihA, b4, true), remove(ihA, a4)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent, b4: bittorrent.Seeding},
		},
		{
			name:    "remove of an unknown peer changes nothing",
			changes: []bittorrent.Change{put(ihA, a4, true), remove(ihA, b4), remove(ihA, a6)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding},
		},
		{
			name:    "remove in an unknown swarm creates nothing",
			changes: []bittorrent.Change{remove(ihA, a4), remove(ihA, a6)},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent},
		},
		{
			name:    "changes apply in order: put then remove",
			changes: []bittorrent.Change{put(ihB, b4, true), put(ihA, a4, true), remove(ihA, a4)},
			stats:   store.Stats{Swarms: 2, Seeders4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent},
		},
		{
			name:    "changes apply in order: remove then put",
			changes: []bittorrent.Change{put(ihA, a4, true), remove(ihA, a4), put(ihA, a4, false)},
			counts:  bittorrent.Counts{Leechers: 1},
			stats:   store.Stats{Swarms: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Leeching},
		},
		{
			name:    "same address with another port is another peer",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihA, a4p, false)},
			counts:  bittorrent.Counts{Seeders: 1, Leechers: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding, a4p: bittorrent.Leeching},
		},
		{
			name:    "families are counted apart",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihA, a6, false), put(ihA, "[2001:db8::2]:1", true)},
			counts:  bittorrent.Counts{Seeders: 2, Leechers: 1},
			stats:   store.Stats{Swarms: 1, Seeders4: 1, Seeders6: 1, Leechers6: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding, a6: bittorrent.Leeching},
		},
		{
			name:    "mapped address is the IPv4 peer",
			changes: []bittorrent.Change{put(ihA, m4, true), put(ihA, a4, false)},
			counts:  bittorrent.Counts{Leechers: 1},
			stats:   store.Stats{Swarms: 1, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Leeching, m4: bittorrent.Leeching},
		},
		{
			name:    "remove by mapped address",
			changes: []bittorrent.Change{put(ihA, a4, true), remove(ihA, m4)},
			stats:   store.Stats{Swarms: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Absent},
		},
		{
			name:    "swarms are independent",
			changes: []bittorrent.Change{put(ihA, a4, true), put(ihB, a4, false), complete(ihB, b4)},
			counts:  bittorrent.Counts{Seeders: 1},
			stats:   store.Stats{Swarms: 2, Seeders4: 2, Leechers4: 1},
			states:  map[string]bittorrent.PeerState{a4: bittorrent.Seeding, b4: bittorrent.Absent},
		},
		{
			name: "malformed changes are ignored",
			changes: []bittorrent.Change{
				{InfoHash: ihA, Op: bittorrent.OpPut, Seeder: true},                                            // zero address
				{InfoHash: ihA, Peer: bittorrent.Peer{Addr: ap("10.0.0.1:0")}, Op: bittorrent.OpPut},           // port 0
				{InfoHash: ihA, Peer: bittorrent.Peer{Addr: ap("[2001:db8::1]:0")}, Op: bittorrent.OpComplete}, // port 0
				{InfoHash: ihA, Peer: bittorrent.Peer{Addr: ap(a4)}, Op: 0},                                    // unknown op
				{InfoHash: ihA, Peer: bittorrent.Peer{Addr: ap(a4)}, Op: 99},                                   // unknown op
				{InfoHash: ihA, Op: bittorrent.OpRemove},
			},
			states: map[string]bittorrent.PeerState{a4: bittorrent.Absent, "10.0.0.1:0": bittorrent.Absent},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			s.Apply(tt.changes)
			if got := s.Counts(ihA); got != tt.counts {
				t.Errorf("Counts = %+v, want %+v", got, tt.counts)
			}
			if got := s.Stats(); got != tt.stats {
				t.Errorf("Stats = %+v, want %+v", got, tt.stats)
			}
			for addr, want := range tt.states {
				if got := state(s, ihA, ap(addr)); got != want {
					t.Errorf("state of %s = %d, want %d", addr, got, want)
				}
			}
			_, counts, _ := s.AnnouncePeers(ihA, outsider4, true, 0, nil)
			if counts != tt.counts {
				t.Errorf("AnnouncePeers counts = %+v, want %+v", counts, tt.counts)
			}
		})
	}
}

func testPeerIDs(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	s.Apply([]bittorrent.Change{
		putID(ihA, "10.0.0.1:6881", false, 1),
		putID(ihA, "10.0.0.2:6881", true, 2),
		putID(ihA, "[::ffff:10.0.0.3]:6881", true, 3),
		putID(ihA, "10.0.0.1:6881", true, 4), // re-announce with a new ID
	})
	got := everyone(t, s, ihA, outsider4)
	want := map[netip.AddrPort]bittorrent.PeerID{
		ap("10.0.0.1:6881"): id(4),
		ap("10.0.0.2:6881"): id(2),
		ap("10.0.0.3:6881"): id(3), // returned unmapped
	}
	if len(got) != len(want) {
		t.Errorf("got %d peers %v, want %d", len(got), got, len(want))
	}
	for addr, wid := range want {
		if gid, ok := got[addr]; !ok {
			t.Errorf("peer %s missing", addr)
		} else if gid != wid {
			t.Errorf("peer %s has ID %q, want %q", addr, gid[:], wid[:])
		}
	}
}

func testFamilies(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	var changes []bittorrent.Change
	for i := range 5 {
		changes = append(changes,
			put(ihA, fmt.Sprintf("10.0.1.%d:6881", i+1), i%2 == 0),
			put(ihA, fmt.Sprintf("[2001:db8::%d]:6881", i+1), i%2 == 1),
		)
	}
	s.Apply(changes)
	tests := []struct {
		name      string
		announcer netip.AddrPort
		want4     bool
		want      int // peers handed out: 5 of the family, less the announcer
	}{
		{"ipv4 announcer", outsider4, true, 5},
		{"mapped announcer", ap("[::ffff:192.0.2.200]:1"), true, 5},
		{"ipv6 announcer", outsider6, false, 5},
		{"ipv4 member", ap("10.0.1.1:6881"), true, 4},
		{"ipv6 member", ap("[2001:db8::1]:6881"), false, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, seeder := range []bool{false, true} {
				peers, counts, _ := s.AnnouncePeers(ihA, tt.announcer, seeder, 100, nil)
				if len(peers) != tt.want {
					t.Errorf("seeder=%v: got %d peers, want %d", seeder, len(peers), tt.want)
				}
				for _, p := range peers {
					if p.Addr.Addr().Is4() != tt.want4 || p.Addr.Addr().Is4In6() {
						t.Errorf("seeder=%v: got peer %s of the other family", seeder, p.Addr)
					}
				}
				if wantCounts := (bittorrent.Counts{Seeders: 5, Leechers: 5}); counts != wantCounts {
					t.Errorf("counts = %+v, want %+v (both families)", counts, wantCounts)
				}
			}
		})
	}
	t.Run("invalid announcer", func(t *testing.T) {
		// An announcer without a valid address belongs to no family and
		// is given no peers of either.
		peers, counts, st := s.AnnouncePeers(ihA, netip.AddrPort{}, false, 100, nil)
		if len(peers) != 0 || st != bittorrent.Absent {
			t.Errorf("got %d peers %v, state %d; want none, Absent", len(peers), peers, st)
		}
		if want := (bittorrent.Counts{Seeders: 5, Leechers: 5}); counts != want {
			t.Errorf("counts = %+v, want %+v (both families)", counts, want)
		}
	})
	if got, want := s.Stats(), (store.Stats{Swarms: 1, Seeders4: 3, Leechers4: 2, Seeders6: 2, Leechers6: 3}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func testNeverTheAnnouncer(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name      string
		members   []bittorrent.Change
		announcer string
		seeder    bool
		state     bittorrent.PeerState
		want      int
	}{
		{
			name:      "leecher among leechers",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", false), put(ihA, "10.0.0.2:1", false), put(ihA, "10.0.0.3:1", true)},
			announcer: "10.0.0.1:1", state: bittorrent.Leeching, want: 2,
		},
		{
			name:      "seeder among seeders",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", true), put(ihA, "10.0.0.2:1", true), put(ihA, "10.0.0.3:1", false)},
			announcer: "10.0.0.1:1", seeder: true, state: bittorrent.Seeding, want: 2,
		},
		{
			name:      "announcing as seeder while stored as leecher",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", false), put(ihA, "10.0.0.2:1", true)},
			announcer: "10.0.0.1:1", seeder: true, state: bittorrent.Leeching, want: 1,
		},
		{
			name:      "announcer by mapped address",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", true), put(ihA, "10.0.0.2:1", true)},
			announcer: "[::ffff:10.0.0.1]:1", state: bittorrent.Seeding, want: 1,
		},
		{
			name:      "ipv6 announcer",
			members:   []bittorrent.Change{put(ihA, "[2001:db8::1]:1", false), put(ihA, "[2001:db8::2]:1", false)},
			announcer: "[2001:db8::1]:1", state: bittorrent.Leeching, want: 1,
		},
		{
			name:      "only member",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", false)},
			announcer: "10.0.0.1:1", state: bittorrent.Leeching, want: 0,
		},
		{
			name:      "same address other port is not the announcer",
			members:   []bittorrent.Change{put(ihA, "10.0.0.1:1", false), put(ihA, "10.0.0.1:2", false)},
			announcer: "10.0.0.1:1", state: bittorrent.Leeching, want: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			s.Apply(tt.members)
			self := ap(tt.announcer)
			for range 20 { // the choice is random; try several
				peers, _, st := s.AnnouncePeers(ihA, self, tt.seeder, 50, nil)
				if st != tt.state {
					t.Fatalf("state = %d, want %d", st, tt.state)
				}
				if len(peers) != tt.want {
					t.Fatalf("got %d peers %v, want %d", len(peers), peers, tt.want)
				}
				for _, p := range peers {
					if p.Addr == netip.AddrPortFrom(self.Addr().Unmap(), self.Port()) {
						t.Fatalf("announcer %s was given itself", tt.announcer)
					}
				}
			}
		})
	}
}

func testPreference(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	seeders := map[netip.AddrPort]bool{}
	var changes []bittorrent.Change
	for i := range 6 {
		addr := fmt.Sprintf("10.0.2.%d:6881", i+1)
		changes = append(changes, put(ihA, addr, true))
		seeders[ap(addr)] = true
	}
	for i := range 4 {
		changes = append(changes, put(ihA, fmt.Sprintf("10.0.3.%d:6881", i+1), false))
	}
	s.Apply(changes)
	tests := []struct {
		name          string
		announcer     netip.AddrPort
		seeder        bool
		n             int
		seeds, leechs int
	}{
		{"leecher wants fewer than the seeders", outsider4, false, 3, 3, 0},
		{"leecher wants all seeders", outsider4, false, 6, 6, 0},
		{"leecher fills from leechers", outsider4, false, 8, 6, 2},
		{"leecher wants everyone", outsider4, false, 50, 6, 4},
		{"seeder wants fewer than the leechers", outsider4, true, 3, 0, 3},
		{"seeder wants all leechers", outsider4, true, 4, 0, 4},
		{"seeder fills from seeders", outsider4, true, 7, 3, 4},
		{"seeder wants everyone", outsider4, true, 50, 6, 4},
		{"member leecher fills from leechers", ap("10.0.3.1:6881"), false, 8, 6, 2},
		{"member seeder skips itself when filling", ap("10.0.2.1:6881"), true, 50, 5, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 20 {
				peers, _, _ := s.AnnouncePeers(ihA, tt.announcer, tt.seeder, tt.n, nil)
				byAddr(t, peers) // no duplicates
				var seeds, leechs int
				for _, p := range peers {
					if seeders[p.Addr] {
						seeds++
					} else {
						leechs++
					}
				}
				if seeds != tt.seeds || leechs != tt.leechs {
					t.Fatalf("got %d seeders and %d leechers, want %d and %d", seeds, leechs, tt.seeds, tt.leechs)
				}
			}
		})
	}
}

func testNumWant(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	var changes []bittorrent.Change
	for i := range 10 {
		changes = append(changes, put(ihA, fmt.Sprintf("10.0.4.%d:6881", i+1), i < 5))
	}
	s.Apply(changes)
	sentinel := bittorrent.Peer{ID: id(0xee), Addr: ap("203.0.113.1:9")}
	tests := []struct {
		name string
		ih   bittorrent.InfoHash
		n    int
		want int
	}{
		{"zero", ihA, 0, 0},
		{"negative", ihA, -1, 0},
		{"one", ihA, 1, 1},
		{"some", ihA, 7, 7},
		{"exactly all", ihA, 10, 10},
		{"more than all", ihA, 1000, 10},
		{"unknown swarm", ihB, 50, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]bittorrent.Peer, 1, 64)
			dst[0] = sentinel
			peers, counts, st := s.AnnouncePeers(tt.ih, outsider4, false, tt.n, dst)
			if len(peers) != 1+tt.want {
				t.Fatalf("got %d peers, want %d", len(peers)-1, tt.want)
			}
			if peers[0] != sentinel {
				t.Errorf("dst[0] = %v, want it kept (peers are appended)", peers[0])
			}
			byAddr(t, peers)
			if st != bittorrent.Absent {
				t.Errorf("state = %d, want Absent", st)
			}
			want := bittorrent.Counts{Seeders: 5, Leechers: 5}
			if tt.ih != ihA {
				want = bittorrent.Counts{}
			}
			if counts != want {
				t.Errorf("counts = %+v, want %+v", counts, want)
			}
		})
	}
	t.Run("invalid announcer", func(t *testing.T) {
		peers, counts, st := s.AnnouncePeers(ihA, netip.AddrPort{}, false, 50, nil)
		if len(peers) != 0 || st != bittorrent.Absent {
			t.Errorf("got %d peers, state %d; want none, Absent", len(peers), st)
		}
		if want := (bittorrent.Counts{Seeders: 5, Leechers: 5}); counts != want {
			t.Errorf("counts = %+v, want %+v", counts, want)
		}
	})
	t.Run("announcer port 0", func(t *testing.T) {
		peers, _, st := s.AnnouncePeers(ihA, ap("10.0.4.1:0"), false, 50, nil)
		if len(peers) != 10 || st != bittorrent.Absent {
			t.Errorf("got %d peers, state %d; want 10, Absent", len(peers), st)
		}
	})
}

// testRandom checks that every peer is handed out sooner or later, in
// groups small enough that the chance of a false failure is below 1e-8.
func testRandom(t *testing.T, open func(*testing.T) store.Store) {
	tests := []struct {
		name  string
		size  int
		n     int
		calls int
	}{
		{"small swarm", 10, 1, 300},
		{"small swarm pairs", 10, 2, 200},
		{"large swarm", 300, 30, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			var changes []bittorrent.Change
			for i := range tt.size {
				changes = append(changes, put(ihA, fmt.Sprintf("10.1.%d.%d:6881", i/250, i%250+1), false))
			}
			s.Apply(changes)
			seen := map[netip.AddrPort]int{}
			firsts := map[netip.AddrPort]bool{}
			var buf []bittorrent.Peer
			for range tt.calls {
				buf, _, _ = s.AnnouncePeers(ihA, outsider4, false, tt.n, buf[:0])
				if len(buf) != tt.n {
					t.Fatalf("got %d peers, want %d", len(buf), tt.n)
				}
				firsts[buf[0].Addr] = true
				for _, p := range buf {
					seen[p.Addr]++
				}
			}
			if len(seen) != tt.size {
				t.Errorf("%d of %d peers were ever handed out", len(seen), tt.size)
			}
			if len(firsts) < 2 {
				t.Errorf("every answer started with the same peer")
			}
		})
	}
}

// testLargeSwarm runs swarms large enough for backends to switch data
// structures, through growth, moves and shrinking.
func testLargeSwarm(t *testing.T, open func(*testing.T) store.Store) {
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			s := open(t)
			addr := func(i int) string {
				if fam == "ipv6" {
					return fmt.Sprintf("[2001:db8::%x]:%d", i+1, 1000+i%7)
				}
				return fmt.Sprintf("10.2.%d.%d:%d", i/200, i%200+1, 1000+i%7)
			}
			self := outsider4
			if fam == "ipv6" {
				self = outsider6
			}
			const size = 1000
			var changes []bittorrent.Change
			for i := range size {
				changes = append(changes, put(ihA, addr(i), i%3 == 0))
			}
			s.Apply(changes)
			s.Apply(changes) // all again: no duplicates
			check := func(stage string, seeders, leechers int) {
				t.Helper()
				c := s.Counts(ihA)
				if int(c.Seeders) != seeders || int(c.Leechers) != leechers {
					t.Fatalf("%s: counts %+v, want %d seeders, %d leechers", stage, c, seeders, leechers)
				}
				if got := len(everyone(t, s, ihA, self)); got != seeders+leechers {
					t.Fatalf("%s: %d peers handed out, want %d", stage, got, seeders+leechers)
				}
			}
			check("filled", 334, 666)

			changes = changes[:0]
			for i := range size {
				changes = append(changes, put(ihA, addr(i), i%3 != 0)) // swap the groups
			}
			s.Apply(changes)
			check("swapped", 666, 334)

			changes = changes[:0]
			for i := range size {
				if i%10 != 0 {
					changes = append(changes, remove(ihA, addr(i)))
				}
			}
			s.Apply(changes)
			check("mostly removed", 66, 34) // i%10 == 0 kept; i%30 == 0 of them leech
			for i := range size {
				want := bittorrent.Absent
				if i%10 == 0 {
					want = bittorrent.Leeching
					if i%3 != 0 {
						want = bittorrent.Seeding
					}
				}
				if got := state(s, ihA, ap(addr(i))); got != want {
					t.Fatalf("state of %s = %d, want %d", addr(i), got, want)
				}
			}

			changes = changes[:0]
			for i := range size {
				changes = append(changes, remove(ihA, addr(i)))
			}
			s.Apply(changes)
			check("emptied", 0, 0)
		})
	}
}

func testStats(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	var changes []bittorrent.Change
	var want store.Stats
	for sw := range 20 {
		ih := bittorrent.InfoHash{0x5a, byte(sw)}
		for p := range sw + 1 {
			seeder := p%2 == 0
			if sw%4 == 0 {
				changes = append(changes, put(ih, fmt.Sprintf("[2001:db8::%d:%d]:1", sw, p+1), seeder))
				if seeder {
					want.Seeders6++
				} else {
					want.Leechers6++
				}
			} else {
				changes = append(changes, put(ih, fmt.Sprintf("10.3.%d.%d:1", sw, p+1), seeder))
				if seeder {
					want.Seeders4++
				} else {
					want.Leechers4++
				}
			}
		}
		want.Swarms++
	}
	s.Apply(changes)
	if got := s.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

// testConcurrent has writers churn their own peers while readers announce
// and scrape; after the writers settle every peer, the counts must add up.
// Run it with -race.
func testConcurrent(t *testing.T, open func(*testing.T) store.Store) {
	s := open(t)
	const (
		writers = 6
		readers = 4
		rounds  = 300
		peers   = 40 // per writer, spread over the swarms
		swarms  = 4
	)
	ih := func(i int) bittorrent.InfoHash { return bittorrent.InfoHash{0xcc, byte(i % swarms)} }
	addr := func(w, p int) netip.AddrPort {
		if p%3 == 2 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(w)}), uint16(1000+p))
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(w), byte(p)}), uint16(1000+p))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := range readers {
		wg.Go(func() {
			var buf []bittorrent.Peer
			// Bounded, so that spinning readers cannot starve the writers
			// on a busy machine.
			for i := range 4000 {
				select {
				case <-stop:
					return
				default:
				}
				buf, _, _ = s.AnnouncePeers(ih(i), addr(r, i%peers), i%2 == 0, 50, buf[:0])
				s.Counts(ih(i + 1))
				if i%64 == 0 {
					s.Stats()
				}
			}
		})
	}
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			batch := make([]bittorrent.Change, 0, 16)
			for i := range rounds * peers / 8 {
				p := i % peers
				c := bittorrent.Change{InfoHash: ih(p), Peer: bittorrent.Peer{ID: id(byte(w)), Addr: addr(w, p)}, Op: bittorrent.OpPut}
				switch i % 5 {
				case 0:
					c.Op = bittorrent.OpRemove
				case 1:
					c.Op = bittorrent.OpComplete
				case 2:
					c.Seeder = true
				}
				batch = append(batch, c)
				if len(batch) == cap(batch) {
					s.Apply(batch)
					batch = batch[:0]
				}
			}
			s.Apply(batch)
			// Settle: even peers seed, odd ones leech, every fifth leaves.
			batch = batch[:0]
			for p := range peers {
				c := bittorrent.Change{InfoHash: ih(p), Peer: bittorrent.Peer{ID: id(byte(w)), Addr: addr(w, p)}, Op: bittorrent.OpPut, Seeder: p%2 == 0}
				if p%5 == 4 {
					c.Op = bittorrent.OpRemove
				}
				batch = append(batch, c)
			}
			s.Apply(batch)
		})
	}
	writersWG.Wait()
	close(stop)
	wg.Wait()

	var want store.Stats
	for p := range peers {
		if p%5 == 4 {
			continue
		}
		switch v6, seeder := p%3 == 2, p%2 == 0; {
		case v6 && seeder:
			want.Seeders6 += writers
		case v6:
			want.Leechers6 += writers
		case seeder:
			want.Seeders4 += writers
		default:
			want.Leechers4 += writers
		}
	}
	got := s.Stats()
	got.Swarms = 0 // may include swarms emptied along the way
	if got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	var total bittorrent.Counts
	for i := range swarms {
		c := s.Counts(ih(i))
		total.Seeders += c.Seeders
		total.Leechers += c.Leechers
	}
	if int(total.Seeders) != want.Seeders4+want.Seeders6 || int(total.Leechers) != want.Leechers4+want.Leechers6 {
		t.Errorf("sum of Counts = %+v, want %d seeders, %d leechers", total, want.Seeders4+want.Seeders6, want.Leechers4+want.Leechers6)
	}
}
