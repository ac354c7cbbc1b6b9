package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// VisibilityConfig describes a cross-node visibility run: for each round
// a seeder announces a new swarm at node A, then a leecher announces the
// same swarm at node B every Poll until B hands the seeder out. Rounds go
// over every ordered pair of nodes in turn.
type VisibilityConfig struct {
	// URLs are the nodes' UDP announce URLs, at least two.
	URLs []string
	// Metrics are the nodes' metrics URLs, in the order of URLs, or none.
	// With them the run reports each round's path by placement (which of
	// A and B own the swarm) and checks the nodes' drop counters.
	Metrics []string
	// Rounds is how many swarms are announced, one per round.
	Rounds int
	// Parallel rounds run at once, on distinct pairs when there are
	// enough.
	Parallel int
	// Poll is the pause between two announces of the leecher at B.
	Poll time.Duration
	// Wait is how long a round waits for the seeder at B before it counts
	// as a timeout; Timeout bounds one request's answer.
	Wait, Timeout time.Duration
	// MaxFailed stops the run early once this many rounds have timed out
	// or failed: a run past it is invalid anyway, and each timeout costs
	// the whole Wait.
	MaxFailed int
	// DrainTimeout is as in Config.
	DrainTimeout time.Duration
	// Seed picks the run's infohashes; 0 draws one, so every run uses
	// swarms no earlier run announced.
	Seed uint64
	// Existing makes each round's swarm one that B already serves: a
	// resident peer announces it at B, and B is polled until it hands that
	// peer out, before the seeder announces at A. The seeder is then a
	// new peer in a swarm B holds a copy of, as most announces are.
	Existing bool
}

// DefaultVisibility returns 3000 rounds, one at a time, polling every
// millisecond for up to two seconds.
func DefaultVisibility() VisibilityConfig {
	return VisibilityConfig{Rounds: 3000, Parallel: 1, Poll: time.Millisecond, Wait: 2 * time.Second,
		Timeout: 500 * time.Millisecond, MaxFailed: 30, DrainTimeout: 15 * time.Second}
}

// Validate reports the first bad setting, named by its flag.
func (c *VisibilityConfig) Validate() error {
	if len(c.URLs) < 2 {
		return errors.New("--url: give two or more nodes' UDP announce URLs")
	}
	for _, u := range c.URLs {
		cfg := Config{ScrapeRatio: 0}
		t, err := cfg.target(u)
		if err != nil {
			return err
		}
		if !t.udp {
			return fmt.Errorf("--url %q: visibility is measured over UDP", u)
		}
	}
	switch {
	case len(c.Metrics) > 0 && len(c.Metrics) != len(c.URLs):
		return fmt.Errorf("--metrics: %d given for %d nodes; give one per --url, in the same order, or none", len(c.Metrics), len(c.URLs))
	case c.Rounds < 1:
		return errors.New("--rounds must be at least 1")
	case c.Parallel < 1 || c.Parallel > 1000:
		return errors.New("--parallel must be between 1 and 1000")
	case c.Poll < 0:
		return errors.New("--poll must not be negative")
	case c.Wait <= 0 || c.Timeout <= 0:
		return errors.New("--wait and --timeout must be positive")
	case c.MaxFailed < 1:
		return errors.New("--max-failed must be at least 1")
	}
	return (&Config{Metrics: c.Metrics, DrainTimeout: c.DrainTimeout}).validateMetrics()
}

// Paths a peer takes from the node it was announced at (the writer) to
// the node that hands it out (the reader), by which of them own the swarm.
const (
	PathBoth    = "both own"
	PathReader  = "reader owns" // the writer forwards to it
	PathWriter  = "writer owns" // the reader asks the owners
	PathNeither = "neither owns"
)

var pathNames = []string{PathBoth, PathReader, PathWriter, PathNeither}

