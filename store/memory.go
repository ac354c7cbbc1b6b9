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
	"github.com/karuta-tracker/karuta/hooks/ratelog"
)

// gcChunk bounds the records and swarms the garbage collector examines per
// hold of a shard lock. At about 6ns per record kept and 80ns per record
// removed (BenchmarkGC), announces wait at most ~100µs for the collector,
// even while it works through a swarm of millions.
const gcChunk = 1024

// Memory is the in-memory Store. Swarms are spread over independently
// locked shards by a keyed hash of their infohash; each shard keeps its
// swarms in a compact table (table.go), and each swarm packs its peers into
// fixed-size records of 30 (IPv4) or 42 (IPv6) bytes, about 42 bytes per
// IPv4 peer in all at 10 peers per swarm and 90 for a swarm with one
// (BenchmarkMemory). A background goroutine removes peers that have not announced for
// PeerLifetime and swarms left without peers, which also forgets their
// snatch count, and gives the memory back. Limits bound what it holds.
// Safe for concurrent use.
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

	// swarms and peers are the totals the limits are checked against.
	swarms, peers count
	perSource     atomic.Int64 // 0: no limit
	refuseLog     *ratelog.Limiter

	gcMu    sync.Mutex // one collection at a time; also held by Drop
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
	mu   sync.RWMutex
	tab  swarmTable
	exts []*swarmExt // see swarm.meta
	// nswarm and npeers are this shard's share of the totals, for Stats.
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

// families are a store's address families, in kindIndex order.
func (m *Memory) families() [3]*family { return [3]*family{&m.fam4, &m.fam6, &m.famRTC} }

// swarm is one torrent: 48 bytes in its shard's table and its IPv4
// records. Most swarms are small and IPv4 only, so what only bigger,
// IPv6 or WebRTC swarms need lives in a swarmExt beside it, found through
// meta:
//
//	meta bit 31 clear: bits 0-5 count the IPv4 seeders (at most 63), bits
//	    6-30 the snatches (at most 2^25-1); there are no IPv6 or WebRTC
//	    peers and no IPv4 index.
//	meta bit 31 set: bits 0-30 are the position of the swarm's extension in
//	    its shard's exts, which holds those counts, the IPv4 index and the
//	    IPv6 and WebRTC peers.
//
// A swarm gains its extension when it needs one (an IPv6 or WebRTC peer,
// more than smallMax IPv4 peers, or a count too large for meta) and the
// collector drops it again once it does not.
type swarm struct {
	ih   bittorrent.InfoHash
	meta uint32
	recs []byte // IPv4 records; len/stride4 of them
}

const (
	metaExt           = 1 << 31
	metaSeedBits      = 6
	metaSeedMask      = 1<<metaSeedBits - 1
	maxInlineSnatches = metaExt>>metaSeedBits - 1
)

// swarmExt is what a swarm needs beyond 48 bytes: 72 bytes in the
// allocator's 80-byte class. It points back at its swarm so that the
// shard can renumber the extension when it moves it; removeSwarm keeps
// the pointer right when the swarm itself moves. WebRTC peers, rarer
// still, are a pointer away.
type swarmExt struct {
	sw       *swarm
	snatches uint32
	nseed4   int32
	idx4     *index
	v6       peerSet
	rtc      *peerSet
}

func (sh *shard) ext(sw *swarm) *swarmExt {
	if sw.meta&metaExt == 0 {
		return nil
	}
	return sh.exts[sw.meta&^metaExt]
}

// extend gives sw an extension, moving its inline counts into it.
func (sh *shard) extend(sw *swarm) *swarmExt {
	e := &swarmExt{sw: sw, nseed4: int32(sw.meta & metaSeedMask), snatches: sw.meta >> metaSeedBits}
	sh.exts = append(sh.exts, e)
	sw.meta = metaExt | uint32(len(sh.exts)-1) //nolint:gosec // G115: a shard holds fewer than 2^24 swarms
	return e
}

// unextend drops sw's extension if sw no longer needs it. Only the
// collector and Drop call it, since it moves another swarm's extension.
func (sh *shard) unextend(sw *swarm) {
	e := sh.ext(sw)
	if e == nil || e.v6.n > 0 || e.rtc != nil || e.idx4 != nil || e.nseed4 > metaSeedMask || e.snatches > maxInlineSnatches {
		return
	}
	k := int(sw.meta &^ metaExt)
	sw.meta = uint32(e.nseed4) | e.snatches<<metaSeedBits //nolint:gosec // G115: checked above
	sh.dropExt(k)
}

