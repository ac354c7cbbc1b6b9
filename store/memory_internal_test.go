package store

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// testMemory returns a store with lifetime 60s whose clock reads *now.
func testMemory(t testing.TB, shards int, now *time.Time) *Memory {
	t.Helper()
	cfg := DefaultConfig()
	cfg.PeerLifetime = time.Minute
	cfg.GCInterval = time.Minute
	cfg.Shards = shards
	cfg.MaxPeersPerSource = 0 // the tests' IPv6 peers share a /64
	cfg.Clock = func() time.Time { return *now }
	m, err := NewMemory(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// checkInvariants verifies the store's internal structure: every shard's
// table and extensions, every set's bookkeeping, its index against its
// records, and the shard and store totals. Call it only while nothing else
// uses the store.
func (m *Memory) checkInvariants() error {
	var allSwarms, allPeers int64
	for si := range m.shards {
		sh := &m.shards[si]
		if err := m.checkTable(si); err != nil {
			return err
		}
		var peers [6]int64
		extUsers := make([]int, len(sh.exts))
		for pos := range sh.tab.n {
			sw := sh.tab.at(pos)
			if e := sh.ext(sw); e != nil {
				extUsers[sw.meta&^metaExt]++
				if e.sw != sw {
					return fmt.Errorf("swarm %x has the extension of %x", sw.ih[:], e.sw.ih[:])
				}
			}
			for _, f := range m.families() {
				s := sh.set(sw, f)
				if err := checkSet(f, &s); err != nil {
					return fmt.Errorf("swarm %x family %d: %w", sw.ih[:], f.kind, err)
				}
				peers[kindIndex(f, true)] += int64(s.seeders())
				peers[kindIndex(f, false)] += int64(s.leechers())
			}
		}
		for k, n := range extUsers {
			if n != 1 {
				return fmt.Errorf("shard %d: extension %d belongs to %d swarms", si, k, n)
			}
		}
		if got := sh.nswarm.Load(); got != int64(sh.tab.n) {
			return fmt.Errorf("shard %d counts %d swarms, holds %d", si, got, sh.tab.n)
		}
		for k := range peers {
			if got := sh.npeers[k].Load(); got != peers[k] {
				return fmt.Errorf("shard %d counts %d peers of kind %d, holds %d", si, got, k, peers[k])
			}
			allPeers += peers[k]
		}
		allSwarms += int64(sh.tab.n)
	}
	if got := m.swarms.n.Load(); got != allSwarms {
		return fmt.Errorf("store counts %d swarms, holds %d", got, allSwarms)
	}
	if got := m.peers.n.Load(); got != allPeers {
		return fmt.Errorf("store counts %d peers, holds %d", got, allPeers)
	}
	return nil
}

// checkTable verifies shard si's table: every swarm in the right shard and
// found at its position, one slot per swarm, no more chunks than needed.
func (m *Memory) checkTable(si int) error {
	t := &m.shards[si].tab
	if t.n == 0 {
		if t.slots != nil || t.chunks != nil {
			return fmt.Errorf("shard %d: empty table keeps %d slots and %d chunks", si, len(t.slots), len(t.chunks))
		}
		return nil
	}
	if size := len(t.slots); size&(size-1) != 0 || 4*t.n > 3*size {
		return fmt.Errorf("shard %d: %d slots for %d swarms", si, size, t.n)
	}
	if want := (t.n + chunkLen - 1) / chunkLen; len(t.chunks) != want {
		return fmt.Errorf("shard %d: %d chunks for %d swarms, want %d", si, len(t.chunks), t.n, want)
	}
	var used int
	for _, v := range t.slots {
		if v != 0 {
			used++
		}
	}
	if used != t.n {
		return fmt.Errorf("shard %d: %d slots used for %d swarms", si, used, t.n)
	}
	for pos := range t.n {
		ih := t.at(pos).ih
		h, sh := m.locate(&ih)
		if sh != &m.shards[si] {
			return fmt.Errorf("swarm %x in shard %d, want %d", ih[:], si, h&m.shardMsk)
		}
		if got := t.lookup(&ih, h); got != pos {
			return fmt.Errorf("shard %d: swarm %x at %d is found at %d", si, ih[:], pos, got)
		}
	}
	return nil
}

func checkSet(f *family, s *peerSet) error {
	n := int(s.n)
	switch {
	case s.nseed < 0 || s.nseed > s.n:
		return fmt.Errorf("nseed %d, n %d", s.nseed, s.n)
	case len(s.recs) != n*f.stride:
		return fmt.Errorf("%d bytes of records for %d peers", len(s.recs), n)
	case cap(s.recs)/f.stride > max(4, 2*n):
		return fmt.Errorf("capacity for %d records holds %d", cap(s.recs)/f.stride, n)
	case n > smallMax && s.idx == nil:
		return fmt.Errorf("%d peers without an index", n)
	case n <= dropIndexAt && s.idx != nil:
		return fmt.Errorf("%d peers with an index", n)
	}
	keys := make(map[string]int, n)
	for i := range n {
		k := string(s.addrAt(f, i))
		if j, dup := keys[k]; dup {
			return fmt.Errorf("positions %d and %d hold the same address", j, i)
		}
		keys[k] = i
		var p bittorrent.Peer
		if f.decode(&p, s.rec(f, i)); p.Addr.Port() == 0 || !p.Addr.Addr().IsValid() {
			return fmt.Errorf("position %d holds %v", i, p.Addr)
		}
	}
	if s.idx == nil {
		return nil
	}
	size := len(s.idx.slots)
	if size&(size-1) != 0 || 2*n > size {
		return fmt.Errorf("index of %d slots for %d peers", size, n)
	}
	var used int
	for _, v := range s.idx.slots {
		if v != 0 {
			used++
			if p := s.idx.pos(v); p >= n {
				return fmt.Errorf("index points at position %d of %d", p, n)
			}
			if h := s.idx.hash(f, s.addrAt(f, s.idx.pos(v))); v&^s.idx.posMask() != s.idx.tag(h) {
				return fmt.Errorf("slot %08x: tag of another hash, %016x", v, h)
			}
		}
	}
	if used != n {
		return fmt.Errorf("index has %d entries for %d peers", used, n)
	}
	for i := range n {
		if _, pos, _ := s.idx.lookup(s, f, s.addrAt(f, i), s.idx.hash(f, s.addrAt(f, i))); pos != i {
			return fmt.Errorf("index finds position %d at %d", i, pos)
		}
	}
	return nil
}

// modelPeer is the reference model's view of a peer.
type modelPeer struct {
	seeder bool
	seeded bool // has completed or seeded since it joined: completes no longer count
	id     bittorrent.PeerID
	seen   int64 // seconds since epoch
}

type modelSwarm struct {
	peers    map[netip.AddrPort]modelPeer // keyed by unmapped address
	snatches uint32
}

// TestModel applies long random sequences of changes and collections to a
// store and to a plain-map model of the documented behaviour, and compares
// them. The address pool is big enough for sets to cross the index
// thresholds in both directions.
func TestModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel() // CPU-bound and independent: use every core
			rng := rand.New(rand.NewPCG(seed, 0x6b617275))
			now := epoch
			m := testMemory(t, 2, &now)
			m.gcChunk = 1 + rng.IntN(50)
			model := map[bittorrent.InfoHash]*modelSwarm{}
			hashes := []bittorrent.InfoHash{{1}, {2}, {3}}

			var pool []netip.AddrPort
			for i := range 70 {
				pool = append(pool,
					netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), uint16(6881+i%2)),
					netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i)), uint16(6881+i%2)))
			}
			addrOf := func(i int) (given, canon netip.AddrPort) {
				canon = pool[i]
				given = canon
				if canon.Addr().Is4() && rng.IntN(4) == 0 {
					given = netip.AddrPortFrom(netip.AddrFrom16(canon.Addr().As16()), canon.Port())
				}
				return given, canon
			}

			for step := range 6000 {
				switch r := rng.IntN(100); {
				case r < 85:
					batch := make([]bittorrent.Change, 1+rng.IntN(4))
					for i := range batch {
						ih := hashes[rng.IntN(len(hashes))]
						given, canon := addrOf(rng.IntN(len(pool)))
						c := bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{Addr: given}, Seeder: rng.IntN(2) == 0}
						c.Peer.ID[0] = byte(rng.IntN(256))
						switch o := rng.IntN(10); {
						case o < 6:
							c.Op = bittorrent.OpPut
						case o < 7:
							c.Op = bittorrent.OpComplete
						default:
							c.Op = bittorrent.OpRemove
						}
						batch[i] = c
						sw := model[ih]
						if sw == nil && c.Op != bittorrent.OpRemove {
							sw = &modelSwarm{peers: map[netip.AddrPort]modelPeer{}}
							model[ih] = sw
						}
						switch c.Op {
						case bittorrent.OpRemove:
							if sw != nil {
								delete(sw.peers, canon)
							}
						case bittorrent.OpComplete:
							if !sw.peers[canon].seeded {
								sw.snatches++
							}
							sw.peers[canon] = modelPeer{seeder: true, seeded: true, id: c.Peer.ID, seen: int64(now.Sub(epoch) / time.Second)}
						default:
							seeded := c.Seeder || sw.peers[canon].seeded
							sw.peers[canon] = modelPeer{seeder: c.Seeder, seeded: seeded, id: c.Peer.ID, seen: int64(now.Sub(epoch) / time.Second)}
						}
					}
					m.Apply(batch)
				case r < 97:
					now = now.Add(time.Duration(rng.IntN(4000)) * time.Millisecond)
				default:
					want := 0
					nowSecs := int64(now.Sub(epoch) / time.Second)
					for ih, sw := range model {
						for a, p := range sw.peers {
							if nowSecs-p.seen > 60 {
								delete(sw.peers, a)
								want++
							}
						}
						if len(sw.peers) == 0 {
							delete(model, ih)
						}
					}
					if got := m.GC(now); got != want {
						t.Fatalf("step %d: GC removed %d, model %d", step, got, want)
					}
				}
				if step%7 == 0 {
					if err := m.checkInvariants(); err != nil {
						t.Fatalf("step %d: %v", step, err)
					}
				}
				if step%25 == 0 {
					compareModel(t, m, model, hashes, pool)
					if t.Failed() {
						t.Fatalf("step %d: store and model differ", step)
					}
				}
			}
		})
	}
}

