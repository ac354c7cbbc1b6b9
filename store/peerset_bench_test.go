package store

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// BenchmarkPeerSetFind compares a linear scan with an index lookup around
// smallMax, the size at which a set switches from one to the other, with
// every peer on an address of its own and with all of them ports of one
// address (a NAT, or the clients of a benchmark on loopback).
func BenchmarkPeerSetFind(b *testing.B) {
	for _, oneSource := range []bool{false, true} {
		for _, v6 := range []bool{false, true} {
			for _, n := range []int{8, 16, 32, 64} {
				f := newFamily(v6, maphash.MakeSeed())
				var s peerSet
				var id bittorrent.PeerID
				keys := make([]addrKey, n)
				for i := range keys {
					a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
					if v6 {
						a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 8: byte(i * 7), 15: byte(i)})
					}
					port := uint16(6881)
					if oneSource {
						a, port = keysSource(v6), 6881+uint16(i)
					}
					keys[i], _ = makeKey(netip.AddrPortFrom(a, port))
					s.add(&f, keys[i].bytes(), &id, 0, i%2 == 0)
				}
				for _, indexed := range []bool{false, true} {
					b.Run(fmt.Sprintf("onesource=%v/v6=%v/n=%d/index=%v", oneSource, v6, n, indexed), func(b *testing.B) {
						if indexed {
							s.buildIndex(&f)
						} else {
							s.idx = nil
						}
						b.ReportAllocs()
						for i := 0; b.Loop(); i++ {
							if pos, _ := s.find(&f, keys[i%n].bytes()); pos < 0 {
								b.Fatal("not found")
							}
						}
					})
				}
			}
		}
	}
}

// keysSource is the one address of BenchmarkPeerSetFind's one-source sets.
func keysSource(v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	}
	return netip.AddrFrom4([4]byte{10, 0, 0, 1})
}
