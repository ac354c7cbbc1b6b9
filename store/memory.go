package store

import (
	"fmt"
	"hash/maphash"
	"math"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// gcChunk bounds the records and swarms the garbage collector examines per
// hold of a shard lock. At about 6ns per record kept and 80ns per record
// removed (BenchmarkGC), announces wait at most ~100µs for the collector,
// even while it works through a swarm of millions.
const gcChunk = 1024

// Memory is the in-memory Store. Swarms are spread over independently
// locked shards by a keyed hash of their infohash; each swarm packs its
// peers into fixed-size records of 30 (IPv4) or 42 (IPv6) bytes, about 47
// bytes per IPv4 peer in all at 10 peers per swarm. A background goroutine
// removes peers that have not announced for PeerLifetime and swarms left
// without peers, which also forgets their snatch count. Safe for
// concurrent use.
type Memory struct {
	cfg      Config
	now      func() time.Time
	epoch    time.Time // record timestamps count seconds from here
	lifetime uint32    // PeerLifetime in whole seconds, rounded up
	seed     maphash.Seed
	fam4     family
	fam6     family
	famRTC   family
	shards   []shard
	shardMsk uint64
	metrics  *metrics
	log      *zap.Logger

	gcMu    sync.Mutex // one collection at a time
	gcChunk int
	gcPause func(*shard) // called between chunks with the lock released; tests only

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ Store = (*Memory)(nil)

// shard is one lock's worth of swarms. Its totals are atomics so that Stats
// and metric scrapes read them without taking the lock; they are only
// written with the lock held.
type shard struct {
	mu     sync.RWMutex
	swarms map[bittorrent.InfoHash]*swarm
	nswarm atomic.Int64
	npeers [6]atomic.Int64 // indexed by kindIndex
}

// kindIndex numbers the (family, seeder) combinations for shard totals:
// IPv4, IPv6 and WebRTC seeders, each followed by its leechers.
func kindIndex(f *family, seeder bool) int {
	i := 2 * int(f.kind)
	if !seeder {
		i++
	}
	return i
}

// swarm is one torrent's peers. The IPv6 and WebRTC sets are allocated
// only when such a peer arrives, since most swarms have none; only the
// garbage collector drops them again, so it can keep a pointer to one
// while it yields the lock.
type swarm struct {
	v4       peerSet
	v6       *peerSet
	rtc      *peerSet
	snatches uint32
}

// set returns the swarm's set of family f, nil if it has none.
func (sw *swarm) set(f *family) *peerSet {
	switch f.kind {
	case kindV6:
		return sw.v6
	case kindRTC:
		return sw.rtc
	}
	return &sw.v4
}

// newSet allocates the (missing) set of family f.
func (sw *swarm) newSet(f *family) *peerSet {
	s := &peerSet{}
	if f.kind == kindRTC {
		sw.rtc = s
	} else {
		sw.v6 = s
	}
	return s
}

//nolint:gosec // G115: a set's counts are non-negative int32s
func (sw *swarm) counts() bittorrent.Counts {
	c := bittorrent.Counts{
		Seeders:  uint32(sw.v4.seeders()),
		Leechers: uint32(sw.v4.leechers()),
		Snatches: sw.snatches,
	}
	for _, s := range [2]*peerSet{sw.v6, sw.rtc} {
		if s != nil {
			c.Seeders += uint32(s.seeders())
			c.Leechers += uint32(s.leechers())
		}
	}
	return c
}

// NewMemory returns an empty store and starts its garbage collector, which
// runs every cfg.GCInterval until Close. Metrics are registered with reg
// unless it is nil.
func NewMemory(cfg Config, reg prometheus.Registerer, log *zap.Logger) (*Memory, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	m := &Memory{
		cfg:      cfg,
		now:      cfg.Clock,
		lifetime: uint32((cfg.PeerLifetime + time.Second - 1) / time.Second), //nolint:gosec // G115: Validate caps peer_lifetime at 168h
		seed:     maphash.MakeSeed(),
		shards:   make([]shard, cfg.Shards),
		shardMsk: uint64(cfg.Shards - 1), //nolint:gosec // G115: Validate keeps shards at 1 or more
		log:      log,
		gcChunk:  gcChunk,
		done:     make(chan struct{}),
	}
	if m.now == nil {
		m.now = time.Now
	}
	// Records count seconds from one lifetime before the start, so peers
	// loaded from a swarm file with their older last-seen times fit.
	m.epoch = m.now().Add(-time.Duration(m.lifetime) * time.Second)
	m.fam4 = newFamily(false, m.seed)
	m.fam6 = newFamily(true, m.seed)
	m.famRTC = newRTCFamily(m.seed)
	for i := range m.shards {
		m.shards[i].swarms = make(map[bittorrent.InfoHash]*swarm)
	}
	var err error
	if m.metrics, err = newMetrics(m, reg); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	m.wg.Add(1)
	go m.collect()
	return m, nil
}

// Close stops the garbage collector and waits for it. The store stays
// usable, but nothing expires any more.
func (m *Memory) Close() error {
	m.closeOnce.Do(func() { close(m.done) })
	m.wg.Wait()
	return nil
}

func (m *Memory) collect() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
			m.gc(m.now(), m.done)
		}
	}
}

