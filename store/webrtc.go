package store

import (
	"encoding/binary"
)

// DropWebRTC removes the WebRTC peers whose node (bittorrent.WebRTCParts)
// gone reports true for, as when that node has left the cluster and its
// sockets with it, and returns how many it removed. Swarms left empty
// are collected by the next garbage collection.
func (m *Memory) DropWebRTC(gone func(node uint32) bool) (removed int) {
	m.gcMu.Lock() // the collector relies on being alone in removing peers in bulk
	defer m.gcMu.Unlock()
	f := &m.famRTC
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for pos := range sh.tab.n {
			sw := sh.tab.at(pos)
			s := sh.set(sw, f)
			n := 0
			for j := 0; j < int(s.n); {
				// A WebRTC address is 100::/64, then the node, then
				// the socket (bittorrent.WebRTCAddr).
				if gone(binary.BigEndian.Uint32(s.rec(f, j)[8:12])) {
					sh.npeers[kindIndex(f, j < s.seeders())].Add(-1)
					s.remove(f, j)
					n++
					continue
				}
				j++
			}
			if n > 0 {
				s.shrink(f)
				sh.putSet(sw, f, s)
				m.peers.give(int64(n))
				removed += n
			}
		}
		sh.mu.Unlock()
	}
	return removed
}
