package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

// admit checks what Admit says about addr joining ih: nil, or want.
func admit(t *testing.T, s store.Store, ih bittorrent.InfoHash, addr string, want error) {
	t.Helper()
	err := s.Admit(ih, ap(addr))
	switch {
	case want == nil && err != nil:
		t.Errorf("Admit(%x, %s) = %v, want nil", ih[:2], addr, err)
	case want != nil && !errors.Is(err, want):
		t.Errorf("Admit(%x, %s) = %v, want %v", ih[:2], addr, err, want)
	case want != nil:
		var ce bittorrent.ClientError
		if !errors.As(err, &ce) {
			t.Errorf("Admit(%x, %s) = %v, not a client error: the client would not see why", ih[:2], addr, err)
		}
	}
}

func testMaxSwarms(t *testing.T, open func(*testing.T, store.Limits) store.Store) {
	s := open(t, store.Limits{MaxSwarms: 2})
	ihC := bittorrent.InfoHash{0xcc, 3}
	s.Apply([]bittorrent.Change{put(ihA, "10.0.0.1:1", false), put(ihB, "10.0.0.2:1", true)})
	admit(t, s, ihC, "10.0.0.3:1", store.ErrTooManySwarms)
	s.Apply([]bittorrent.Change{put(ihC, "10.0.0.3:1", false), complete(ihC, "10.0.0.4:1")})
	if c := s.Counts(ihC); c != (bittorrent.Counts{}) {
		t.Errorf("a third swarm past max_swarms 2 holds %+v", c)
	}
	s.MergeSnatches(ihC, 5)
	s.Merge(ihC, []store.SeenPeer{{Peer: bittorrent.Peer{Addr: ap("10.0.0.3:1")}, Seen: time.Now()}}, 1)
	if st := s.Stats(); st.Swarms != 2 {
		t.Errorf("Stats().Swarms = %d past max_swarms 2", st.Swarms)
	}
	// The swarms held are served as before: new peers join them, and
	// their peers refresh and leave.
	admit(t, s, ihA, "10.0.0.5:1", nil)
	s.Apply([]bittorrent.Change{put(ihA, "10.0.0.5:1", true), put(ihA, "10.0.0.1:1", true), remove(ihB, "10.0.0.2:1")})
	if c := s.Counts(ihA); c != (bittorrent.Counts{Seeders: 2}) {
		t.Errorf("swarm at the limit: counts %+v, want 2 seeders", c)
	}
	// Dropping a swarm makes room for another.
	s.Drop(ihB)
	admit(t, s, ihC, "10.0.0.3:1", nil)
	s.Apply([]bittorrent.Change{put(ihC, "10.0.0.3:1", false)})
	if c := s.Counts(ihC); c != (bittorrent.Counts{Leechers: 1}) {
		t.Errorf("after a drop: new swarm counts %+v, want a leecher", c)
	}
}

func testMaxPeers(t *testing.T, open func(*testing.T, store.Limits) store.Store) {
	s := open(t, store.Limits{MaxPeers: 3})
	s.Apply([]bittorrent.Change{put(ihA, "10.0.0.1:1", false), put(ihA, "[2001:db8::1]:1", false), put(ihB, "10.0.0.2:1", false)})
	admit(t, s, ihA, "10.0.0.3:1", store.ErrTooManyPeers)
	admit(t, s, bittorrent.InfoHash{0xcc}, "10.0.0.3:1", store.ErrTooManyPeers)
	admit(t, s, ihA, "10.0.0.1:1", nil) // held already
	s.Apply([]bittorrent.Change{
		put(ihA, "10.0.0.3:1", false),
		complete(ihA, "10.0.0.4:1"),
		put(bittorrent.InfoHash{0xcc}, "10.0.0.3:1", false),
		complete(ihA, "10.0.0.1:1"), // a peer held completes: served
	})
	if c := s.Counts(ihA); c != (bittorrent.Counts{Seeders: 1, Leechers: 1, Snatches: 1}) {
		t.Errorf("past max_peers 3: counts %+v, want the two peers held and the one snatch", c)
	}
	if st := s.Stats(); st.Swarms != 2 || st.Seeders4+st.Leechers4+st.Seeders6+st.Leechers6 != 3 {
		t.Errorf("past max_peers 3: Stats %+v", st)
	}
	// A peer leaving makes room for another.
	s.Apply([]bittorrent.Change{remove(ihB, "10.0.0.2:1"), put(ihA, "10.0.0.3:1", false)})
	if got := state(s, ihA, ap("10.0.0.3:1")); got != bittorrent.Leeching {
		t.Errorf("after a peer left: new peer is %v, want leeching", got)
	}
}