func compareModel(t *testing.T, m *Memory, model map[bittorrent.InfoHash]*modelSwarm, hashes []bittorrent.InfoHash, pool []netip.AddrPort) {
	t.Helper()
	var want Stats
	for _, ih := range hashes {
		var wc bittorrent.Counts
		sw := model[ih]
		if sw != nil {
			want.Swarms++
			wc.Snatches = sw.snatches
			for a, p := range sw.peers {
				switch {
				case a.Addr().Is4() && p.seeder:
					want.Seeders4++
					wc.Seeders++
				case a.Addr().Is4():
					want.Leechers4++
					wc.Leechers++
				case p.seeder:
					want.Seeders6++
					wc.Seeders++
				default:
					want.Leechers6++
					wc.Leechers++
				}
			}
		}
		if got := m.Counts(ih); got != wc {
			t.Errorf("Counts(%x) = %+v, model %+v", ih[:1], got, wc)
		}
		for _, out := range []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("[2001:db8:1::1]:1")} {
			peers, _, _ := m.AnnouncePeers(ih, out, false, 1000, nil)
			got := map[netip.AddrPort]bittorrent.PeerID{}
			for _, p := range peers {
				got[p.Addr] = p.ID
			}
			var n int
			if sw != nil {
				for a, p := range sw.peers {
					if a.Addr().Is4() != out.Addr().Is4() {
						continue
					}
					n++
					if id, ok := got[a]; !ok || id != p.id {
						t.Errorf("%x: peer %s: got id %v (present %v), model %v", ih[:1], a, id[0], ok, p.id[0])
					}
				}
			}
			if len(peers) != n {
				t.Errorf("%x: %d peers handed to %s, model %d", ih[:1], len(peers), out, n)
			}
		}
		for _, a := range pool[:20] {
			wantState := bittorrent.Absent
			if sw != nil {
				if p, ok := sw.peers[a]; ok {
					wantState = bittorrent.Leeching
					if p.seeder {
						wantState = bittorrent.Seeding
					}
				}
			}
			if _, _, st := m.AnnouncePeers(ih, a, false, 0, nil); st != wantState {
				t.Errorf("%x: state of %s = %d, model %d", ih[:1], a, st, wantState)
			}
		}
	}
	if got := m.Stats(); got != want {
		t.Errorf("Stats = %+v, model %+v", got, want)
	}
}