// dropExt deletes extension k, moving the last one into its place.
func (sh *shard) dropExt(k int) {
	last := len(sh.exts) - 1
	if k != last {
		moved := sh.exts[last]
		sh.exts[k] = moved
		moved.sw.meta = metaExt | uint32(k) //nolint:gosec // G115: as in extend
	}
	sh.exts[last] = nil
	sh.exts = sh.exts[:last]
	switch {
	case last == 0:
		sh.exts = nil
	case 4*last < cap(sh.exts):
		sh.exts = append([]*swarmExt(nil), sh.exts...)
	}
}

// set returns a working copy of sw's peers of family f; putSet stores it
// back. Between the two the shard lock must stay held.
func (sh *shard) set(sw *swarm, f *family) peerSet {
	e := sh.ext(sw)
	switch {
	case f.kind == kindRTC:
		if e == nil || e.rtc == nil {
			return peerSet{}
		}
		return *e.rtc
	case f.v6:
		if e == nil {
			return peerSet{}
		}
		return e.v6
	}
	s := peerSet{recs: sw.recs, n: int32(len(sw.recs) / stride4)} //nolint:gosec // G115: a set holds fewer than 2^31 records
	if e != nil {
		s.idx, s.nseed = e.idx4, e.nseed4
	} else {
		s.nseed = int32(sw.meta & metaSeedMask)
	}
	return s
}

func (sh *shard) putSet(sw *swarm, f *family, s peerSet) {
	e := sh.ext(sw)
	if f.v6 {
		if e == nil {
			if s.n == 0 {
				return
			}
			e = sh.extend(sw)
		}
		switch {
		case f.kind != kindRTC:
			e.v6 = s
		case s.n == 0:
			e.rtc = nil
		default:
			if e.rtc == nil {
				e.rtc = new(peerSet)
			}
			*e.rtc = s
		}
		return
	}
	sw.recs = s.recs
	if e == nil && (s.idx != nil || s.nseed > metaSeedMask) {
		e = sh.extend(sw)
	}
	if e != nil {
		e.idx4, e.nseed4 = s.idx, s.nseed
		return
	}
	sw.meta = sw.meta&^metaSeedMask | uint32(s.nseed) //nolint:gosec // G115: at most metaSeedMask here
}

func (sh *shard) snatches(sw *swarm) uint32 {
	if e := sh.ext(sw); e != nil {
		return e.snatches
	}
	return sw.meta >> metaSeedBits
}

func (sh *shard) setSnatches(sw *swarm, n uint32) {
	e := sh.ext(sw)
	if e == nil && n > maxInlineSnatches {
		e = sh.extend(sw)
	}
	if e != nil {
		e.snatches = n
		return
	}
	sw.meta = sw.meta&metaSeedMask | n<<metaSeedBits
}

// empty reports whether sw holds no peer.
func (sh *shard) empty(sw *swarm) bool {
	e := sh.ext(sw)
	return len(sw.recs) == 0 && (e == nil || e.v6.n == 0 && e.rtc == nil)
}

//nolint:gosec // G115: a set's counts are non-negative int32s
func (sh *shard) counts(sw *swarm) bittorrent.Counts {
	n4 := uint32(len(sw.recs) / stride4)
	e := sh.ext(sw)
	if e == nil {
		seeds := sw.meta & metaSeedMask
		return bittorrent.Counts{Seeders: seeds, Leechers: n4 - seeds, Snatches: sw.meta >> metaSeedBits}
	}
	c := bittorrent.Counts{
		Seeders:  uint32(e.nseed4) + uint32(e.v6.nseed),
		Leechers: n4 - uint32(e.nseed4) + uint32(e.v6.n-e.v6.nseed),
		Snatches: e.snatches,
	}
	if r := e.rtc; r != nil {
		c.Seeders += uint32(r.nseed)
		c.Leechers += uint32(r.n - r.nseed)
	}
	return c
}