// VisibilityResult is what a visibility run measured; latencies in µs,
// from A's answer to the first answer from B that holds the seeder.
type VisibilityResult struct {
	URLs   []string `json:"urls"`
	Rounds int      `json:"rounds"`
	// Existing: each new peer joined a swarm the reader already served.
	Existing bool `json:"existing"`
	// Stopped says the run ended early, after MaxFailed failed rounds.
	Stopped  bool    `json:"stopped,omitempty"`
	Parallel int     `json:"parallel"`
	PollUS   float64 `json:"poll_us"`
	// Seen rounds found the seeder at B within the wait; Timeouts did not;
	// Errors could not run (a request to A or B went unanswered Tries
	// times, or was refused).
	Seen     int     `json:"seen"`
	Timeouts int     `json:"timeouts"`
	Errors   int     `json:"errors"`
	Latency  Latency `json:"latency_us"`
	// Polls is the mean number of announces B needed.
	Polls float64 `json:"polls"`
	// ByPath breaks the rounds down by placement, when it is known.
	ByPath map[string]*PathResult `json:"by_path,omitempty"`
	// ByPair[a][b] is the p99 from node a to node b, in µs.
	ByPair [][]float64 `json:"by_pair_p99_us"`
	// Slowest are the slowest rounds, slowest first, timeouts included.
	Slowest []VisRound `json:"slowest"`
	// PerMS[i] counts the rounds seen after i to i+1 ms; the last bucket
	// holds every round of 30 ms or more. A wait of fixed length shows as
	// a hump.
	PerMS []int `json:"per_ms"`
	// PlacementNote says why there is no breakdown by path, if there is
	// none.
	PlacementNote  string       `json:"placement_note,omitempty"`
	Nodes          []NodeReport `json:"nodes,omitempty"`
	Invalid        bool         `json:"invalid"`
	InvalidReasons []string     `json:"invalid_reasons,omitempty"`
}

// VisRound is one round of a visibility run: from writer to reader (nodes
// numbered from 1, in the order of the URLs), the path, the time until
// the reader handed the peer out (or gave up), and the reader's
// announces.
type VisRound struct {
	From     int     `json:"from"`
	To       int     `json:"to"`
	Path     string  `json:"path,omitempty"`
	US       float64 `json:"us"`
	Polls    int     `json:"polls"`
	TimedOut bool    `json:"timed_out,omitempty"`
}

// PathResult is the part of a visibility run that took one path.
type PathResult struct {
	Seen     int     `json:"seen"`
	Timeouts int     `json:"timeouts"`
	Latency  Latency `json:"latency_us"`
}

// visBook collects rounds' outcomes. Safe for concurrent use.
type visBook struct {
	n        int // nodes
	mu       sync.Mutex
	all      Histogram
	byPath   map[string]*Histogram
	pathTO   map[string]int
	byPair   []Histogram // a*n+b
	slowest  []VisRound  // the slowest rounds seen, slowest first
	perMS    [visHistMS + 1]int
	timeouts int
	errs     int
	polls    int
}

func newVisBook(n int) *visBook {
	b := &visBook{n: n, byPath: map[string]*Histogram{}, pathTO: map[string]int{}, byPair: make([]Histogram, n*n)}
	return b
}

// add records one round from a to b along path ("" if unknown): seen
// after d, or a timeout.
func (b *visBook) add(a, r int, path string, seen bool, d time.Duration, polls int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.polls += polls
	b.keepSlow(VisRound{From: a + 1, To: r + 1, Path: path, US: float64(d) / float64(time.Microsecond), Polls: polls, TimedOut: !seen})
	if !seen {
		b.timeouts++
		if path != "" {
			b.pathTO[path]++
		}
		return
	}
	b.all.Record(d)
	b.perMS[min(int(d/time.Millisecond), visHistMS)]++
	b.byPair[a*b.n+r].Record(d)
	if path != "" {
		h := b.byPath[path]
		if h == nil {
			h = &Histogram{}
			b.byPath[path] = h
		}
		h.Record(d)
	}
}

// visHistMS is the last bucket of VisibilityResult.PerMS.
const visHistMS = 30

// keepSlowest is how many of the slowest rounds a result lists.
const keepSlowest = 20

// keepSlow keeps r if it is among the slowest rounds so far.
func (b *visBook) keepSlow(r VisRound) {
	i, _ := slices.BinarySearchFunc(b.slowest, r.US, func(x VisRound, us float64) int {
		switch {
		case x.US > us:
			return -1
		case x.US < us:
			return 1
		}
		return 0
	})
	if i >= keepSlowest {
		return
	}
	b.slowest = slices.Insert(b.slowest, i, r)
	if len(b.slowest) > keepSlowest {
		b.slowest = b.slowest[:keepSlowest]
	}
}

func (b *visBook) failed() {
	b.mu.Lock()
	b.errs++
	b.mu.Unlock()
}

// failures returns the rounds that timed out or failed so far.
func (b *visBook) failures() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.timeouts + b.errs
}