// TestGCChunks collects big swarms in tiny chunks and checks that the
// collector really releases the shard lock between chunks, that changes
// made meanwhile are kept, and that every expired peer still goes.
func TestGCChunks(t *testing.T) {
	tests := []struct {
		name   string
		chunk  int
		swarms int
		v4, v6 int // peers per swarm, half of them expired
	}{
		{"one big swarm", 7, 1, 5000, 600},
		{"many swarms", 5, 40, 20, 6},
		{"chunk larger than the shard", 1 << 20, 3, 300, 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := epoch
			m := testMemory(t, 1, &now) // one shard: every swarm shares its lock
			m.gcChunk = tt.chunk
			ih := func(s int) bittorrent.InfoHash { return bittorrent.InfoHash{0xb1, byte(s)} }
			addr := func(s, i int, v6 bool) netip.AddrPort {
				if v6 {
					return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 12: byte(s), 13: byte(i >> 8), 14: byte(i)}), 1)
				}
				return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(s), byte(i >> 8), byte(i)}), 1)
			}
			fill := func(from int, at time.Time) {
				now = at
				var batch []bittorrent.Change
				for s := range tt.swarms {
					for i := from; i < tt.v4; i += 2 {
						batch = append(batch, bittorrent.Change{InfoHash: ih(s), Peer: bittorrent.Peer{Addr: addr(s, i, false)}, Op: bittorrent.OpPut, Seeder: i%3 == 0})
					}
					for i := from; i < tt.v6; i += 2 {
						batch = append(batch, bittorrent.Change{InfoHash: ih(s), Peer: bittorrent.Peer{Addr: addr(s, i, true)}, Op: bittorrent.OpPut, Seeder: i%5 == 0})
					}
				}
				m.Apply(batch)
			}
			fill(0, epoch)                      // even peers: expire
			fill(1, epoch.Add(30*time.Second))  // odd peers: stay
			gcAt := epoch.Add(90 * time.Second) // 90s after the even peers, 60s after the odd ones

			// Between chunks, add a fresh peer and a fresh swarm: adds never
			// move an unvisited record behind the collector.
			var pauses, added int
			m.gcPause = func(sh *shard) {
				pauses++
				if !sh.mu.TryLock() {
					t.Fatal("shard lock held between chunks")
				}
				sh.mu.Unlock()
				if pauses%3 == 0 {
					m.Apply([]bittorrent.Change{
						{InfoHash: ih(added % tt.swarms), Peer: bittorrent.Peer{Addr: addr(200, added, added%2 == 0)}, Op: bittorrent.OpPut, Seeder: added%4 < 2},
						{InfoHash: bittorrent.InfoHash{0xee, byte(added)}, Peer: bittorrent.Peer{Addr: addr(201, added, false)}, Op: bittorrent.OpPut},
					})
					added++
				}
			}
			wantRemoved := tt.swarms * ((tt.v4+1)/2 + (tt.v6+1)/2)
			before := m.Stats()
			if got := m.GC(gcAt); got != wantRemoved {
				t.Errorf("GC removed %d, want %d", got, wantRemoved)
			}
			if minPauses := (tt.swarms*(tt.v4+tt.v6) + tt.swarms) / tt.chunk; pauses < minPauses {
				t.Errorf("%d pauses, want at least %d", pauses, minPauses)
			}
			m.gcPause = nil
			if err := m.checkInvariants(); err != nil {
				t.Fatal(err)
			}
			after := m.Stats()
			kept := before.Seeders4 + before.Leechers4 + before.Seeders6 + before.Leechers6 - wantRemoved + 2*added
			if got := after.Seeders4 + after.Leechers4 + after.Seeders6 + after.Leechers6; got != kept {
				t.Errorf("%d peers left, want %d", got, kept)
			}
			for s := range tt.swarms {
				for i := range tt.v4 {
					if _, _, st := m.AnnouncePeers(ih(s), addr(s, i, false), false, 0, nil); (st == bittorrent.Absent) != (i%2 == 0) {
						t.Fatalf("swarm %d ipv4 peer %d: state %d after GC", s, i, st)
					}
				}
			}
			if got := m.GC(gcAt); got != 0 {
				t.Errorf("second GC removed %d, want 0", got)
			}
		})
	}
}

