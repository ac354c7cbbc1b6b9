package peerpref

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

var _ hooks.PeerRanker = (*Hook)(nil)

func mustNew(t testing.TB, cfg Config) *Hook {
	t.Helper()
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func fleet() Config {
	cfg := DefaultConfig()
	cfg.Datacenters = map[string][]string{
		"fra1": {"10.1.0.0/16", "2001:db8:1::/48"},
		"ams1": {"10.2.0.0/16", "2001:db8:2::/48"},
		// A rack inside ams1's range that is a datacenter of its own: the
		// more specific range wins.
		"ams1-annex": {"10.2.99.0/24"},
	}
	return cfg
}

func peersAt(addrs ...string) []bittorrent.Peer {
	peers := make([]bittorrent.Peer, len(addrs))
	for i, a := range addrs {
		peers[i].Addr = netip.AddrPortFrom(netip.MustParseAddr(a), uint16(1000+i))
	}
	return peers
}

func addrsOf(peers []bittorrent.Peer) []string {
	out := make([]string, len(peers))
	for i, p := range peers {
		out[i] = p.Addr.Addr().String()
	}
	return out
}

func announcer(addr string) *bittorrent.AnnounceRequest {
	return &bittorrent.AnnounceRequest{Addr: netip.AddrPortFrom(netip.MustParseAddr(addr), 6881)}
}

// TestRankOrder pins the order: subnet, then datacenter, then the rest,
// each group in the order the source gave.
func TestRankOrder(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		from   string
		peers  []string
		wanted []string
	}{
		{
			name:   "ipv4 subnet then datacenter then rest",
			cfg:    fleet(),
			from:   "10.1.5.7",
			peers:  []string{"10.2.0.1", "10.1.9.1", "10.1.5.200", "192.0.2.1", "10.1.5.3", "10.1.7.7", "10.2.99.4"},
			wanted: []string{"10.1.5.200", "10.1.5.3", "10.1.9.1", "10.1.7.7", "10.2.0.1", "192.0.2.1", "10.2.99.4"},
		},
		{
			name:   "most specific range decides the datacenter",
			cfg:    fleet(),
			from:   "10.2.0.5",
			peers:  []string{"10.2.99.4", "10.1.0.1", "10.2.50.1"},
			wanted: []string{"10.2.50.1", "10.2.99.4", "10.1.0.1"},
		},
		{
			name:   "ipv6 /64 then datacenter",
			cfg:    fleet(),
			from:   "2001:db8:1:5::10",
			peers:  []string{"2001:db8:2::1", "2001:db8:1:6::1", "2001:db8:1:5::99", "2001:db8:ffff::1", "2001:db8:1:5:1::1"},
			wanted: []string{"2001:db8:1:5::99", "2001:db8:1:5:1::1", "2001:db8:1:6::1", "2001:db8:2::1", "2001:db8:ffff::1"},
		},
		{
			name:   "ipv4-mapped announcer",
			cfg:    fleet(),
			from:   "::ffff:10.1.5.7",
			peers:  []string{"10.2.0.1", "10.1.9.1", "10.1.5.200"},
			wanted: []string{"10.1.5.200", "10.1.9.1", "10.2.0.1"},
		},
		{
			name:   "announcer outside every datacenter gets its subnet first",
			cfg:    fleet(),
			from:   "192.0.2.50",
			peers:  []string{"10.1.0.1", "192.0.2.1", "10.2.0.1", "192.0.3.1"},
			wanted: []string{"192.0.2.1", "10.1.0.1", "10.2.0.1", "192.0.3.1"},
		},
		{
			name:   "subnets off: datacenter only",
			cfg:    func() Config { c := fleet(); c.IPv4Prefix = 0; return c }(),
			from:   "10.1.5.7",
			peers:  []string{"192.0.2.1", "10.2.0.1", "10.1.200.1", "10.1.5.8"},
			wanted: []string{"10.1.200.1", "10.1.5.8", "192.0.2.1", "10.2.0.1"},
		},
		{
			name:   "nothing to prefer keeps the source order",
			cfg:    Config{Candidates: 4},
			from:   "10.1.5.7",
			peers:  []string{"10.2.0.1", "10.1.5.8", "10.1.0.1"},
			wanted: []string{"10.2.0.1", "10.1.5.8", "10.1.0.1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustNew(t, tt.cfg)
			for _, spare := range []int{0, len(tt.peers)} { // growing and in-place
				peers := append(make([]bittorrent.Peer, 0, len(tt.peers)+spare), peersAt(tt.peers...)...)
				got := h.RankPeers(announcer(tt.from), peers, 2)
				if !slices.Equal(addrsOf(got), tt.wanted) {
					t.Errorf("spare %d: ranked %v, want %v", spare, addrsOf(got), tt.wanted)
				}
			}
		})
	}
}

