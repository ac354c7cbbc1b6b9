package store

import (
	"encoding/binary"
)

// DropWebRTC removes the WebRTC peers whose node (bittorrent.WebRTCParts)
// gone reports true for, as when that node has left the cluster and its
// sockets with it, and returns how many it removed. Swarms left empty
// are collected by the next garbage collection.
func (m *Memory) DropWebRTC(gone func(node uint32) bool) (removed int) {
	m.gcMu.Lock() // the collector relies on being alone in dropping sets
	defer m.gcMu.Unlock()
	f := &m.famRTC
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for _, sw := range sh.swarms {
			s := sw.rtc
			if s == nil {
				continue
			}
			for j := 0; j < int(s.n); {
				// A WebRTC address is 100::/64, then the node, then
				// the socket (bittorrent.WebRTCAddr).
				if gone(binary.BigEndian.Uint32(s.rec(f, j)[8:12])) {
					sh.npeers[kindIndex(f, j < s.seeders())].Add(-1)
					s.remove(f, j)
					removed++
					continue
				}
				j++
			}
			if s.n == 0 {
				sw.rtc = nil
			} else {
				s.shrink(f)
			}
		}
		sh.mu.Unlock()
	}
	return removed
}