// result summarises the rounds recorded.
func (b *visBook) result() *VisibilityResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &VisibilityResult{Seen: int(b.all.Count()), Timeouts: b.timeouts, Errors: b.errs, Latency: latencyOf(&b.all),
		Slowest: slices.Clone(b.slowest), PerMS: b.perMS[:]}
	if n := r.Seen + r.Timeouts; n > 0 {
		r.Polls = float64(b.polls) / float64(n)
	}
	if len(b.byPath) > 0 || len(b.pathTO) > 0 {
		r.ByPath = map[string]*PathResult{}
		for _, p := range pathNames {
			h := b.byPath[p]
			if h == nil {
				h = &Histogram{}
			}
			if h.Count() > 0 || b.pathTO[p] > 0 {
				r.ByPath[p] = &PathResult{Seen: int(h.Count()), Timeouts: b.pathTO[p], Latency: latencyOf(h)}
			}
		}
	}
	r.ByPair = make([][]float64, b.n)
	for a := range b.n {
		r.ByPair[a] = make([]float64, b.n)
		for c := range b.n {
			r.ByPair[a][c] = latencyOf(&b.byPair[a*b.n+c]).P99
		}
	}
	return r
}

// pairOf returns the writer and reader of round i among n nodes: the
// rounds walk every ordered pair in turn, so each gets a share.
func pairOf(i, n int) (a, b int) {
	k := i % (n * (n - 1))
	a = k / (n - 1)
	b = k % (n - 1)
	if b >= a {
		b++
	}
	return a, b
}

// visInfoHash is round i's swarm: "KV", the run's seed, then the round.
func visInfoHash(seed uint64, i int) bittorrent.InfoHash {
	var h bittorrent.InfoHash
	h[0], h[1] = 'K', 'V'
	binary.BigEndian.PutUint64(h[2:], seed)
	binary.BigEndian.PutUint64(h[10:], uint64(i))
	return h
}

// visPorts are a round's seeder, leecher and resident ports: distinct for
// the rounds that may run at once, so B's answer names this round's
// peers.
func visPorts(i int) (seeder, leecher, resident uint16) {
	k := uint16(i % 20000)
	return 2000 + 3*k, 2001 + 3*k, 2002 + 3*k
}

// placement says which nodes own a swarm, as the cluster's ring does.
type placement struct {
	view  *ring.View
	index []int // view member index of URL i
}

// clusterStatus is the part of /cluster a visibility run needs.
type clusterStatus struct {
	Node string `json:"node"`
	Ring struct {
		Replicas int `json:"replicas"`
		Members  []struct {
			Name       string  `json:"name"`
			Datacenter string  `json:"datacenter"`
			Zone       string  `json:"zone"`
			Share      float64 `json:"share"`
		} `json:"members"`
	} `json:"ring"`
}

// statusShareSamples and statusInfoHash mirror how a node estimates each
// member's share for /cluster (node/cluster.Status), so a placement
// rebuilt here can be checked against the node's own.
const statusShareSamples = 1 << 14

func statusInfoHash(i int) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	ih[0], ih[1], ih[2], ih[19] = byte(i), byte(i>>8), byte(i>>16), 0x5a
	return ih
}

// placementOf rebuilds the ring from the nodes' statuses (names[i] is the
// node behind URL i) and keeps the options under which every member's
// share matches the one the node reported. It returns nil and why when
// none does (a placement this tool does not model).
func placementOf(st clusterStatus, names []string) (*placement, string) {
	var nodes []ring.NodeInfo
	for _, m := range st.Ring.Members {
		nodes = append(nodes, ring.NodeInfo{Member: ring.Member{Name: m.Name, Datacenter: m.Datacenter, Zone: m.Zone}})
	}
	if len(nodes) != len(names) {
		return nil, fmt.Sprintf("the ring has %d members and %d nodes were given", len(nodes), len(names))
	}
	for _, full := range []int{0, len(nodes)} {
		for _, every := range []bool{false, true} {
			v, err := ring.NewView(nodes, "", max(st.Ring.Replicas, 1), ring.Options{EveryDatacenter: every, FullReplication: full}, 0)
			if err != nil {
				return nil, err.Error()
			}
			if !sharesMatch(v, st) {
				continue
			}
			p := &placement{view: v}
			for _, name := range names {
				i := v.Index(name)
				if i < 0 {
					return nil, fmt.Sprintf("node %s is not in the ring", name)
				}
				p.index = append(p.index, i)
			}
			return p, ""
		}
	}
	return nil, "no placement this tool models matches the shares the nodes report"
}