func testMaxPeersPerSource(t *testing.T, open func(*testing.T, store.Limits) store.Store) {
	s := open(t, store.Limits{MaxPeersPerSource: 3})
	// 40 other sources first, so the swarm is past the size where a
	// backend might switch from scanning its peers to an index.
	var fill []bittorrent.Change
	for i := range 40 {
		fill = append(fill, put(ihA, fmt.Sprintf("10.1.0.%d:1", i+1), false), put(ihA, fmt.Sprintf("[2001:db8:0:%x::1]:1", i+1), false))
	}
	s.Apply(fill)
	for _, tc := range []struct {
		name  string
		ports []string // the same source with other ports (or, for IPv6, other hosts of its /64)
		other string   // another source, not limited
	}{
		{"ipv4", []string{"192.0.2.1:1", "192.0.2.1:2", "192.0.2.1:3", "192.0.2.1:4"}, "192.0.2.2:4"},
		{"ipv4-mapped", []string{"[::ffff:192.0.2.9]:1", "192.0.2.9:2", "[::ffff:192.0.2.9]:3", "192.0.2.9:4"}, "192.0.2.10:4"},
		{"ipv6 /64", []string{"[2001:db8:1:1::1]:1", "[2001:db8:1:1::2]:1", "[2001:db8:1:1:ffff::3]:7", "[2001:db8:1:1::4]:1"}, "[2001:db8:1:2::4]:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ih := range []bittorrent.InfoHash{ihA, ihB} { // a big swarm and a new one
				for _, a := range tc.ports[:3] {
					admit(t, s, ih, a, nil)
					s.Apply([]bittorrent.Change{put(ih, a, false)})
				}
				admit(t, s, ih, tc.ports[3], store.ErrTooManyForSource)
				s.Apply([]bittorrent.Change{put(ih, tc.ports[3], true), complete(ih, tc.ports[3])})
				if got := state(s, ih, ap(tc.ports[3])); got != bittorrent.Absent {
					t.Errorf("swarm %x: a fourth peer of one source is %v, want absent", ih[:2], got)
				}
				// Peers held refresh; other sources join.
				admit(t, s, ih, tc.ports[0], nil)
				admit(t, s, ih, tc.other, nil)
				s.Apply([]bittorrent.Change{put(ih, tc.ports[0], true), put(ih, tc.other, false)})
				if got := state(s, ih, ap(tc.ports[0])); got != bittorrent.Seeding {
					t.Errorf("swarm %x: a held peer of a full source re-announcing as a seeder is %v", ih[:2], got)
				}
				if got := state(s, ih, ap(tc.other)); got != bittorrent.Leeching {
					t.Errorf("swarm %x: another source is %v, want leeching", ih[:2], got)
				}
				// One leaving makes room for another port.
				s.Apply([]bittorrent.Change{remove(ih, tc.ports[1]), put(ih, tc.ports[3], false)})
				if got := state(s, ih, ap(tc.ports[3])); got != bittorrent.Leeching {
					t.Errorf("swarm %x: after one left, the fourth is %v, want leeching", ih[:2], got)
				}
			}
		})
	}
	if c := s.Counts(ihB); c.Snatches != 0 {
		t.Errorf("refused completes counted %d snatches", c.Snatches)
	}
}