// TestRankKeepsRandomness checks that the partition is stable, so the
// source's random order survives within each group, and that shuffled
// input gives varied output.
func TestRankKeepsRandomness(t *testing.T) {
	h := mustNew(t, fleet())
	var addrs []string
	for i := range 8 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 1, 5, byte(10 + i)}).String()) // subnet
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 1, 8, byte(10 + i)}).String()) // datacenter
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 2, 8, byte(10 + i)}).String()) // rest
	}
	group := func(a string) int {
		switch {
		case strings.HasPrefix(a, "10.1.5."):
			return 0
		case strings.HasPrefix(a, "10.1."):
			return 1
		}
		return 2
	}
	firsts := map[string]bool{}
	for range 50 {
		in := peersAt(addrs...)
		rand.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		want := addrsOf(in)
		slices.SortStableFunc(want, func(a, b string) int { return group(a) - group(b) })
		got := addrsOf(h.RankPeers(announcer("10.1.5.1"), in, 5))
		if !slices.Equal(got, want) {
			t.Fatalf("ranked %v, want the stable partition %v", got, want)
		}
		firsts[got[0]] = true
	}
	if len(firsts) < 3 {
		t.Errorf("the first peer was one of only %v over 50 shuffles; the order within the group is not random", firsts)
	}
}

// shuffleSource is a PeerSource that, like the store, returns up to n of
// its peers in random order.
type shuffleSource struct{ peers []bittorrent.Peer }

func (s *shuffleSource) AnnouncePeers(_ bittorrent.InfoHash, _ netip.AddrPort, _ bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	start := len(dst)
	dst = append(dst, s.peers...)
	rand.Shuffle(len(dst)-start, func(i, j int) { dst[start+i], dst[start+j] = dst[start+j], dst[start+i] })
	return dst[:start+min(n, len(s.peers))], bittorrent.Counts{Leechers: uint32(len(s.peers))}, bittorrent.Absent
}

func (s *shuffleSource) Counts(bittorrent.InfoHash) bittorrent.Counts { return bittorrent.Counts{} }

// TestResponderKeepsPreferred runs the hook behind a Responder over a swarm
// of 12 where 3 peers share the subnet and 2 more the datacenter: with at
// least 12 candidates drawn, numwant 3 always answers the 3 subnet peers,
// in varying order, and larger numwants add the datacenter, then the rest.
func TestResponderKeepsPreferred(t *testing.T) {
	addrs := []string{"10.1.5.2", "10.1.5.3", "10.1.5.4", "10.1.9.1", "10.1.9.2"}
	for i := range 7 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)}).String())
	}
	h := mustNew(t, fleet())
	r := hooks.NewResponder(&shuffleSource{peers: peersAt(addrs...)}, h)
	orders := map[string]bool{}
	for _, numwant := range []uint32{3, 5, 7} {
		for range 40 {
			req := announcer("10.1.5.1")
			req.NumWant = numwant
			var resp bittorrent.AnnounceResponse
			if err := r.HandleAnnounce(context.Background(), req, &resp); err != nil {
				t.Fatal(err)
			}
			got := addrsOf(resp.Peers)
			if len(got) != int(numwant) {
				t.Fatalf("numwant %d: got %d peers %v", numwant, len(got), got)
			}
			for i, a := range got {
				want := "10.2.0." // the rest
				switch {
				case i < 3:
					want = "10.1.5."
				case i < 5:
					want = "10.1.9."
				}
				if !strings.HasPrefix(a, want) {
					t.Fatalf("numwant %d: peer %d is %s, want one in %s* (answer %v)", numwant, i, a, want, got)
				}
			}
			if numwant == 3 {
				orders[strings.Join(got, ",")] = true
			}
		}
	}
	if len(orders) < 2 {
		t.Errorf("40 answers all listed the subnet peers in the order %v", orders)
	}
}

