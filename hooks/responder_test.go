package hooks

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

type fakeSource struct {
	peers  []bittorrent.Peer
	counts bittorrent.Counts
	self   bittorrent.PeerState
	gotN   int
}

func (f *fakeSource) AnnouncePeers(_ bittorrent.InfoHash, _ netip.AddrPort, _ bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	f.gotN = n
	return append(dst, f.peers[:min(n, len(f.peers))]...), f.counts, f.self
}

func (f *fakeSource) Counts(ih bittorrent.InfoHash) bittorrent.Counts {
	return bittorrent.Counts{Seeders: uint32(ih[0])}
}

func TestCountsAfter(t *testing.T) {
	base := bittorrent.Counts{Seeders: 5, Leechers: 7, Snatches: 3}
	put := func(seeder bool) bittorrent.Change { return bittorrent.Change{Op: bittorrent.OpPut, Seeder: seeder} }
	tests := []struct {
		name   string
		self   bittorrent.PeerState
		change bittorrent.Change
		want   bittorrent.Counts
	}{
		{"new leecher", bittorrent.Absent, put(false), bittorrent.Counts{Seeders: 5, Leechers: 8, Snatches: 3}},
		{"new seeder", bittorrent.Absent, put(true), bittorrent.Counts{Seeders: 6, Leechers: 7, Snatches: 3}},
		{"leecher re-announces", bittorrent.Leeching, put(false), base},
		{"seeder re-announces", bittorrent.Seeding, put(true), base},
		{"leecher finishes without event", bittorrent.Leeching, put(true), bittorrent.Counts{Seeders: 6, Leechers: 6, Snatches: 3}},
		{"leecher completes", bittorrent.Leeching, bittorrent.Change{Op: bittorrent.OpComplete}, bittorrent.Counts{Seeders: 6, Leechers: 6, Snatches: 4}},
		{"unknown peer completes", bittorrent.Absent, bittorrent.Change{Op: bittorrent.OpComplete}, bittorrent.Counts{Seeders: 6, Leechers: 7, Snatches: 4}},
		{"seeder completes again", bittorrent.Seeding, bittorrent.Change{Op: bittorrent.OpComplete}, base},
		{"seeder stops", bittorrent.Seeding, bittorrent.Change{Op: bittorrent.OpRemove}, bittorrent.Counts{Seeders: 4, Leechers: 7, Snatches: 3}},
		{"unknown peer stops", bittorrent.Absent, bittorrent.Change{Op: bittorrent.OpRemove}, base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CountsAfter(base, tt.self, tt.change); got != tt.want {
				t.Errorf("CountsAfter = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := CountsAfter(bittorrent.Counts{}, bittorrent.Seeding, bittorrent.Change{Op: bittorrent.OpRemove}); got.Seeders != 0 {
		t.Errorf("lagging counts wrapped: %+v", got)
	}
}

func TestResponderAnnounce(t *testing.T) {
	peers := make([]bittorrent.Peer, 10)
	for i := range peers {
		peers[i].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(i+1))
	}
	src := &fakeSource{peers: peers, counts: bittorrent.Counts{Seeders: 1, Leechers: 9}}
	r := NewResponder(src)
	req := &bittorrent.AnnounceRequest{NumWant: 4, Left: 100}
	var resp bittorrent.AnnounceResponse
	if err := r.HandleAnnounce(context.Background(), req, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Peers) != 4 || resp.Complete != 1 || resp.Incomplete != 10 {
		t.Errorf("got %d peers, %d complete, %d incomplete; want 4, 1, 10", len(resp.Peers), resp.Complete, resp.Incomplete)
	}
	req.Event = bittorrent.EventStopped
	if err := r.HandleAnnounce(context.Background(), req, &resp); err != nil {
		t.Fatal(err)
	}
	if src.gotN != 0 || len(resp.Peers) != 0 {
		t.Errorf("stopped announce asked for %d peers and got %d, want none", src.gotN, len(resp.Peers))
	}
}

// reverseRanker puts the last candidate first and records what it saw.
type reverseRanker struct {
	factor int
	gotLen int
	gotN   int
}

func (r *reverseRanker) Candidates(n int) int { return r.factor * n }

func (r *reverseRanker) RankPeers(_ *bittorrent.AnnounceRequest, peers []bittorrent.Peer, n int) []bittorrent.Peer {
	r.gotLen, r.gotN = len(peers), n
	slices.Reverse(peers)
	return peers
}

func testPeers(n int) []bittorrent.Peer {
	peers := make([]bittorrent.Peer, n)
	for i := range peers {
		peers[i].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), uint16(i+1))
	}
	return peers
}