// estimatedShares is each member's share of the swarms as a node
// estimates it for /cluster.
func estimatedShares(v *ring.View) []float64 {
	counts := make([]int, len(v.Members()))
	var owners []int
	for i := range statusShareSamples {
		owners = v.OwnersOf(statusInfoHash(i), owners[:0])
		for _, o := range owners {
			counts[o]++
		}
	}
	shares := make([]float64, len(counts))
	for i, c := range counts {
		shares[i] = float64(c) / statusShareSamples
	}
	return shares
}

func sharesMatch(v *ring.View, st clusterStatus) bool {
	shares := estimatedShares(v)
	for _, m := range st.Ring.Members {
		i := v.Index(m.Name)
		if i < 0 || shares[i] != m.Share {
			return false
		}
	}
	return true
}

// path says which of writer a and reader b own ih.
func (p *placement) path(ih bittorrent.InfoHash, a, b int) string {
	owners := p.view.OwnersOf(ih, nil)
	wa, rb := slices.Contains(owners, p.index[a]), slices.Contains(owners, p.index[b])
	switch {
	case wa && rb:
		return PathBoth
	case rb:
		return PathReader
	case wa:
		return PathWriter
	}
	return PathNeither
}

// RunVisibility runs the rounds and returns what they measured.
func RunVisibility(ctx context.Context, cfg VisibilityConfig, progress io.Writer) (*VisibilityResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		cfg.Seed = binary.BigEndian.Uint64(b[:]) | 1
	}
	hosts := make([]string, len(cfg.URLs))
	for i, u := range cfg.URLs {
		t, _ := (&Config{}).target(u)
		hosts[i] = t.host
	}
	var (
		nodes  *nodeClient
		before []metricPage
		place  *placement
		note   = "no --metrics given"
	)
	if len(cfg.Metrics) > 0 {
		nodes = newNodeClient(cfg.Metrics)
		var err error
		if before, err = nodes.scrape(ctx); err != nil {
			return nil, err
		}
		place, note = nodes.placement(ctx)
	}

	book := newVisBook(len(hosts))
	var stopped atomic.Bool
	var next atomic.Int64
	var wg sync.WaitGroup
	var werr error
	var errOnce sync.Once
	for range cfg.Parallel {
		wg.Go(func() {
			w, err := newVisWorker(hosts, cfg.Timeout)
			if err != nil {
				errOnce.Do(func() { werr = err })
				return
			}
			defer w.close()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= cfg.Rounds {
					return
				}
				if book.failures() >= cfg.MaxFailed {
					stopped.Store(true)
					return
				}
				a, b := pairOf(i, len(hosts))
				ih := visInfoHash(cfg.Seed, i)
				path := ""
				if place != nil {
					path = place.path(ih, a, b)
				}
				seen, d, polls, err := w.round(ctx, &cfg, ih, i, a, b)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					book.failed()
				default:
					book.add(a, b, path, seen, d, polls)
				}
				if progress != nil && (i+1)%500 == 0 {
					fmt.Fprintf(progress, "%d rounds\n", i+1)
				}
			}
		})
	}
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	res := book.result()
	res.URLs, res.Rounds, res.Parallel, res.Stopped = cfg.URLs, cfg.Rounds, cfg.Parallel, stopped.Load()
	res.Existing = cfg.Existing
	res.PollUS = float64(cfg.Poll) / float64(time.Microsecond)
	if place == nil {
		res.PlacementNote = note
	}
	if nodes != nil {
		after, err := nodes.drain(context.WithoutCancel(ctx), cfg.DrainTimeout)
		if err != nil {
			return res, err
		}
		for i, u := range cfg.Metrics {
			res.Nodes = append(res.Nodes, nodeReport(u, before[i], after[i]))
		}
	}
	res.InvalidReasons = invalidReasons(&Result{Timeouts: uint64(res.Timeouts), Errors: uint64(res.Errors), Nodes: res.Nodes})
	if res.Stopped {
		res.InvalidReasons = append(res.InvalidReasons, fmt.Sprintf("stopped after %d failed rounds (--max-failed)", cfg.MaxFailed))
	}
	res.Invalid = len(res.InvalidReasons) > 0
	return res, ctx.Err()
}