// TestGCConcurrentRemoves runs a chunked collection while peers leave
// between chunks, which may hide expired peers from this collection but
// must never corrupt the swarm; the next collection finds the rest.
func TestGCConcurrentRemoves(t *testing.T) {
	now := epoch
	m := testMemory(t, 1, &now)
	m.gcChunk = 3
	ih := bittorrent.InfoHash{7}
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 7, byte(i >> 8), byte(i)}), 1)
	}
	var batch []bittorrent.Change
	for i := range 400 {
		batch = append(batch, bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{Addr: addr(i)}, Op: bittorrent.OpPut, Seeder: i%2 == 0})
	}
	m.Apply(batch)
	// Remove peers from both ends of the swarm, counting those still there.
	var pauses, removedByChanges int
	m.gcPause = func(*shard) {
		pauses++
		if pauses > 100 {
			return
		}
		i := 399 - pauses
		if pauses%2 == 0 {
			i = pauses
		}
		c := m.Counts(ih)
		m.Apply([]bittorrent.Change{{InfoHash: ih, Peer: bittorrent.Peer{Addr: addr(i)}, Op: bittorrent.OpRemove}})
		if m.Counts(ih) != c {
			removedByChanges++
		}
	}
	first := m.GC(epoch.Add(time.Hour))
	m.gcPause = nil
	if err := m.checkInvariants(); err != nil {
		t.Fatal(err)
	}
	second := m.GC(epoch.Add(time.Hour))
	if first+second+removedByChanges != 400 || m.Counts(ih) != (bittorrent.Counts{}) {
		t.Errorf("removed %d + %d by GC and %d by changes, left %+v; want 400 in all and none left",
			first, second, removedByChanges, m.Counts(ih))
	}
	t.Logf("first GC removed %d, second %d, changes %d", first, second, removedByChanges)
	if removedByChanges == 0 {
		t.Error("no change removed a peer during the collection; the test tests nothing")
	}
	if m.Stats() != (Stats{}) {
		t.Errorf("Stats = %+v, want empty", m.Stats())
	}
}