func TestCandidates(t *testing.T) {
	h := mustNew(t, DefaultConfig())
	for _, tt := range []struct{ n, want int }{{1, 4}, {50, 200}, {66, 264}, {67, 267}, {200, 400}} {
		if got := h.Candidates(tt.n); got != tt.want {
			t.Errorf("Candidates(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	with := func(f func(*Config)) Config {
		c := DefaultConfig()
		f(&c)
		return c
	}
	tests := []struct {
		cfg  Config
		want string
	}{
		{with(func(c *Config) { c.IPv4Prefix = 33 }), "ipv4_prefix: 33 is out of range; want 0 to 32"},
		{with(func(c *Config) { c.IPv4Prefix = -1 }), "ipv4_prefix: -1 is out of range"},
		{with(func(c *Config) { c.IPv6Prefix = 129 }), "ipv6_prefix: 129 is out of range; want 0 to 128"},
		{with(func(c *Config) { c.Candidates = 0 }), "candidates: 0 is out of range"},
		{with(func(c *Config) { c.MaxExtraCandidates = -5 }), "max_extra_candidates: -5 is out of range"},
		{with(func(c *Config) { c.Datacenters = map[string][]string{"fra1": {"x"}} }), `datacenters.fra1[0]: "x" is not a CIDR`},
		{with(func(c *Config) { c.Datacenters = map[string][]string{"fra1": {"10.0.0.0/8", "10.0.0.1"}} }), `datacenters.fra1[1]: "10.0.0.1" is not a CIDR`},
		{with(func(c *Config) {
			c.Datacenters = map[string][]string{"ams1": {"10.1.0.0/16"}, "fra1": {"10.1.2.3/16"}}
		}), "datacenters.fra1[0]: 10.1.0.0/16 is already in datacenter ams1"},
		{with(func(c *Config) { c.Datacenters = map[string][]string{"fra1": {"::ffff:10.0.0.0/104"}} }), "datacenters.fra1[0]: \"::ffff:10.0.0.0/104\" is an IPv4-mapped range"},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error starting %q", tt.cfg, err, tt.want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	if err := fleet().Validate(); err != nil {
		t.Errorf("fleet invalid: %v", err)
	}
}

// TestRankedAnswerAllocs checks that ranking reuses the answer's buffer:
// once it has grown, an answer through a ranking Responder allocates
// nothing.
func TestRankedAnswerAllocs(t *testing.T) {
	addrs := make([]string, 0, 300)
	for i := range 300 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, byte(1 + i%3), byte(i / 3), 1}).String())
	}
	r := hooks.NewResponder(&fixedSource{peers: peersAt(addrs...)}, mustNew(t, fleet()))
	req := announcer("10.1.5.1")
	req.NumWant = 50
	var resp bittorrent.AnnounceResponse
	ctx := context.Background()
	_ = r.HandleAnnounce(ctx, req, &resp) // grows the buffer
	if got := testing.AllocsPerRun(100, func() { _ = r.HandleAnnounce(ctx, req, &resp) }); got != 0 {
		t.Errorf("a ranked answer allocates %v times, want 0", got)
	}
	if len(resp.Peers) != 50 {
		t.Errorf("got %d peers, want 50", len(resp.Peers))
	}
}

// fixedSource returns its first n peers without allocating.
type fixedSource struct{ peers []bittorrent.Peer }

func (s *fixedSource) AnnouncePeers(_ bittorrent.InfoHash, _ netip.AddrPort, _ bool, n int, dst []bittorrent.Peer) ([]bittorrent.Peer, bittorrent.Counts, bittorrent.PeerState) {
	return append(dst, s.peers[:min(n, len(s.peers))]...), bittorrent.Counts{}, bittorrent.Absent
}

func (s *fixedSource) Counts(bittorrent.InfoHash) bittorrent.Counts { return bittorrent.Counts{} }

func BenchmarkRankedAnswer(b *testing.B) {
	addrs := make([]string, 0, 1000)
	for i := range 1000 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, byte(1 + i%3), byte(i / 3), 1}).String())
	}
	r := hooks.NewResponder(&fixedSource{peers: peersAt(addrs...)}, mustNew(b, fleet()))
	req := announcer("10.1.5.1")
	req.NumWant = 50
	var resp bittorrent.AnnounceResponse
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = r.HandleAnnounce(ctx, req, &resp)
	}
}