// placement reads /cluster from every node and rebuilds the placement.
func (nc *nodeClient) placement(ctx context.Context) (*placement, string) {
	var st clusterStatus
	names := make([]string, len(nc.urls))
	for i, u := range nc.urls {
		cu, err := statusURL(u)
		if err != nil {
			return nil, err.Error()
		}
		b, err := nc.get(ctx, cu)
		if err != nil {
			return nil, err.Error()
		}
		var s clusterStatus
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Sprintf("%s: %v", cu, err)
		}
		names[i] = s.Node
		if i == 0 {
			st = s
		}
	}
	return placementOf(st, names)
}

// visWorker runs rounds one at a time over a socket per node.
type visWorker struct {
	nodes []*visClient
}

func newVisWorker(hosts []string, timeout time.Duration) (*visWorker, error) {
	w := &visWorker{}
	for _, h := range hosts {
		c, err := dialVis(h, timeout)
		if err != nil {
			w.close()
			return nil, err
		}
		w.nodes = append(w.nodes, c)
	}
	return w, nil
}

func (w *visWorker) close() {
	for _, c := range w.nodes {
		_ = c.conn.Close()
	}
}

// visTries is how often a round sends a request that goes unanswered
// before the round counts as an error.
const visTries = 3

// round runs round i: the seeder at a, then the leecher at b until it
// is handed the seeder or cfg.Wait passes. It returns whether the seeder
// was seen, after how long, and how many announces b took.
func (w *visWorker) round(ctx context.Context, cfg *VisibilityConfig, ih bittorrent.InfoHash, i, a, b int) (bool, time.Duration, int, error) {
	sPort, lPort, rPort := visPorts(i)
	leecher := announce{infoHash: ih, left: 1, event: eventStarted, numWant: 200, port: lPort, key: uint32(i) + 1}
	copy(leecher.peerID[:], fmt.Sprintf("-KV0001-l%011d", i%1e11))
	if cfg.Existing {
		// A resident peer first, until b hands it out: b then holds the
		// swarm as it holds any swarm its clients announce in.
		resident := announce{infoHash: ih, left: 0, event: eventStarted, numWant: 0, port: rPort, key: uint32(i) + 2}
		copy(resident.peerID[:], fmt.Sprintf("-KV0001-r%011d", i%1e11))
		if _, err := w.nodes[b].announce(ctx, &resident); err != nil {
			return false, 0, 0, fmt.Errorf("resident at node %d: %w", b, err)
		}
		seen, _, _, err := w.poll(ctx, cfg, b, &leecher, rPort, time.Now())
		if err != nil || !seen {
			return false, 0, 0, fmt.Errorf("resident peer at node %d not handed out: %w", b, errors.Join(err, errUnanswered))
		}
	}
	seeder := announce{infoHash: ih, left: 0, event: eventStarted, numWant: 0, port: sPort, key: uint32(i)}
	copy(seeder.peerID[:], fmt.Sprintf("-KV0001-s%011d", i%1e11))
	if _, err := w.nodes[a].announce(ctx, &seeder); err != nil {
		return false, 0, 0, fmt.Errorf("seeder at node %d: %w", a, err)
	}
	return w.poll(ctx, cfg, b, &leecher, sPort, time.Now())
}

// poll announces leecher at node b every cfg.Poll until the answer holds
// a peer on port, or cfg.Wait has passed since t0.
func (w *visWorker) poll(ctx context.Context, cfg *VisibilityConfig, b int, leecher *announce, port uint16, t0 time.Time) (bool, time.Duration, int, error) {
	for polls := 1; ; polls++ {
		peers, err := w.nodes[b].announce(ctx, leecher)
		if err != nil {
			return false, 0, polls, fmt.Errorf("leecher at node %d: %w", b, err)
		}
		d := time.Since(t0)
		if hasPort(peers, port) {
			return true, d, polls, nil
		}
		if d > cfg.Wait {
			return false, d, polls, nil
		}
		leecher.event = eventNone
		if cfg.Poll > 0 {
			select {
			case <-ctx.Done():
				return false, 0, polls, ctx.Err()
			case <-time.After(cfg.Poll):
			}
		}
	}
}

// hasPort reports whether compact IPv4 peers hold one on port.
func hasPort(peers []byte, port uint16) bool {
	for i := 0; i+6 <= len(peers); i += 6 {
		if be.Uint16(peers[i+4:]) == port {
			return true
		}
	}
	return false
}

// visClient is a BEP 15 client with one request in flight, on its own
// socket to one node.
type visClient struct {
	conn    *net.UDPConn
	timeout time.Duration
	connID  uint64
	connAt  time.Time
	tx      uint32
	out     []byte
	in      []byte
}