func TestIndexThresholds(t *testing.T) {
	now := epoch
	m := testMemory(t, 1, &now)
	ih := bittorrent.InfoHash{9}
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 1)
	}
	set := func() *peerSet {
		sh := &m.shards[0]
		s := sh.set(sh.tab.get(&ih, hashInfo(m.seed, &ih)), &m.fam4)
		return &s
	}
	for i := range 200 {
		m.Apply([]bittorrent.Change{{InfoHash: ih, Peer: bittorrent.Peer{Addr: addr(i)}, Op: bittorrent.OpPut, Seeder: i%2 == 0}})
		if hasIdx, want := set().idx != nil, i+1 > smallMax; hasIdx != want {
			t.Fatalf("%d peers: index %v, want %v", i+1, hasIdx, want)
		}
	}
	for i := 199; i >= 0; i-- {
		m.Apply([]bittorrent.Change{{InfoHash: ih, Peer: bittorrent.Peer{Addr: addr(i)}, Op: bittorrent.OpRemove}})
		if err := m.checkInvariants(); err != nil {
			t.Fatalf("%d peers: %v", i, err)
		}
		if hasIdx, want := set().idx != nil, i > dropIndexAt; hasIdx != want {
			t.Fatalf("%d peers: index %v, want %v", i, hasIdx, want)
		}
	}
	if s := set(); s.recs != nil {
		t.Errorf("empty set keeps %d bytes", cap(s.recs))
	}
}

// TestIndexFollowsPerSourceLimit checks that a big swarm's index hashes
// whole addresses while max_peers_per_source is off, so many ports of one
// address do not share a probe run, and by source while it is on; that the
// limit holds in the meantime, when the index was built the other way; and
// that the next change rebuilds it.
func TestIndexFollowsPerSourceLimit(t *testing.T) {
	now := epoch
	m := testMemory(t, 1, &now) // max_peers_per_source off
	ih := bittorrent.InfoHash{0x51}
	put := func(addr string) {
		m.Apply([]bittorrent.Change{{InfoHash: ih, Peer: bittorrent.Peer{Addr: netip.MustParseAddrPort(addr)}, Op: bittorrent.OpPut}})
	}
	set := func() *peerSet {
		sh := &m.shards[0]
		s := sh.set(sh.tab.get(&ih, hashInfo(m.seed, &ih)), &m.fam4)
		return &s
	}
	for p := 1; p <= 100; p++ {
		put(fmt.Sprintf("10.0.0.1:%d", p))
	}
	if s := set(); s.idx == nil || !s.idx.whole {
		t.Fatalf("without a per-source limit: index %+v, want one by whole address", s.idx)
	}
	if err := m.checkInvariants(); err != nil {
		t.Fatal(err)
	}

	m.SetLimits(Limits{MaxPeersPerSource: 100})
	for _, tc := range []struct {
		addr string
		want error
	}{
		{"10.0.0.1:101", ErrTooManyForSource}, // counted by a scan: the index cannot
		{"10.0.0.1:50", nil},
		{"10.0.0.2:1", nil},
	} {
		if err := m.Admit(ih, netip.MustParseAddrPort(tc.addr)); !errors.Is(err, tc.want) {
			t.Errorf("limit on, index by address: Admit(%s) = %v, want %v", tc.addr, err, tc.want)
		}
	}
	put("10.0.0.1:101") // refused, but rebuilds the index by source
	if s := set(); s.n != 100 || s.idx == nil || s.idx.whole {
		t.Fatalf("after a change with the limit on: %d peers, index %+v; want 100 and an index by source", s.n, s.idx)
	}
	if err := m.Admit(ih, netip.MustParseAddrPort("10.0.0.1:102")); !errors.Is(err, ErrTooManyForSource) {
		t.Errorf("limit on, index by source: Admit = %v, want %v", err, ErrTooManyForSource)
	}
	if err := m.checkInvariants(); err != nil {
		t.Fatal(err)
	}

	m.SetLimits(Limits{})
	put("10.0.0.1:101")
	if s := set(); s.n != 101 || s.idx == nil || !s.idx.whole {
		t.Fatalf("limit off again: %d peers, index %+v; want 101 and an index by address", s.n, s.idx)
	}
	if err := m.checkInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestNoAllocs pins that the request path allocates nothing once dst has
// room and the peers exist.
func TestNoAllocs(t *testing.T) {
	now := epoch
	m := testMemory(t, 16, &now)
	for _, size := range []int{10, 1000} {
		ih := bittorrent.InfoHash{0xa1, byte(size >> 8), byte(size)}
		var batch []bittorrent.Change
		for i := range size {
			batch = append(batch, bittorrent.Change{InfoHash: ih, Peer: bittorrent.Peer{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 1)}, Op: bittorrent.OpPut, Seeder: i%2 == 0})
		}
		m.Apply(batch)
		self := batch[0].Peer.Addr
		dst := make([]bittorrent.Peer, 0, 50)
		if n := testing.AllocsPerRun(100, func() {
			dst, _, _ = m.AnnouncePeers(ih, self, false, 50, dst[:0])
		}); n != 0 {
			t.Errorf("AnnouncePeers on %d peers: %v allocations, want 0", size, n)
		}
		if n := testing.AllocsPerRun(100, func() { m.Apply(batch[:8]) }); n != 0 {
			t.Errorf("Apply re-announce on %d peers: %v allocations, want 0", size, n)
		}
	}
}

