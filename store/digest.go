package store

import (
	"encoding/binary"
	"math/bits"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// SwarmDigest names a swarm and hashes what it holds, so that two owners
// can tell whether their copies agree by exchanging 28 bytes a swarm, or
// 8 bytes for a whole range of swarms by summing them.
type SwarmDigest struct {
	InfoHash bittorrent.InfoHash
	Digest   uint64
}

// SeenPeer is a peer with its role and the time of its last announce, as
// the owners of a swarm exchange peers to bring their copies together.
type SeenPeer struct {
	bittorrent.Peer
	Seeder bool
	Seen   time.Time
}

// A swarm's digest is the xxhash of its infohash, its snatch count and the
// sum of its live peers' hashes, each the xxhash of the peer's address,
// port and ID, turned into another value for a seeder. A sum does not
// depend on the order peers are held in, and last-seen times are left out,
// so two owners that were told the same agree whenever each announced.
// The hash is fixed (not keyed per process): digests are compared between
// nodes.

// peerHash hashes one record's address, port and ID, and whether it seeds.
func peerHash(f *family, r []byte, seeder bool) uint64 {
	h := xxhash.Sum64(r[:f.addrLen+idLen])
	if seeder {
		h = bits.RotateLeft64(h, 29) ^ 0x9e3779b97f4a7c15
	}
	return h
}

// swarmDigest hashes a swarm's infohash, its live peers' hash sum and its
// snatch count.
func swarmDigest(ih *bittorrent.InfoHash, sum uint64, snatches uint32) uint64 {
	var b [len(bittorrent.InfoHash{}) + 8 + 4]byte
	copy(b[:], ih[:])
	binary.LittleEndian.PutUint64(b[20:], sum)
	binary.LittleEndian.PutUint32(b[28:], snatches)
	return xxhash.Sum64(b[:])
}

// liveCutoff is the record time before which a peer has expired at now,
// or 0 when none has.
func (m *Memory) liveCutoff(now time.Time) uint32 {
	if t := m.seconds(now); t > m.lifetime {
		return t - m.lifetime
	}
	return 0
}

// digest returns sw's digest and whether it has a live peer. Called with
// sh's lock held.
func (m *Memory) digest(sh *shard, sw *swarm, cutoff uint32) (uint64, bool) {
	var sum uint64
	live := false
	for _, f := range m.families() {
		s := sh.set(sw, f)
		for i := range int(s.n) {
			if s.seenAt(f, i) < cutoff {
				continue
			}
			live = true
			sum += peerHash(f, s.rec(f, i), i < s.seeders())
		}
	}
	return swarmDigest(&sw.ih, sum, sh.snatches(sw)), live
}

// Digests implements Store. Each shard's digests are computed under its
// read lock, about 15ns a peer, and fn is called after the lock is
// released.
func (m *Memory) Digests(fn func([]SwarmDigest) bool) {
	cutoff := m.liveCutoff(m.now())
	var buf []SwarmDigest
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		buf = buf[:0]
		for pos := range sh.tab.n {
			sw := sh.tab.at(pos)
			if d, live := m.digest(sh, sw, cutoff); live {
				buf = append(buf, SwarmDigest{InfoHash: sw.ih, Digest: d})
			}
		}
		sh.mu.RUnlock()
		if len(buf) > 0 && !fn(buf) {
			return
		}
		if cap(buf) > rangeKeep {
			buf = nil
		}
	}
}

// Digest implements Store.
func (m *Memory) Digest(ih bittorrent.InfoHash) (uint64, bool) {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.tab.get(&ih, h)
	if sw == nil {
		return 0, false
	}
	return m.digest(sh, sw, m.liveCutoff(m.now()))
}

// SeenSwarm implements Store.
func (m *Memory) SeenSwarm(ih bittorrent.InfoHash, dst []SeenPeer) ([]SeenPeer, uint32, bool) {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.tab.get(&ih, h)
	if sw == nil {
		return dst, 0, false
	}
	cutoff := m.liveCutoff(m.now())
	for _, f := range m.families() {
		s := sh.set(sw, f)
		for i := range int(s.n) {
			seen := s.seenAt(f, i)
			if seen < cutoff {
				continue
			}
			dst = append(dst, SeenPeer{Seeder: i < s.seeders(), Seen: m.epoch.Add(time.Duration(seen) * time.Second)})
			f.decode(&dst[len(dst)-1].Peer, s.rec(f, i))
		}
	}
	return dst, sh.snatches(sw), true
}

// Merge implements Store.
func (m *Memory) Merge(ih bittorrent.InfoHash, peers []SeenPeer, snatches uint32) (added int) {
	now := m.now()
	expired, nowSec := now.Add(-time.Duration(m.lifetime)*time.Second), m.seconds(now)
	h, sh := m.locate(&ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sw := sh.tab.get(&ih, h)
	created := false
	for i := range peers {
		p := &peers[i]
		if p.Seen.Before(expired) {
			continue // not worth bringing back
		}
		seen := min(m.seconds(p.Seen), nowSec)
		k, ok := makeKey(p.Addr)
		if !ok || k.port() == 0 {
			m.metrics.ignoredAddr.Inc()
			continue
		}
		if sw == nil {
			if sw = m.newSwarm(sh, &ih, h); sw == nil {
				return added
			}
			created = true
		}
		if m.mergePeer(sh, sw, m.family(&k), &k, p, seen) {
			added++
		}
	}
	switch {
	case sw == nil:
	case created && added == 0:
		// Every peer was refused: leave nothing behind. The new swarm is
		// the shard's last and no collection can be holding it.
		m.removeSwarm(sh, sh.tab.n-1)
	case snatches > sh.snatches(sw):
		sh.setSnatches(sw, snatches)
	}
	return added
}

// mergePeer puts p into sw unless sw holds it with a later last announce,
// and reports whether it was new. A merged seeder is marked seeded, as a
// handed-over one is, so its completion is not counted again. Called with
// sh locked.
func (m *Memory) mergePeer(sh *shard, sw *swarm, f *family, k *addrKey, p *SeenPeer, seen uint32) bool {
	set := sh.set(sw, f)
	if set.fitIndex(f) { // as apply does: a handoff must not scan per peer
		sh.putSet(sw, f, set)
	}
	i, same := set.find(f, k.bytes())
	if i < 0 {
		if m.sourceFull(same) {
			_ = m.refused(reasonPerSource, false)
			return false
		}
		if !m.peers.take() {
			_ = m.refused(reasonPeers, false)
			return false
		}
		set.add(f, k.bytes(), &p.ID, seen, p.Seeder)
		sh.npeers[kindIndex(f, p.Seeder)].Add(1)
		sh.putSet(sw, f, set)
		return true
	}
	if set.seenAt(f, i) >= seen {
		return false // ours is as recent: keep it
	}
	set.update(f, i, &p.ID, seen, p.Seeder)
	if was := i < set.seeders(); was != p.Seeder {
		set.setSeeder(f, i, p.Seeder)
		sh.npeers[kindIndex(f, was)].Add(-1)
		sh.npeers[kindIndex(f, p.Seeder)].Add(1)
		sh.putSet(sw, f, set)
	}
	return false
}
