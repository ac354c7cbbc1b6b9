package store

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// TestChoose pins the peer choice over positions: which groups, in which
// order, how many, never the announcer, and its state.
func TestChoose(t *testing.T) {
	tests := []struct {
		name            string
		seeders, total  int
		self            int
		seeder          bool
		n               int
		first, then     [2]int // positions [lo, hi) handed out first, then next
		wantFirst, want int    // how many from first, how many in all
		state           bittorrent.PeerState
	}{
		{"leecher gets seeders first", 4, 10, -1, false, 3, [2]int{0, 4}, [2]int{4, 10}, 3, 3, bittorrent.Absent},
		{"leecher fills from leechers", 4, 10, -1, false, 7, [2]int{0, 4}, [2]int{4, 10}, 4, 7, bittorrent.Absent},
		{"seeder gets leechers first", 4, 10, -1, true, 5, [2]int{4, 10}, [2]int{0, 4}, 5, 5, bittorrent.Absent},
		{"seeder fills from seeders", 4, 10, -1, true, 8, [2]int{4, 10}, [2]int{0, 4}, 6, 8, bittorrent.Absent},
		{"everyone", 4, 10, -1, false, 100, [2]int{0, 4}, [2]int{4, 10}, 4, 10, bittorrent.Absent},
		{"a seeding announcer is skipped", 4, 10, 2, true, 100, [2]int{4, 10}, [2]int{0, 4}, 6, 9, bittorrent.Seeding},
		{"a leeching announcer is skipped", 4, 10, 7, false, 100, [2]int{0, 4}, [2]int{4, 10}, 4, 9, bittorrent.Leeching},
		{"announcer stored as leecher announcing as seeder", 4, 10, 5, true, 100, [2]int{4, 10}, [2]int{0, 4}, 5, 9, bittorrent.Leeching},
		{"only the announcer", 0, 1, 0, false, 50, [2]int{0, 0}, [2]int{0, 1}, 0, 0, bittorrent.Leeching},
		{"no seeders", 0, 3, -1, false, 2, [2]int{0, 0}, [2]int{0, 3}, 0, 2, bittorrent.Absent},
		{"no leechers", 3, 3, -1, true, 5, [2]int{3, 3}, [2]int{0, 3}, 0, 3, bittorrent.Absent},
		{"empty", 0, 0, -1, false, 50, [2]int{0, 0}, [2]int{0, 0}, 0, 0, bittorrent.Absent},
		{"zero wanted still reports the state", 4, 10, 1, false, 0, [2]int{0, 4}, [2]int{4, 10}, 0, 0, bittorrent.Seeding},
		{"negative wanted", 4, 10, -1, false, -3, [2]int{0, 4}, [2]int{4, 10}, 0, 0, bittorrent.Absent},
		{"self out of range is not the announcer", 4, 10, 10, false, 100, [2]int{0, 4}, [2]int{4, 10}, 4, 10, bittorrent.Absent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, bufLen := range []int{1, 3, 64} {
				for range 20 { // the order is random; try several
					w, state := Choose(tt.seeders, tt.total, tt.self, tt.seeder, tt.n)
					if state != tt.state {
						t.Fatalf("state %v, want %v", state, tt.state)
					}
					var got []int
					buf := make([]int, bufLen)
					for pos := w.Fill(buf); len(pos) > 0; pos = w.Fill(buf) {
						got = append(got, pos...)
					}
					if len(got) != tt.want {
						t.Fatalf("buffer %d: %d positions %v, want %d", bufLen, len(got), got, tt.want)
					}
					seen := map[int]bool{}
					for i, p := range got {
						lo, hi := tt.then[0], tt.then[1]
						if i < tt.wantFirst {
							lo, hi = tt.first[0], tt.first[1]
						}
						switch {
						case seen[p]:
							t.Fatalf("position %d twice in %v", p, got)
						case p == tt.self:
							t.Fatalf("the announcer's position %d handed out: %v", p, got)
						case p < lo || p >= hi:
							t.Fatalf("position %d (%d of %v) outside [%d, %d)", p, i, got, lo, hi)
						}
						seen[p] = true
					}
				}
			}
		})
	}
}

// TestChooseIsRandom checks that every position comes first sooner or
// later and that orders vary, in groups small enough that a false failure
// is below 1e-8.
func TestChooseIsRandom(t *testing.T) {
	for _, size := range []int{2, 3, 10, 97} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			firsts := map[int]bool{}
			orders := map[string]bool{}
			buf := make([]int, size)
			for range 40 * size {
				w, _ := Choose(0, size, -1, false, size)
				pos := w.Fill(buf)
				firsts[pos[0]] = true
				orders[fmt.Sprint(pos[:min(3, len(pos))])] = true
			}
			if len(firsts) != size {
				t.Errorf("%d of %d positions ever came first", len(firsts), size)
			}
			if size > 2 && len(orders) < 2 {
				t.Errorf("always the same order")
			}
		})
	}
}

// TestChoosePeers is the walk over a slice, as a copy of a swarm uses it.
func TestChoosePeers(t *testing.T) {
	peers := make([]bittorrent.Peer, 70) // more than ChoosePeers's buffer
	for i := range peers {
		peers[i].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 1)
	}
	dst := []bittorrent.Peer{{Addr: netip.MustParseAddrPort("192.0.2.1:1")}}
	got, state := ChoosePeers(peers, 20, 30, false, 100, dst)
	if state != bittorrent.Leeching {
		t.Errorf("state %v, want Leeching", state)
	}
	if len(got) != 70 || got[0] != dst[0] {
		t.Fatalf("got %d peers starting %v; want dst kept and 69 appended", len(got), got[0])
	}
	seen := map[netip.AddrPort]bool{}
	for i, p := range got[1:] {
		k := slices.Index(peers, p)
		switch {
		case k < 0 || seen[p.Addr]:
			t.Fatalf("peer %v: not one of peers, or twice", p)
		case k == 30:
			t.Fatal("the announcer was handed out")
		case i < 20 && k >= 20:
			t.Fatalf("peer %d is a leecher (%d) before every seeder is out", i, k)
		}
		seen[p.Addr] = true
	}
	if n := testing.AllocsPerRun(100, func() { got, _ = ChoosePeers(peers, 20, 30, false, 50, got[:0]) }); n != 0 {
		t.Errorf("ChoosePeers: %v allocations with room in dst, want 0", n)
	}
}

// TestFamilyMatchesRecords: the family an announcer is given peers of is
// the one Memory keeps its address in.
func TestFamilyMatchesRecords(t *testing.T) {
	for _, tt := range []struct {
		addr netip.AddrPort
		want int
	}{
		{netip.MustParseAddrPort("10.0.0.1:1"), 4},
		{netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"), 4},
		{netip.MustParseAddrPort("[2001:db8::1]:1"), 6},
		{netip.MustParseAddrPort("[fe80::1%eth0]:1"), 6},
		{netip.MustParseAddrPort("10.0.0.1:0"), 4},
		{netip.AddrPort{}, 0},
	} {
		got := Family(tt.addr)
		if got != tt.want {
			t.Errorf("Family(%v) = %d, want %d", tt.addr, got, tt.want)
		}
		k, ok := makeKey(tt.addr)
		switch {
		case !ok && got != 0, ok && got == 0:
			t.Errorf("%v: makeKey ok %v, Family %d", tt.addr, ok, got)
		case ok && k.v6() != (got == 6):
			t.Errorf("%v: makeKey v6 %v, Family %d", tt.addr, k.v6(), got)
		}
	}
}