func TestResponderRanks(t *testing.T) {
	tests := []struct {
		name      string
		swarm     int
		numwant   uint32
		factors   []int
		wantAsked int
		wantPorts []uint16
	}{
		{"no ranker asks for numwant", 10, 3, nil, 3, []uint16{1, 2, 3}},
		{"ranker draws candidates, keeps numwant", 10, 3, []int{2}, 6, []uint16{6, 5, 4}},
		{"fewer candidates than numwant", 4, 3, []int{3}, 9, []uint16{4, 3, 2}},
		{"swarm smaller than numwant", 2, 3, []int{3}, 9, []uint16{2, 1}},
		{"most candidates wins; rankers run in order", 20, 2, []int{2, 5}, 10, []uint16{1, 2}},
		{"ranker asking fewer than numwant", 10, 3, []int{0}, 3, []uint16{3, 2, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &fakeSource{peers: testPeers(tt.swarm)}
			var rankers []PeerRanker
			var last *reverseRanker
			for _, f := range tt.factors {
				last = &reverseRanker{factor: f}
				rankers = append(rankers, last)
			}
			r := NewResponder(src, rankers...)
			req := &bittorrent.AnnounceRequest{NumWant: tt.numwant, Left: 1}
			var resp bittorrent.AnnounceResponse
			if err := r.HandleAnnounce(context.Background(), req, &resp); err != nil {
				t.Fatal(err)
			}
			if src.gotN != tt.wantAsked {
				t.Errorf("asked the source for %d peers, want %d", src.gotN, tt.wantAsked)
			}
			var ports []uint16
			for _, p := range resp.Peers {
				ports = append(ports, p.Addr.Port())
			}
			if !slices.Equal(ports, tt.wantPorts) {
				t.Errorf("answered ports %v, want %v", ports, tt.wantPorts)
			}
			if last != nil && last.gotN != int(tt.numwant) {
				t.Errorf("ranker told to keep %d, want numwant %d", last.gotN, tt.numwant)
			}
		})
	}
}

func TestResponderStoppedSkipsRankers(t *testing.T) {
	src := &fakeSource{peers: testPeers(10)}
	rk := &reverseRanker{factor: 4}
	r := NewResponder(src, rk)
	req := &bittorrent.AnnounceRequest{NumWant: 5, Event: bittorrent.EventStopped}
	var resp bittorrent.AnnounceResponse
	if err := r.HandleAnnounce(context.Background(), req, &resp); err != nil {
		t.Fatal(err)
	}
	if src.gotN != 0 || len(resp.Peers) != 0 || rk.gotLen != 0 {
		t.Errorf("stopped announce: asked %d, got %d peers, ranked %d; want none", src.gotN, len(resp.Peers), rk.gotLen)
	}
}

// TestResponderAllocs pins the common path, without rankers, at zero
// allocations once the answer's buffer has grown.
func TestResponderAllocs(t *testing.T) {
	r := NewResponder(&fakeSource{peers: testPeers(100)})
	req := &bittorrent.AnnounceRequest{NumWant: 50, Left: 1}
	var resp bittorrent.AnnounceResponse
	ctx := context.Background()
	_ = r.HandleAnnounce(ctx, req, &resp)
	if got := testing.AllocsPerRun(100, func() { _ = r.HandleAnnounce(ctx, req, &resp) }); got != 0 {
		t.Errorf("an answer allocates %v times, want 0", got)
	}
}

func BenchmarkResponderAnnounce(b *testing.B) {
	r := NewResponder(&fakeSource{peers: testPeers(100)})
	req := &bittorrent.AnnounceRequest{NumWant: 50, Left: 1}
	var resp bittorrent.AnnounceResponse
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.HandleAnnounce(ctx, req, &resp)
	}
}