// seconds converts t to record time, clamped to the uint32 range.
func (m *Memory) seconds(t time.Time) uint32 {
	d := t.Sub(m.epoch) / time.Second
	switch {
	case d < 0:
		return 0
	case d > maxSeen:
		return maxSeen
	}
	return uint32(d)
}

func (m *Memory) shard(ih *bittorrent.InfoHash) *shard {
	return &m.shards[maphash.Bytes(m.seed, ih[:])&m.shardMsk]
}

func (m *Memory) family(k *addrKey) *family {
	switch {
	case k.rtc:
		return &m.famRTC
	case k.v6():
		return &m.fam6
	}
	return &m.fam4
}

// Apply implements Store. Each change takes its shard's lock on its own, so
// a large batch never holds one lock for long.
func (m *Memory) Apply(changes []bittorrent.Change) {
	if len(changes) == 0 {
		return
	}
	now := m.seconds(m.now())
	for i := range changes {
		m.apply(&changes[i], now)
	}
}

func (m *Memory) apply(c *bittorrent.Change, now uint32) {
	switch c.Op {
	case bittorrent.OpPut, bittorrent.OpRemove, bittorrent.OpComplete:
	default:
		m.metrics.ignoredOp.Inc()
		return
	}
	k, ok := makeKey(c.Peer.Addr)
	if !ok || k.port() == 0 {
		m.metrics.ignoredAddr.Inc()
		return
	}
	f := m.family(&k)
	sh := m.shard(&c.InfoHash)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	sw := sh.swarms[c.InfoHash]
	if sw == nil {
		if c.Op == bittorrent.OpRemove {
			return
		}
		sw = &swarm{}
		sh.swarms[c.InfoHash] = sw
		sh.nswarm.Add(1)
	}
	set := sw.set(f)
	if set == nil {
		if c.Op == bittorrent.OpRemove {
			return
		}
		set = sw.newSet(f)
	}
	i := set.find(f, k.bytes())

	if c.Op == bittorrent.OpRemove {
		if i >= 0 {
			sh.npeers[kindIndex(f, i < set.seeders())].Add(-1)
			set.remove(f, i)
			set.shrink(f)
		}
		return
	}
	seeder := c.Seeder
	if c.Op == bittorrent.OpComplete {
		seeder = true
		// A completion counts once per peer: a client repeating
		// `completed`, and a forwarded batch applied again after its
		// acknowledgement was lost, find the peer marked seeded already.
		// A handed-over seeder arrives marked too (snapshots carry
		// Seeder), so a swarm's new owner does not count it again.
		if (i < 0 || !set.seeded(f, i)) && sw.snatches < math.MaxUint32 {
			sw.snatches++
		}
	}
	if i < 0 {
		set.add(f, k.bytes(), &c.Peer.ID, now, seeder)
		sh.npeers[kindIndex(f, seeder)].Add(1)
		return
	}
	set.update(f, i, &c.Peer.ID, now, seeder)
	if was := i < set.seeders(); was != seeder {
		set.setSeeder(f, i, seeder)
		sh.npeers[kindIndex(f, was)].Add(-1)
		sh.npeers[kindIndex(f, seeder)].Add(1)
	}
}

// AnnouncePeers implements Store. It allocates only if dst lacks capacity.
func (m *Memory) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	sh := m.shard(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.swarms[ih]
	if sw == nil {
		return dst, bittorrent.Counts{}, bittorrent.Absent
	}
	counts := sw.counts()
	k, ok := makeKey(announcer)
	if !ok {
		return dst, counts, bittorrent.Absent
	}
	f := m.family(&k)
	set := sw.set(f)
	if set == nil {
		return dst, counts, bittorrent.Absent
	}
	self := -1
	if k.port() != 0 {
		self = set.find(f, k.bytes())
	}
	w, state := Choose(set.seeders(), int(set.n), self, seeder, n)
	var buf [32]int
	for {
		pos := w.Fill(buf[:])
		for _, i := range pos {
			dst = append(dst, bittorrent.Peer{})
			f.decode(&dst[len(dst)-1], set.rec(f, i))
		}
		if len(pos) < len(buf) {
			break
		}
	}
	return dst, counts, state
}