// removeSwarm deletes the swarm at pos of sh, which must hold no peer,
// with its extension. Only the collector and Drop call it.
func (m *Memory) removeSwarm(sh *shard, pos int) {
	if sw := sh.tab.at(pos); sw.meta&metaExt != 0 {
		sh.dropExt(int(sw.meta &^ metaExt))
	}
	if moved := sh.tab.remove(pos, m.seed); moved != nil && moved.meta&metaExt != 0 {
		sh.exts[moved.meta&^metaExt].sw = moved // it moved to pos
	}
	sh.nswarm.Add(-1)
	m.swarms.give(1)
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
		cfg:       cfg,
		now:       cfg.Clock,
		lifetime:  uint32((cfg.PeerLifetime + time.Second - 1) / time.Second), //nolint:gosec // G115: Validate caps peer_lifetime at 168h
		seed:      maphash.MakeSeed(),
		shards:    make([]shard, cfg.Shards),
		shardMsk:  uint64(cfg.Shards - 1), //nolint:gosec // G115: Validate keeps shards at 1 or more
		log:       log,
		refuseLog: ratelog.New(10 * time.Second),
		gcChunk:   gcChunk,
		done:      make(chan struct{}),
	}
	m.SetLimits(cfg.Limits)
	if m.now == nil {
		m.now = time.Now
	}
	// Records count seconds from one lifetime before the start, so peers
	// loaded from a swarm file with their older last-seen times fit.
	m.epoch = m.now().Add(-time.Duration(m.lifetime) * time.Second)
	m.fam4 = newFamily(false, m.seed)
	m.fam6 = newFamily(true, m.seed)
	m.famRTC = newRTCFamily(m.seed)
	for _, f := range m.families() {
		f.perSource = &m.perSource
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

// locate returns the hash of ih and its shard.
func (m *Memory) locate(ih *bittorrent.InfoHash) (uint64, *shard) {
	h := hashInfo(m.seed, ih)
	return h, &m.shards[h&m.shardMsk]
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
	h, sh := m.locate(&c.InfoHash)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	sw := sh.tab.get(&c.InfoHash, h)
	created := sw == nil
	if created {
		if c.Op == bittorrent.OpRemove {
			return
		}
		if sw = m.newSwarm(sh, &c.InfoHash, h); sw == nil {
			return
		}
	}
	set := sh.set(sw, f)
	if set.fitIndex(f) {
		sh.putSet(sw, f, set)
	}
	i, same := set.find(f, k.bytes())
	if i < 0 && c.Op != bittorrent.OpRemove {
		reason := ""
		switch {
		case m.sourceFull(same):
			reason = reasonPerSource
		case !m.peers.take():
			reason = reasonPeers
		}
		if reason != "" {
			_ = m.refused(reason, false)
			if created {
				// Leave nothing behind. The new swarm is the shard's last
				// and no collection can be holding it, so removing it
				// moves nothing under the collector's feet.
				m.removeSwarm(sh, sh.tab.n-1)
			}
			return
		}
	}

	if c.Op == bittorrent.OpRemove {
		if i >= 0 {
			sh.npeers[kindIndex(f, i < set.seeders())].Add(-1)
			m.peers.give(1)
			set.remove(f, i)
			set.shrink(f)
			sh.putSet(sw, f, set)
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
		if n := sh.snatches(sw); (i < 0 || !set.seeded(f, i)) && n < math.MaxUint32 {
			sh.setSnatches(sw, n+1)
		}
	}
	if i < 0 {
		set.add(f, k.bytes(), &c.Peer.ID, now, seeder)
		sh.npeers[kindIndex(f, seeder)].Add(1)
		sh.putSet(sw, f, set)
		return
	}
	set.update(f, i, &c.Peer.ID, now, seeder)
	if was := i < set.seeders(); was != seeder {
		set.setSeeder(f, i, seeder)
		sh.npeers[kindIndex(f, was)].Add(-1)
		sh.npeers[kindIndex(f, seeder)].Add(1)
		sh.putSet(sw, f, set)
	}
}

// newSwarm adds swarm ih, whose hash is h, to sh, unless the store holds
// MaxSwarms already (or the shard its most), and returns it or nil.
// Called with sh locked.
func (m *Memory) newSwarm(sh *shard, ih *bittorrent.InfoHash, h uint64) *swarm {
	if !m.swarms.take() {
		_ = m.refused(reasonSwarms, false)
		return nil
	}
	sw := sh.tab.insert(ih, h, m.seed)
	if sw == nil {
		m.swarms.give(1)
		_ = m.refused(reasonSwarms, false)
		return nil
	}
	sh.nswarm.Add(1)
	return sw
}

// SetLimits puts new limits in force, for the next changes and announces;
// what the store holds already stays even if it is past them. Limits that
// Validate would refuse are the caller's mistake; zero means no limit.
func (m *Memory) SetLimits(l Limits) {
	m.swarms.max.Store(int64(l.MaxSwarms))
	m.peers.max.Store(int64(l.MaxPeers))
	m.perSource.Store(int64(l.MaxPeersPerSource))
}

// sourceFull reports whether a source holding same peers in a swarm may
// add no other.
func (m *Memory) sourceFull(same int) bool {
	lim := m.perSource.Load()
	return lim > 0 && int64(same) >= lim
}

// Limits returns the limits in force.
func (m *Memory) Limits() Limits {
	return Limits{MaxSwarms: int(m.swarms.max.Load()), MaxPeers: int(m.peers.max.Load()), MaxPeersPerSource: int(m.perSource.Load())}
}

// Admit implements Store. It reads under the shard's read lock, so the
// answer may be stale by the time the announce is applied; Apply checks
// again.
func (m *Memory) Admit(ih bittorrent.InfoHash, announcer netip.AddrPort) error {
	k, ok := makeKey(announcer)
	if !ok || k.port() == 0 {
		return nil // Apply ignores it
	}
	f := m.family(&k)
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.tab.get(&ih, h)
	if sw == nil {
		switch {
		case m.swarms.full():
			return m.refused(reasonSwarms, true)
		case m.peers.full():
			return m.refused(reasonPeers, true)
		}
		return nil
	}
	set := sh.set(sw, f)
	i, same := set.find(f, k.bytes())
	switch {
	case i >= 0:
		return nil
	case m.sourceFull(same):
		return m.refused(reasonPerSource, true)
	case m.peers.full():
		return m.refused(reasonPeers, true)
	}
	return nil
}

// refused counts a refusal, logs it at most once per 10 seconds, and
// returns its failure reason. announce says Admit refused an announce;
// otherwise Apply left a change out.
func (m *Memory) refused(reason string, announce bool) error {
	m.metrics.refuse(reason, announce)
	if n, ok := m.refuseLog.Allow(); ok {
		m.log.Warn("store full: refusing new swarms or peers", zap.String("reason", reason),
			zap.Uint64("refused_since_last_log", n), zap.Int64("swarms", m.swarms.n.Load()), zap.Int64("max_swarms", m.swarms.max.Load()),
			zap.Int64("peers", m.peers.n.Load()), zap.Int64("max_peers", m.peers.max.Load()), zap.Int64("max_peers_per_source", m.perSource.Load()))
	}
	switch reason {
	case reasonSwarms:
		return ErrTooManySwarms
	case reasonPeers:
		return ErrTooManyPeers
	}
	return ErrTooManyForSource
}

// AnnouncePeers implements Store. It allocates only if dst lacks capacity.
func (m *Memory) AnnouncePeers(ih bittorrent.InfoHash, announcer netip.AddrPort, seeder bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	sw := sh.tab.get(&ih, h)
	if sw == nil {
		return dst, bittorrent.Counts{}, bittorrent.Absent
	}
	counts := sh.counts(sw)
	k, ok := makeKey(announcer)
	if !ok {
		return dst, counts, bittorrent.Absent
	}
	f := m.family(&k)
	set := sh.set(sw, f)
	self := -1
	if k.port() != 0 {
		self, _ = set.find(f, k.bytes())
	}
	w, state := Choose(set.seeders(), int(set.n), self, seeder, n)
	var buf [maxAppend]int
	for {
		pos := w.Fill(buf[:])
		dst = set.appendPeers(f, pos, dst)
		if len(pos) < len(buf) {
			break
		}
	}
	return dst, counts, state
}

// Counts implements Store.
func (m *Memory) Counts(ih bittorrent.InfoHash) bittorrent.Counts {
	h, sh := m.locate(&ih)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if sw := sh.tab.get(&ih, h); sw != nil {
		return sh.counts(sw)
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

// gcShard collects one shard. It walks the swarms by position across lock
// releases: other writers only add swarms, at the end, and only the
// collector (under gcMu) removes them, moving the last swarm into the hole,
// so the walk visits every swarm that was there when it started, and
// swarms added meanwhile may or may not be visited. Emptied swarms are
// removed and extensions no longer needed dropped, so the shard's memory
// shrinks with it.
func (m *Memory) gcShard(sh *shard, cutoff uint32) (peers, swarms int) {
	budget := m.gcChunk
	sh.mu.Lock()
	for pos := 0; pos < sh.tab.n; {
		sw := sh.tab.at(pos)
		for _, f := range m.families() {
			peers += m.gcSet(sh, sw, f, cutoff, &budget)
		}
		if sh.empty(sw) {
			m.removeSwarm(sh, pos) // the last swarm moves to pos: look at it next
			swarms++
		} else {
			sh.unextend(sw)
			pos++
		}
		if budget--; budget <= 0 {
			m.gcYield(sh)
			budget = m.gcChunk
		}
	}
	sh.mu.Unlock()
	return peers, swarms
}

// gcSet removes expired records from sw's peers of family f. Removing the
// record at i moves one from a higher position into i, so i only advances
// past records that were kept. The working copy of the set goes back
// before every release of the lock and is read again after, as writers
// may change the set meanwhile. Memory is given back once at the end, not
// after every removal.
func (m *Memory) gcSet(sh *shard, sw *swarm, f *family, cutoff uint32, budget *int) (removed int) {
	if cutoff == 0 {
		return 0
	}
	s := sh.set(sw, f)
	for i := 0; i < int(s.n); {
		if s.seenAt(f, i) < cutoff {
			sh.npeers[kindIndex(f, i < s.seeders())].Add(-1)
			s.remove(f, i)
			removed++
		} else {
			i++
		}
		if *budget--; *budget <= 0 {
			sh.putSet(sw, f, s)
			m.gcYield(sh)
			s = sh.set(sw, f)
			*budget = m.gcChunk
		}
	}
	if removed > 0 {
		m.peers.give(int64(removed))
		s.shrink(f)
		sh.putSet(sw, f, s)
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