func TestResponderScrapeKeepsOrder(t *testing.T) {
	r := NewResponder(&fakeSource{})
	req := &bittorrent.ScrapeRequest{InfoHashes: []bittorrent.InfoHash{{3}, {1}, {2}}}
	var resp bittorrent.ScrapeResponse
	if err := r.HandleScrape(context.Background(), req, &resp); err != nil {
		t.Fatal(err)
	}
	for i, f := range resp.Files {
		if f.InfoHash != req.InfoHashes[i] || f.Seeders != uint32(req.InfoHashes[i][0]) {
			t.Errorf("file %d = %+v, does not match request", i, f)
		}
	}
}

type sinkFunc func([]bittorrent.Change)

func (f sinkFunc) Apply(c []bittorrent.Change) { f(c) }

func TestSwarmWriter(t *testing.T) {
	var got []bittorrent.Change
	w := NewSwarmWriter(sinkFunc(func(c []bittorrent.Change) { got = append(got, c...) }))
	reqs := []bittorrent.AnnounceRequest{
		{InfoHash: bittorrent.InfoHash{1}, Left: 10},
		{InfoHash: bittorrent.InfoHash{1}, Event: bittorrent.EventCompleted, Left: 10},
		{InfoHash: bittorrent.InfoHash{1}, Event: bittorrent.EventStopped},
		{InfoHash: bittorrent.InfoHash{2}, Left: 0},
	}
	w.AfterAnnounces(context.Background(), reqs)
	want := []struct {
		op     bittorrent.ChangeOp
		seeder bool
	}{{bittorrent.OpPut, false}, {bittorrent.OpComplete, true}, {bittorrent.OpRemove, true}, {bittorrent.OpPut, true}}
	if len(got) != len(want) {
		t.Fatalf("got %d changes, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Op != w.op || got[i].Seeder != w.seeder || got[i].InfoHash != reqs[i].InfoHash {
			t.Errorf("change %d = %+v, want op %v seeder %v", i, got[i], w.op, w.seeder)
		}
	}
}

// prefetchSource is a fakeSource that records what it is asked to prefetch.
type prefetchSource struct {
	fakeSource
	got []bittorrent.InfoHash
}

func (p *prefetchSource) Prefetch(ihs []bittorrent.InfoHash) { p.got = append(p.got, ihs...) }

// TestChainPrefetch checks that a chain prefetches through its Responder's
// source when that source prefetches, and tells frontends there is nothing
// to prefetch when it does not.
func TestChainPrefetch(t *testing.T) {
	plain, _ := newTestChain(t, DefaultConfig(), []PreHook{NewResponder(&fakeSource{})}, nil)
	if pf := PrefetcherOf(plain); pf != nil {
		t.Errorf("chain over a source that does not prefetch: PrefetcherOf = %v, want nil", pf)
	}

	src := &prefetchSource{}
	c, _ := newTestChain(t, DefaultConfig(), []PreHook{NewResponder(src)}, nil)
	pf := PrefetcherOf(c)
	if pf == nil {
		t.Fatal("chain over a prefetching source: PrefetcherOf = nil")
	}
	ihs := []bittorrent.InfoHash{{1}, {2}}
	pf.Prefetch(ihs)
	if len(src.got) != 2 || src.got[0] != ihs[0] || src.got[1] != ihs[1] {
		t.Errorf("source prefetched %x, want %x", src.got, ihs)
	}
}

func TestResponderRefusesWebRTCPrefixWithoutSource(t *testing.T) {
	r := NewResponder(&fakeSource{})
	req := &bittorrent.AnnounceRequest{Addr: bittorrent.WebRTCAddr(1, 2)}
	if err := r.HandleAnnounce(context.Background(), req, &bittorrent.AnnounceResponse{}); !errors.Is(err, ErrReservedAddr) {
		t.Errorf("announce from the WebRTC prefix without a source: %v; want ErrReservedAddr", err)
	}
	req.Source = netip.MustParseAddr("192.0.2.1")
	if err := r.HandleAnnounce(context.Background(), req, &bittorrent.AnnounceResponse{}); err != nil {
		t.Errorf("WebSocket announce: %v", err)
	}
}