func TestMakeKey(t *testing.T) {
	tests := []struct {
		in   string
		ok   bool
		v6   bool
		want string // hex of the key
	}{
		{"1.2.3.4:6881", true, false, "010203041ae1"},
		{"[::ffff:1.2.3.4]:6881", true, false, "010203041ae1"},
		{"[2001:db8::1]:80", true, true, "20010db80000000000000000000000010050"},
		{"[fe80::1%eth0]:80", true, true, "fe8000000000000000000000000000010050"},
		{"1.2.3.4:0", true, false, "010203040000"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, ok := makeKey(netip.MustParseAddrPort(tt.in))
			if ok != tt.ok || k.v6() != tt.v6 || fmt.Sprintf("%x", k.bytes()) != tt.want {
				t.Errorf("makeKey = %x, %v (v6 %v); want %s, %v (v6 %v)", k.bytes(), ok, k.v6(), tt.want, tt.ok, tt.v6)
			}
		})
	}
	if _, ok := makeKey(netip.AddrPort{}); ok {
		t.Error("makeKey(zero) ok, want not ok")
	}
}

// TestPeerSetChurn drives one set through many random adds, moves and
// removes around and above the index thresholds, checking it against a map
// after every few operations. Probe runs that wrap around the end of the
// index table are common enough here to exercise deleteSlot fully.
func TestPeerSetChurn(t *testing.T) {
	for _, tc := range []struct{ v6, whole, untagged bool }{
		{false, false, false}, {true, false, false},
		{false, true, false}, {true, true, false},
		{false, false, true}, {false, true, true},
	} {
		v6 := tc.v6
		t.Run(fmt.Sprintf("v6=%v/whole=%v/untagged=%v", tc.v6, tc.whole, tc.untagged), func(t *testing.T) {
			t.Parallel() // CPU-bound and independent: use every core
			rng := rand.New(rand.NewPCG(1, 2))
			f := newFamily(v6, maphash.MakeSeed())
			if tc.whole {
				f.perSource = new(atomic.Int64) // no per-source limit: indexes by whole address
			}
			var s peerSet
			model := map[string]bool{} // key → seeder
			keys := make([]addrKey, 150)
			for i := range keys {
				a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
				if v6 {
					a = netip.AddrFrom16([16]byte{0x20, 0x01, 14: byte(i >> 8), 15: byte(i)})
				}
				keys[i], _ = makeKey(netip.AddrPortFrom(a, 1))
			}
			var id bittorrent.PeerID
			for step := range 30000 {
				k := &keys[rng.IntN(len(keys))]
				key := k.bytes()
				pos, _ := s.find(&f, key)
				if _, in := model[string(key)]; in != (pos >= 0) {
					t.Fatalf("step %d: find = %d, model has it: %v", step, pos, in)
				}
				// Alternate phases that fill the set to about 135 peers
				// and drain it to about 8.
				pAdd, pRemove := 90, 10
				if (step/2000)%2 == 1 {
					pAdd, pRemove = 5, 90
				}
				if tc.untagged && s.idx != nil && s.idx.tagged {
					untag(&f, &s)
				}
				switch r := rng.IntN(100); {
				case pos < 0 && r < pAdd:
					seeder := rng.IntN(2) == 0
					s.add(&f, key, &id, uint32(step), seeder)
					model[string(key)] = seeder
				case pos >= 0 && r < pRemove:
					s.remove(&f, pos)
					s.shrink(&f)
					delete(model, string(key))
				case pos >= 0:
					seeder := rng.IntN(2) == 0
					s.setSeeder(&f, pos, seeder)
					model[string(key)] = seeder
				}
				if step%11 == 0 {
					if err := checkSet(&f, &s); err != nil {
						t.Fatalf("step %d: %v", step, err)
					}
					var seeders int
					for key, seeder := range model {
						pos, _ := s.find(&f, []byte(key))
						if pos < 0 || (pos < s.seeders()) != seeder {
							t.Fatalf("step %d: %x at %d, seeder %v", step, key, pos, seeder)
						}
						if seeder {
							seeders++
						}
					}
					if int(s.n) != len(model) || s.seeders() != seeders {
						t.Fatalf("step %d: %d peers, %d seeders; model %d, %d", step, s.n, s.seeders(), len(model), seeders)
					}
				}
			}
		})
	}
}