// Counts implements Store.
func (m *Memory) Counts(ih bittorrent.InfoHash) bittorrent.Counts {
	sh := m.shard(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if sw := sh.swarms[ih]; sw != nil {
		return sw.counts()
	}
	return bittorrent.Counts{}
}

// Stats implements Store. It sums per-shard totals without taking any
// lock, so it is cheap enough for every metrics scrape; totals of shards
// being written to may be a change apart from each other.
func (m *Memory) Stats() Stats {
	var st Stats
	for i := range m.shards {
		sh := &m.shards[i]
		st.Swarms += int(sh.nswarm.Load())
		st.Seeders4 += int(sh.npeers[0].Load())
		st.Leechers4 += int(sh.npeers[1].Load())
		st.Seeders6 += int(sh.npeers[2].Load())
		st.Leechers6 += int(sh.npeers[3].Load())
		st.SeedersRTC += int(sh.npeers[4].Load())
		st.LeechersRTC += int(sh.npeers[5].Load())
	}
	return st
}

// GC removes the peers whose last announce is more than PeerLifetime (to
// the second) before now, and the swarms left without peers, and returns
// the number of peers removed. The background collector calls it every
// GCInterval; tests call it with a chosen now. It works through one shard
// at a time and releases the shard's lock after about a thousand records,
// so announces never wait long for it. A peer that a concurrent change moves
// within its swarm during a collection may be left for the next one.
func (m *Memory) GC(now time.Time) (removed int) {
	return m.gc(now, nil)
}

// gc is GC that gives up early once stop is closed, so Close does not wait
// for a whole collection.
func (m *Memory) gc(now time.Time, stop <-chan struct{}) int {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	start := time.Now()
	// Records last seen before cutoff are expired; with cutoff 0 none are.
	var cutoff uint32
	if t := m.seconds(now); t > m.lifetime {
		cutoff = t - m.lifetime
	}
	var peers, swarms int
shards:
	for i := range m.shards {
		select {
		case <-stop:
			break shards
		default:
		}
		p, s := m.gcShard(&m.shards[i], cutoff)
		peers += p
		swarms += s
	}
	took := time.Since(start)
	m.metrics.gcRemovedPeers.Add(float64(peers))
	m.metrics.gcRemovedSwarms.Add(float64(swarms))
	m.metrics.gcDuration.Observe(took.Seconds())
	if ce := m.log.Check(zap.DebugLevel, "collected garbage"); ce != nil {
		ce.Write(zap.Int("removed_peers", peers), zap.Int("removed_swarms", swarms), zap.Duration("took", took))
	}
	return peers
}

// gcShard collects one shard. It ranges over the swarm map across lock
// releases; that is as safe as modifying a map inside its own range loop,
// since other writers' changes are ordered by the lock: swarms added
// meanwhile may or may not be visited. Only the collector deletes swarms
// (under gcMu), so sw stays in the map while the lock is released.
func (m *Memory) gcShard(sh *shard, cutoff uint32) (peers, swarms int) {
	budget := m.gcChunk
	sh.mu.Lock()
	for ih, sw := range sh.swarms {
		peers += m.gcSet(sh, &m.fam4, &sw.v4, cutoff, &budget)
		if sw.v6 != nil {
			peers += m.gcSet(sh, &m.fam6, sw.v6, cutoff, &budget)
			if sw.v6.n == 0 {
				sw.v6 = nil
			}
		}
		if sw.rtc != nil {
			peers += m.gcSet(sh, &m.famRTC, sw.rtc, cutoff, &budget)
			if sw.rtc.n == 0 {
				sw.rtc = nil
			}
		}
		if sw.v4.n == 0 && sw.v6 == nil && sw.rtc == nil {
			delete(sh.swarms, ih)
			sh.nswarm.Add(-1)
			swarms++
		}
		if budget--; budget <= 0 {
			m.gcYield(sh)
			budget = m.gcChunk
		}
	}
	sh.mu.Unlock()
	return peers, swarms
}

// gcSet removes expired records from s, which belongs to a swarm of sh.
// Removing the record at i moves one from a higher position into i, so i
// only advances past records that were kept. Memory is given back once at
// the end, not after every removal.
func (m *Memory) gcSet(sh *shard, f *family, s *peerSet, cutoff uint32, budget *int) (removed int) {
	if cutoff == 0 {
		return 0
	}
	defer func() {
		if removed > 0 {
			s.shrink(f)
		}
	}()
	for i := 0; i < int(s.n); {
		if s.seenAt(f, i) < cutoff {
			sh.npeers[kindIndex(f, i < s.seeders())].Add(-1)
			s.remove(f, i)
			removed++
		} else {
			i++
		}
		if *budget--; *budget <= 0 {
			m.gcYield(sh)
			*budget = m.gcChunk
		}
	}
	return removed
}

// gcYield lets waiting announces at the shard between two chunks.
func (m *Memory) gcYield(sh *shard) {
	sh.mu.Unlock()
	if m.gcPause != nil {
		m.gcPause(sh)
	}
	runtime.Gosched()
	sh.mu.Lock()
}