func dialVis(host string, timeout time.Duration) (*visClient, error) {
	raddr, err := net.ResolveUDPAddr("udp", host)
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err)
	}
	if raddr.IP.To4() == nil {
		return nil, fmt.Errorf("--url %s: visibility runs over IPv4", host)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, fmt.Errorf("udp socket to %s: %w", raddr, err)
	}
	return &visClient{conn: conn, timeout: timeout, out: make([]byte, 0, announceLen), in: make([]byte, replyBufLen)}, nil
}

// errUnanswered is a request not answered in visTries attempts.
var errUnanswered = errors.New("no answer")

// exchange sends a request built by build (given the transaction ID)
// and returns the reply to action want, trying visTries times.
func (c *visClient) exchange(ctx context.Context, want uint32, build func(tx uint32) []byte) ([]byte, error) {
	for range visTries {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.tx++
		tx := c.tx
		if _, err := c.conn.Write(build(tx)); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(c.timeout)
		_ = c.conn.SetReadDeadline(deadline)
		for {
			n, err := c.conn.Read(c.in)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			if err != nil {
				return nil, err
			}
			if n < 8 || be.Uint32(c.in[4:]) != tx {
				continue // a late reply to an earlier try
			}
			r, err := parseReply(c.in[:n], want, false)
			if err != nil {
				return nil, err
			}
			if r.action == actionError {
				return nil, fmt.Errorf("tracker error: %s", strings.TrimRight(r.msg, "\x00"))
			}
			return c.in[8:n], nil
		}
	}
	return nil, errUnanswered
}

// announce sends a and returns the compact peers of the answer.
func (c *visClient) announce(ctx context.Context, a *announce) ([]byte, error) {
	if c.connID == 0 || time.Since(c.connAt) > 50*time.Second {
		at := time.Now()
		body, err := c.exchange(ctx, actionConnect, func(tx uint32) []byte { return appendConnect(c.out[:0], tx) })
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		c.connID, c.connAt = be.Uint64(body), at
	}
	body, err := c.exchange(ctx, actionAnnounce, func(tx uint32) []byte { return appendAnnounce(c.out[:0], c.connID, tx, a) })
	if err != nil {
		c.connID = 0
		return nil, err
	}
	return body[12:], nil
}

// WriteTable writes r for people.
func (r *VisibilityResult) WriteTable(w io.Writer) error {
	swarms := "a new swarm each"
	if r.Existing {
		swarms = "each in a swarm the reader already serves"
	}
	fmt.Fprintf(w, "cross-node visibility over %d nodes: %d rounds (%d at a time), %s, polling every %s\n\n",
		len(r.URLs), r.Rounds, r.Parallel, swarms, us(r.PollUS))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PATH\tSEEN\tTIMEOUTS\tP50\tP90\tP99\tP99.9\tMAX\t")
	row := func(name string, seen, timeouts int, l Latency) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t\n", name, seen, timeouts, us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max))
	}
	for _, p := range pathNames {
		if pr := r.ByPath[p]; pr != nil {
			row(p, pr.Seen, pr.Timeouts, pr.Latency)
		}
	}
	row("all", r.Seen, r.Timeouts, r.Latency)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%.1f announces at the reader per round; %d rounds failed (a request unanswered %d times or refused)\n", r.Polls, r.Errors, visTries)
	if r.PlacementNote != "" {
		fmt.Fprintf(w, "no breakdown by path: %s\n", r.PlacementNote)
	}
	worst, wa, wb := 0.0, 0, 0
	for a, row := range r.ByPair {
		for b, v := range row {
			if v > worst {
				worst, wa, wb = v, a, b
			}
		}
	}
	if worst > 0 {
		fmt.Fprintf(w, "slowest pair at p99: node %d → node %d, %s\n", wa+1, wb+1, us(worst))
	}
	if len(r.Slowest) > 0 {
		fmt.Fprint(w, "slowest rounds:")
		for _, sr := range r.Slowest[:min(len(r.Slowest), 5)] {
			path := ""
			if sr.Path != "" {
				path = " " + sr.Path
			}
			fmt.Fprintf(w, " %d→%d%s %s (%d announces);", sr.From, sr.To, path, us(sr.US), sr.Polls)
		}
		fmt.Fprintln(w)
	}
	return (&Result{Nodes: r.Nodes, Invalid: r.Invalid, InvalidReasons: r.InvalidReasons}).writeVerdict(w)
}
