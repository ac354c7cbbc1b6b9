package store_test

import (
	"net/netip"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// WebRTC peers share a swarm's counts with IPv4 and IPv6 peers, but only
// WebRTC announcers are given them, and they are given nothing else.
func TestWebRTCPeersKeptApart(t *testing.T) {
	m, _, _ := newMemory(t, nil)
	rtc := func(conn uint32) bittorrent.Peer {
		return bittorrent.Peer{Addr: bittorrent.WebRTCAddr(3, conn), ID: bittorrent.PeerID{byte(conn)}}
	}
	m.Apply([]bittorrent.Change{
		{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: bittorrent.OpPut, Seeder: true},
		{InfoHash: ih1, Peer: peer("[2001:db8::1]:1"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: rtc(1), Op: bittorrent.OpPut, Seeder: true},
		{InfoHash: ih1, Peer: rtc(2), Op: bittorrent.OpPut},
	})
	if c := m.Counts(ih1); c.Seeders != 2 || c.Leechers != 2 {
		t.Fatalf("counts = %+v; want 2 seeders and 2 leechers over all families", c)
	}
	for _, tc := range []struct {
		announcer netip.AddrPort
		want      func(netip.AddrPort) bool
	}{
		{netip.MustParseAddrPort("10.0.0.9:1"), func(a netip.AddrPort) bool { return a.Addr().Is4() }},
		{netip.MustParseAddrPort("[2001:db8::9]:1"), func(a netip.AddrPort) bool { return a.Addr().Is6() && !bittorrent.IsWebRTC(a) }},
		{bittorrent.WebRTCAddr(3, 1), bittorrent.IsWebRTC},
	} {
		peers, _, _ := m.AnnouncePeers(ih1, tc.announcer, false, 50, nil)
		if len(peers) == 0 {
			t.Errorf("%v: no peers", tc.announcer)
		}
		for _, p := range peers {
			if !tc.want(p.Addr) || p.Addr == tc.announcer {
				t.Errorf("%v was given %v", tc.announcer, p.Addr)
			}
		}
	}
	// A snapshot, which hands swarms over, carries the WebRTC peers too.
	snap, _, _ := m.Swarm(ih1, 0, nil)
	if len(snap) != 4 {
		t.Errorf("snapshot has %d peers; want 4", len(snap))
	}
	m.Drop(ih1)
	if st := m.Stats(); st.SeedersRTC != 0 || st.LeechersRTC != 0 {
		t.Errorf("stats after drop = %+v", st)
	}
}

func TestDropWebRTC(t *testing.T) {
	m, _, _ := newMemory(t, nil)
	var changes []bittorrent.Change
	for node := uint32(1); node <= 3; node++ {
		for conn := uint32(1); conn <= 40; conn++ { // past the index threshold
			changes = append(changes, bittorrent.Change{InfoHash: ih1, Peer: bittorrent.Peer{Addr: bittorrent.WebRTCAddr(node, conn)}, Op: bittorrent.OpPut, Seeder: conn%2 == 0})
		}
	}
	changes = append(changes, bittorrent.Change{InfoHash: ih1, Peer: peer("10.0.0.1:1"), Op: bittorrent.OpPut})
	m.Apply(changes)
	if n := m.DropWebRTC(func(node uint32) bool { return node == 2 }); n != 40 {
		t.Fatalf("dropped %d peers; want node 2's 40", n)
	}
	if c := m.Counts(ih1); c.Seeders+c.Leechers != 81 {
		t.Errorf("counts after the drop = %+v; want 81 peers", c)
	}
	peers, _, _ := m.AnnouncePeers(ih1, bittorrent.WebRTCAddr(9, 9), false, 200, nil)
	for _, p := range peers {
		if node, _, _ := bittorrent.WebRTCParts(p.Addr); node == 2 {
			t.Errorf("node 2's peer %v is still handed out", p.Addr)
		}
	}
	if len(peers) != 80 {
		t.Errorf("%d WebRTC peers left; want 80", len(peers))
	}
	// The remaining peers are still found by address (the index is intact).
	m.Apply([]bittorrent.Change{{InfoHash: ih1, Peer: bittorrent.Peer{Addr: bittorrent.WebRTCAddr(3, 5)}, Op: bittorrent.OpRemove}})
	if c := m.Counts(ih1); c.Seeders+c.Leechers != 80 {
		t.Errorf("counts after removing one = %+v; want 80", c)
	}
	if st := m.Stats(); st.SeedersRTC+st.LeechersRTC != 79 {
		t.Errorf("stats = %+v; want 79 WebRTC peers", st)
	}
}