// TestPeerSetFindScan pins what a scan of a small set reports: the
// position of a peer present, and the other peers of the key's source it
// passed, for peers that differ only in a port byte, only in an address
// byte, or by the peer ID stored just after the address.
func TestPeerSetFindScan(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		f := newFamily(v6, maphash.MakeSeed())
		addr := func(last byte, port uint16) []byte {
			a := netip.AddrFrom4([4]byte{10, 0, 0, last})
			if v6 {
				a = netip.AddrFrom16([16]byte{0x20, 0x01, 15: last})
			}
			k, _ := makeKey(netip.AddrPortFrom(a, port))
			return k.bytes()
		}
		var s peerSet
		stored := [][]byte{addr(1, 1), addr(1, 0x100), addr(2, 1), addr(1, 0x101), addr(3, 0xffff)}
		for i, k := range stored {
			id := bittorrent.PeerID{0xff, 0xff, 0xff, byte(i)} // right after the address: must not count
			s.add(&f, k, &id, 0, false)
		}
		// In IPv6 a source is a /64, so 2001::1, ::2 and ::3 are one.
		for _, tc := range []struct {
			key          []byte
			pos          int
			same4, same6 int // the other peers of the key's source passed
		}{
			{addr(1, 1), 0, 0, 0},
			{addr(1, 0x100), 1, 1, 1},
			{addr(2, 1), 2, 0, 2},
			{addr(1, 0x101), 3, 2, 3},
			{addr(3, 0xffff), 4, 0, 4},
			{addr(1, 2), -1, 3, 5},
			{addr(4, 1), -1, 0, 5},
			{addr(1, 0xff00), -1, 3, 5},
		} {
			want := tc.same4
			if v6 {
				want = tc.same6
			}
			if pos, same := s.find(&f, tc.key); pos != tc.pos || same != want {
				t.Errorf("v6=%v: find(%x) = %d, %d; want %d, %d", v6, tc.key, pos, same, tc.pos, want)
			}
		}
	}
}

// TestAppendPeers checks that appendPeers builds the same peers as decode,
// whichever records it is given, in both families.
func TestAppendPeers(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, v6 := range []bool{false, true} {
		f := newFamily(v6, maphash.MakeSeed())
		var s peerSet
		for i := range 100 {
			var a [16]byte
			for j := range a {
				a[j] = byte(rng.Uint32())
			}
			ip := netip.AddrFrom16(a)
			if !v6 {
				ip = netip.AddrFrom4([4]byte(a[:4]))
			}
			k, _ := makeKey(netip.AddrPortFrom(ip, uint16(rng.Uint32())))
			var id bittorrent.PeerID
			for j := range id {
				id[j] = byte(rng.Uint32())
			}
			s.add(&f, k.bytes(), &id, uint32(i), false)
		}
		for range 50 {
			pos := make([]int, rng.IntN(maxAppend+1))
			for j := range pos {
				pos[j] = rng.IntN(int(s.n))
			}
			got := s.appendPeers(&f, pos, []bittorrent.Peer{{}})
			if len(got) != 1+len(pos) {
				t.Fatalf("v6=%v: %d peers for %d positions onto 1", v6, len(got), len(pos))
			}
			for j, i := range pos {
				var want bittorrent.Peer
				f.decode(&want, s.rec(&f, i))
				if got[1+j] != want {
					t.Fatalf("v6=%v: record %d: got %v %x, want %v %x", v6, i, got[1+j].Addr, got[1+j].ID, want.Addr, want.ID)
				}
			}
		}
	}
}

