package loadgen

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

func TestPairOf(t *testing.T) {
	for _, n := range []int{2, 3, 6, 9} {
		counts := map[[2]int]int{}
		rounds := n * (n - 1) * 4
		for i := range rounds {
			a, b := pairOf(i, n)
			if a == b || a < 0 || b < 0 || a >= n || b >= n {
				t.Fatalf("n %d round %d: pair %d→%d", n, i, a, b)
			}
			counts[[2]int{a, b}]++
		}
		if len(counts) != n*(n-1) {
			t.Errorf("n %d: %d ordered pairs used, want %d", n, len(counts), n*(n-1))
		}
		for p, c := range counts {
			if c != 4 {
				t.Errorf("n %d: pair %v ran %d rounds, want 4", n, p, c)
			}
		}
	}
}

func TestVisRoundsAreDistinct(t *testing.T) {
	hashes := map[bittorrent.InfoHash]bool{}
	ports := map[uint16]bool{}
	for i := range 1000 {
		hashes[visInfoHash(42, i)] = true
		s, l, r := visPorts(i)
		ports[s], ports[l], ports[r] = true, true, true
	}
	if len(hashes) != 1000 || len(ports) != 3000 {
		t.Errorf("%d infohashes and %d ports for 1000 rounds; want all distinct", len(hashes), len(ports))
	}
	if visInfoHash(42, 1) == visInfoHash(43, 1) {
		t.Error("two runs share a swarm")
	}
}

func TestVisBook(t *testing.T) {
	b := newVisBook(3)
	for i := range 100 {
		b.add(0, 1, PathBoth, true, time.Duration(i+1)*time.Millisecond, 2)
	}
	b.add(1, 2, PathWriter, true, 500*time.Microsecond, 1)
	b.add(2, 0, PathWriter, false, 2*time.Second, 7)
	b.failed()
	r := b.result()
	if r.Seen != 101 || r.Timeouts != 1 || r.Errors != 1 {
		t.Errorf("seen %d timeouts %d errors %d; want 101, 1, 1", r.Seen, r.Timeouts, r.Errors)
	}
	if want := float64(200+1+7) / 102; r.Polls != want {
		t.Errorf("polls %v, want %v", r.Polls, want)
	}
	if r.Latency.Max != 100e3 || r.Latency.P50 < 49e3 || r.Latency.P50 > 51e3 {
		t.Errorf("latency %+v", r.Latency)
	}
	both, w := r.ByPath[PathBoth], r.ByPath[PathWriter]
	if both == nil || both.Seen != 100 || w == nil || w.Seen != 1 || w.Timeouts != 1 || r.ByPath[PathReader] != nil {
		t.Errorf("by path %+v", r.ByPath)
	}
	if r.ByPair[0][1] < 98e3 || r.ByPair[1][2] != 500 || r.ByPair[2][0] != 0 {
		t.Errorf("by pair %v", r.ByPair)
	}
	if r.PerMS[0] != 1 || r.PerMS[1] != 1 || r.PerMS[29] != 1 || r.PerMS[visHistMS] != 71 {
		t.Errorf("per ms %v; want 1 under 1 ms, one each ms up to 29, 71 at 30 ms and more", r.PerMS)
	}
	if len(r.Slowest) != keepSlowest || !r.Slowest[0].TimedOut || r.Slowest[0].From != 3 || r.Slowest[1].US != 100e3 ||
		r.Slowest[keepSlowest-1].US != 82e3 || r.Slowest[1].Path != PathBoth || r.Slowest[1].Polls != 2 {
		t.Errorf("slowest rounds %+v; want the timeout, then 100 ms down to 82 ms", r.Slowest)
	}
	if reasons := invalidReasons(&Result{Timeouts: uint64(r.Timeouts), Errors: uint64(r.Errors)}); len(reasons) != 2 {
		t.Errorf("reasons %v; a timeout and a failed round make a run invalid", reasons)
	}
}

// statusOf is the /cluster a node of v would serve: each member's share
// as the node estimates it.
func statusOf(v *ring.View) clusterStatus {
	var st clusterStatus
	st.Node = v.Members()[0].Name
	st.Ring.Replicas = v.Replicas
	shares := estimatedShares(v)
	for i, m := range v.Members() {
		st.Ring.Members = append(st.Ring.Members, struct {
			Name       string  `json:"name"`
			Datacenter string  `json:"datacenter"`
			Zone       string  `json:"zone"`
			Share      float64 `json:"share"`
		}{m.Name, m.Datacenter, m.Zone, shares[i]})
	}
	return st
}

