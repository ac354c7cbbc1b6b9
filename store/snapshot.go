package store

import (
	"context"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// rangeKeep is the largest infohash buffer Range keeps from one shard to
// the next; a bigger one, copied from an unusually full shard, is let go.
const rangeKeep = 4096

// Swarm implements Store.
func (m *Memory) Swarm(ih bittorrent.InfoHash, maxPerFamily int, dst []bittorrent.Change) ([]bittorrent.Change, bittorrent.Counts, bool) {
	sh := m.shard(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.swarms[ih]
	if sw == nil {
		return dst, bittorrent.Counts{}, false
	}
	dst = sw.v4.appendSnapshot(&m.fam4, dst, ih, maxPerFamily)
	if sw.v6 != nil {
		dst = sw.v6.appendSnapshot(&m.fam6, dst, ih, maxPerFamily)
	}
	if sw.rtc != nil {
		dst = sw.rtc.appendSnapshot(&m.famRTC, dst, ih, maxPerFamily)
	}
	return dst, sw.counts(), true
}

// appendSnapshot appends up to limit of the set's peers (all with limit <= 0)
// as OpPut changes. A sample is taken with the same random start and
// coprime stride as ChoosePeers, so it is uniform over seeders and
// leechers alike and keeps their proportion.
func (s *peerSet) appendSnapshot(f *family, dst []bittorrent.Change, ih bittorrent.InfoHash, limit int) []bittorrent.Change {
	size := int(s.n)
	want := size
	if limit > 0 && limit < size {
		want = limit
	}
	if want == 0 {
		return dst
	}
	start, step := 0, 1
	if want < size {
		start, step = randomWalk(size)
	}
	for i, k := start, 0; k < want; k++ {
		dst = append(dst, bittorrent.Change{InfoHash: ih, Op: bittorrent.OpPut, Seeder: i < s.seeders()})
		f.decode(&dst[len(dst)-1].Peer, s.rec(f, i))
		if i += step; i >= size {
			i -= size
		}
	}
	return dst
}

// MergeSnatches implements Store.
func (m *Memory) MergeSnatches(ih bittorrent.InfoHash, n uint32) {
	sh := m.shard(&ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sw := sh.swarms[ih]
	if sw == nil {
		sw = &swarm{}
		sh.swarms[ih] = sw
		sh.nswarm.Add(1)
	}
	sw.snatches = max(sw.snatches, n)
}

// Range implements Store. It copies one shard's infohashes under the
// shard's read lock and calls fn after releasing it; with the default 1024
// shards a copy is a thousandth of the swarms, and writers wait only for
// the copy, never for fn.
func (m *Memory) Range(fn func(ih bittorrent.InfoHash) bool) {
	var buf []bittorrent.InfoHash
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		buf = buf[:0]
		for ih := range sh.swarms {
			buf = append(buf, ih)
		}
		sh.mu.RUnlock()
		for _, ih := range buf {
			if !fn(ih) {
				return
			}
		}
		if cap(buf) > rangeKeep {
			buf = nil
		}
	}
}

// Drop implements Store. It takes the collector's mutex because the
// collector keeps pointers to swarms across releases of a shard lock and
// relies on being the only one deleting them.
func (m *Memory) Drop(ih bittorrent.InfoHash) {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	sh := m.shard(&ih)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sw := sh.swarms[ih]
	if sw == nil {
		return
	}
	for _, f := range []*family{&m.fam4, &m.fam6, &m.famRTC} {
		if s := sw.set(f); s != nil {
			sh.npeers[kindIndex(f, true)].Add(-int64(s.seeders()))
			sh.npeers[kindIndex(f, false)].Add(-int64(s.leechers()))
		}
	}
	delete(sh.swarms, ih)
	sh.nswarm.Add(-1)
}

// scrapeAllBatch is how many swarms ScrapeAll reads for each call of fn.
const scrapeAllBatch = 1024

// ScrapeAll implements Store by reading ScrapePage after ScrapePage.
func (m *Memory) ScrapeAll(ctx context.Context, fn func([]bittorrent.Scrape) error) error {
	var (
		batch  []bittorrent.Scrape
		cursor uint64
		done   bool
	)
	for !done {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, cursor, done = m.ScrapePage(cursor, scrapeAllBatch, batch[:0])
		if len(batch) == 0 {
			continue
		}
		if err := fn(batch); err != nil {
			return err
		}
	}
	return nil
}

// ScrapePage implements Store. A page is a run of whole shards, each copied
// under its read lock, and the cursor is the next shard's index; so a page
// holds at most limit swarms plus one shard's worth.
func (m *Memory) ScrapePage(cursor uint64, limit int, dst []bittorrent.Scrape) ([]bittorrent.Scrape, uint64, bool) {
	start := len(dst)
	for ; cursor < uint64(len(m.shards)); cursor++ {
		if len(dst)-start >= limit {
			return dst, cursor, false
		}
		sh := &m.shards[cursor]
		sh.mu.RLock()
		for ih, sw := range sh.swarms {
			if c := sw.counts(); c.Seeders+c.Leechers > 0 {
				dst = append(dst, bittorrent.Scrape{InfoHash: ih, Counts: c})
			}
		}
		sh.mu.RUnlock()
	}
	return dst, cursor, true
}