// untag rebuilds s's index untagged, as a set of maxTagged peers or more
// has it, so tests reach that form without millions of peers.
func untag(f *family, s *peerSet) {
	x := &index{slots: make([]uint32, len(s.idx.slots)), whole: s.idx.whole}
	for i := range int(s.n) {
		x.insert(i, x.hash(f, s.addrAt(f, i)))
	}
	s.idx = x
}

// TestIndexDeleteWrap builds probe runs that wrap around the end of a
// 64-slot index and deletes from them in every order of a few shuffles:
// the cases of deleteSlot that random churn rarely reaches.
func TestIndexDeleteWrap(t *testing.T) {
	f := newFamily(false, maphash.MakeSeed())
	const slots = minIndexSlots
	want := map[uint64]int{slots - 2: 3, slots - 1: 3, 0: 2, 1: 2} // home slot → keys
	var s peerSet
	var id bittorrent.PeerID
	for i := 0; len(want) > 0; i++ {
		k, _ := makeKey(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1))
		home := f.hash(k.bytes()) & (slots - 1)
		if want[home] > 0 {
			s.add(&f, k.bytes(), &id, 0, false)
			if want[home]--; want[home] == 0 {
				delete(want, home)
			}
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 50 {
		s.buildIndex(&f)
		if len(s.idx.slots) != slots {
			t.Fatalf("index of %d slots, want %d", len(s.idx.slots), slots)
		}
		order := rng.Perm(int(s.n))
		gone := map[int]bool{}
		for _, pos := range order {
			s.idx.deleteSlot(&s, &f, s.idx.slotOf(&s, &f, pos))
			gone[pos] = true
			for i := range int(s.n) {
				_, got, _ := s.idx.lookup(&s, &f, s.addrAt(&f, i), f.hash(s.addrAt(&f, i)))
				wantPos := i
				if gone[i] {
					wantPos = -1
				}
				if got != wantPos {
					t.Fatalf("round %d, deleted %v: lookup of position %d = %d, want %d", round, order[:len(gone)], i, got, wantPos)
				}
			}
		}
	}
}

// TestConcurrentWithGC runs writers, readers and back-to-back collections
// in small chunks at once, under a clock that makes peers expire. Run it
// with -race; the structure must be intact afterwards.
func TestConcurrentWithGC(t *testing.T) {
	var mu sync.Mutex
	now := epoch
	cfg := DefaultConfig()
	cfg.PeerLifetime = time.Second
	cfg.GCInterval = time.Second
	cfg.Shards = 2
	cfg.MaxPeersPerSource = 0
	cfg.Clock = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(10 * time.Millisecond)
		return now
	}
	m, err := NewMemory(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.gcChunk = 8

	ih := func(i int) bittorrent.InfoHash { return bittorrent.InfoHash{0xc0, byte(i % 5)} }
	addr := func(w, i int) netip.AddrPort {
		if i%4 == 0 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 14: byte(w), 15: byte(i)}), 1)
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(w), byte(i)}), 1)
	}
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var collected atomic.Int64
	// Readers and the collector are bounded, so that they cannot starve the
	// writers on a busy machine; the collector goes on past its 300 rounds,
	// and past the writers' end, until something has expired, as on a
	// loaded (or a fast) machine its rounds can all run before the writers
	// have made a peer old enough. Its own clock reads age the peers, so
	// that ends.
	bg.Go(func() {
		for i := 0; i < 300 || collected.Load() == 0; i++ {
			if collected.Load() > 0 {
				select {
				case <-stop:
					return
				default:
				}
			}
			collected.Add(int64(m.GC(cfg.Clock())))
		}
	})
	for r := range 2 {
		bg.Go(func() {
			var buf []bittorrent.Peer
			for i := range 4000 {
				select {
				case <-stop:
					return
				default:
				}
				buf, _, _ = m.AnnouncePeers(ih(i), addr(r, i%200), i%2 == 0, 30, buf[:0])
				m.Stats()
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			for i := range 1500 {
				op := bittorrent.OpPut
				if i%7 == 0 {
					op = bittorrent.OpRemove
				}
				m.Apply([]bittorrent.Change{{InfoHash: ih(i), Peer: bittorrent.Peer{Addr: addr(w, i%200)}, Op: op, Seeder: i%3 == 0}})
			}
		})
	}
	writers.Wait()
	close(stop)
	bg.Wait()
	if err := m.checkInvariants(); err != nil {
		t.Fatal(err)
	}
	if collected.Load() == 0 {
		t.Error("no peer expired during the run; the test tests nothing")
	}
	m.GC(cfg.Clock().Add(time.Hour))
	if st := m.Stats(); st != (Stats{}) {
		t.Errorf("after expiring everything: Stats = %+v", st)
	}
}