func testView(t *testing.T, n, replicas int, opts ring.Options) *ring.View {
	t.Helper()
	var nodes []ring.NodeInfo
	for i := range n {
		nodes = append(nodes, ring.NodeInfo{Member: ring.Member{Name: fmt.Sprintf("n%d", i+1), Datacenter: fmt.Sprintf("dc%d", i%2)}})
	}
	v, err := ring.NewView(nodes, "", replicas, opts, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPlacementOf(t *testing.T) {
	for _, tt := range []struct {
		name string
		n    int
		opts ring.Options
	}{
		{"6 nodes placed", 6, ring.Options{}},
		{"3 nodes, full replication", 3, ring.Options{FullReplication: 3}},
		{"4 nodes, every datacenter", 4, ring.Options{EveryDatacenter: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := testView(t, tt.n, 2, tt.opts)
			// The URLs name the nodes in reverse order.
			var names []string
			for i := tt.n; i >= 1; i-- {
				names = append(names, fmt.Sprintf("n%d", i))
			}
			p, why := placementOf(statusOf(v), names)
			if p == nil {
				t.Fatalf("no placement: %s", why)
			}
			paths := map[string]int{}
			for i := range 2000 {
				ih := visInfoHash(7, i)
				owners := v.OwnersOf(ih, nil)
				a, b := pairOf(i, tt.n)
				got := p.path(ih, a, b)
				ownsA, ownsB := false, false
				for _, o := range owners {
					ownsA = ownsA || v.Members()[o].Name == names[a]
					ownsB = ownsB || v.Members()[o].Name == names[b]
				}
				want := map[[2]bool]string{{true, true}: PathBoth, {false, true}: PathReader, {true, false}: PathWriter, {false, false}: PathNeither}[[2]bool{ownsA, ownsB}]
				if got != want {
					t.Fatalf("round %d, %s→%s owners %v: path %q, want %q", i, names[a], names[b], owners, got, want)
				}
				paths[got]++
			}
			if tt.opts.FullReplication > 0 && paths[PathBoth] != 2000 {
				t.Errorf("full replication: paths %v, want every round both own", paths)
			}
			if tt.n == 6 && len(paths) != 4 {
				t.Errorf("6 nodes, replicas 2: paths %v, want all four", paths)
			}
		})
	}

	st := statusOf(testView(t, 4, 2, ring.Options{}))
	st.Ring.Members[0].Share += 0.01
	if p, why := placementOf(st, []string{"n1", "n2", "n3", "n4"}); p != nil || !strings.Contains(why, "no placement") {
		t.Errorf("shares off: placement %v (%s), want none", p, why)
	}
	if p, _ := placementOf(statusOf(testView(t, 4, 2, ring.Options{})), []string{"n1", "n2", "n3"}); p != nil {
		t.Error("3 URLs for a ring of 4: want no placement")
	}
}

func TestHasPort(t *testing.T) {
	peers := []byte{127, 0, 0, 1, 0x1f, 0x90, 10, 0, 0, 1, 0, 80}
	if !hasPort(peers, 8080) || !hasPort(peers, 80) || hasPort(peers, 81) || hasPort(peers[:5], 8080) {
		t.Error("hasPort")
	}
}

// sharedSwarms is two fake nodes' view of one tracker: a peer announced
// at either shows at the other after lag.
type sharedSwarms struct {
	mu    sync.Mutex
	lag   time.Duration
	peers map[[20]byte][]visPeer
}

type visPeer struct {
	port uint16
	at   time.Time
}

// node is a fake tracker over the shared swarms.
func (s *sharedSwarms) node(t *testing.T) string {
	return fakeTracker(t, func(req []byte) []byte {
		tx := be.Uint32(req[12:])
		switch be.Uint32(req[8:]) {
		case actionConnect:
			return connectAnswer(tx, 5)
		case actionAnnounce:
			var ih [20]byte
			copy(ih[:], req[16:36])
			port := be.Uint16(req[96:])
			now := time.Now()
			s.mu.Lock()
			defer s.mu.Unlock()
			out := be.AppendUint32(be.AppendUint32(nil, actionAnnounce), tx)
			out = be.AppendUint32(be.AppendUint32(be.AppendUint32(out, 1800), 0), 0)
			known := false
			for _, p := range s.peers[ih] {
				known = known || p.port == port
				if p.port != port && now.Sub(p.at) >= s.lag {
					out = append(out, 127, 0, 0, 1, byte(p.port>>8), byte(p.port))
				}
			}
			if !known {
				s.peers[ih] = append(s.peers[ih], visPeer{port, now})
			}
			return out
		}
		return nil
	})
}

// TestRunVisibility runs rounds over two fake nodes that show each
// other's peers 3 ms late: every round must see its peer after the lag.
func TestRunVisibility(t *testing.T) {
	s := &sharedSwarms{lag: 3 * time.Millisecond, peers: map[[20]byte][]visPeer{}}
	cfg := DefaultVisibility()
	cfg.URLs = []string{"udp://" + s.node(t) + "/announce", "udp://" + s.node(t) + "/announce"}
	cfg.Rounds, cfg.Parallel, cfg.Poll = 40, 2, 200*time.Microsecond
	res, err := RunVisibility(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Seen != 40 || res.Timeouts != 0 || res.Errors != 0 || res.Invalid {
		t.Fatalf("seen %d, timeouts %d, errors %d, invalid %v; want 40 seen", res.Seen, res.Timeouts, res.Errors, res.InvalidReasons)
	}
	if res.Latency.P50 < 3000 || res.Latency.Max > 1e6 || res.Polls < 2 {
		t.Errorf("latency %+v, %.1f polls; want at least the 3 ms lag, found by polling", res.Latency, res.Polls)
	}
	if res.ByPath != nil || res.PlacementNote == "" {
		t.Errorf("no --metrics: by path %v, note %q; want no breakdown and a note", res.ByPath, res.PlacementNote)
	}
	if res.ByPair[0][1] == 0 || res.ByPair[1][0] == 0 || res.ByPair[0][0] != 0 {
		t.Errorf("by pair %v; want both directions measured", res.ByPair)
	}

	cfg.Existing = true
	res, err = RunVisibility(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Seen != 40 || res.Timeouts+res.Errors != 0 || res.Latency.P50 < 3000 {
		t.Fatalf("existing swarms: seen %d, timeouts %d, errors %d, p50 %.0fµs; want 40 seen after the lag", res.Seen, res.Timeouts, res.Errors, res.Latency.P50)
	}
	cfg.Existing = false

	s.mu.Lock()
	s.lag = time.Hour
	s.mu.Unlock()
	cfg.Rounds, cfg.Wait = 2, 50*time.Millisecond
	res, err = RunVisibility(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Timeouts != 2 || !res.Invalid {
		t.Errorf("peers never shown: %d timeouts, invalid %v; want 2 and invalid", res.Timeouts, res.Invalid)
	}
	var sb strings.Builder
	if err := res.WriteTable(&sb); err != nil || !strings.Contains(sb.String(), "INVALID") {
		t.Errorf("table:\n%s\n%v", sb.String(), err)
	}

	cfg.Rounds, cfg.Parallel, cfg.MaxFailed = 100, 1, 3
	res, err = RunVisibility(context.Background(), cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Timeouts != 3 || !res.Stopped || !strings.Contains(strings.Join(res.InvalidReasons, ";"), "--max-failed") {
		t.Errorf("%d timeouts, stopped %v, reasons %v; want a stop after 3", res.Timeouts, res.Stopped, res.InvalidReasons)
	}
}

func TestVisibilityValidate(t *testing.T) {
	ok := DefaultVisibility()
	ok.URLs = []string{"udp://127.0.0.1:1/announce", "udp://127.0.0.1:2/announce"}
	for name, mutate := range map[string]func(*VisibilityConfig){
		"one node":      func(c *VisibilityConfig) { c.URLs = c.URLs[:1] },
		"http":          func(c *VisibilityConfig) { c.URLs[1] = "http://127.0.0.1:2/announce" },
		"metrics count": func(c *VisibilityConfig) { c.Metrics = []string{"http://127.0.0.1:3/metrics"} },
		"bad metrics":   func(c *VisibilityConfig) { c.Metrics = []string{"x", "y"} },
		"no rounds":     func(c *VisibilityConfig) { c.Rounds = 0 },
		"no parallel":   func(c *VisibilityConfig) { c.Parallel = 0 },
		"negative poll": func(c *VisibilityConfig) { c.Poll = -1 },
		"zero wait":     func(c *VisibilityConfig) { c.Wait = 0 },
		"no failures":   func(c *VisibilityConfig) { c.MaxFailed = 0 },
	} {
		c := ok
		c.URLs = append([]string(nil), ok.URLs...)
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}
