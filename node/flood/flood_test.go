//go:build flood

package flood

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The addresses of the test, all in 127.0.0.0/8: the node, its legitimate
// clients, and the flooders.
const (
	nodeIP    = "127.42.0.1"
	checkerIP = "127.43.250.1"
	oneIP     = "127.44.0.1"
	manyIPs   = 2000
)

func legitIP(i int) string { return fmt.Sprintf("127.43.%d.%d", i/250, i%250+1) }
func manyIP(i int) string  { return fmt.Sprintf("127.45.%d.%d", i/250, i%250+1) }

// phaseDuration is FLOOD_DURATION, or 5s: each flood phase's length.
func phaseDuration(t *testing.T) time.Duration {
	t.Helper()
	s := os.Getenv("FLOOD_DURATION")
	if s == "" {
		return 5 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d > 10*time.Minute {
		t.Fatalf("FLOOD_DURATION=%q: want a duration from 1s to 10m", s)
	}
	return d
}

// nodeConfig is the node under test: the defaults but for short
// lifetimes, so a flood expires within the test, and the profiler, to
// force a collection before the heap is read. A short run also lowers
// max_swarms, which a long one reaches at its default (sized from 512 MiB)
// with peers living long enough to pile up.
func nodeConfig(maxSwarms int, lifetime time.Duration) string {
	return fmt.Sprintf(`node: {name: flood}
log: {level: info}
frontends:
  http: {addr: "%[1]s:0"}
  udp: {addr: "%[1]s:0"}
tracker: {announce_interval: %[3]s, min_announce_interval: 2s}
rate_limit: {sweep_interval: 1s}
store: {peer_lifetime: %[4]s, gc_interval: 1s, max_swarms: %[2]d}
metrics: {addr: "%[1]s:0", pprof: true}
`, nodeIP, maxSwarms, lifetime/2, lifetime)
}

// TestFlood floods a node limited to 512 MiB with announces of random
// torrents from one address and from 2,000, over UDP and over HTTP, one
// phase after another, while legitimate clients keep announcing to their
// torrents and new ones join them. It checks that the node stays up and
// under its memory, that every legitimate announce is answered and stored,
// that every refusal a flooder sees is counted, and that once the flood's
// peers expire the live heap is back within 20% of where it was.
func TestFlood(t *testing.T) {
	dur := phaseDuration(t)
	maxSwarms, lifetime := 30000, 8*time.Second
	if dur >= 30*time.Second {
		maxSwarms, lifetime = 0, dur*3/2 // sized from memory, and reached
	}
	cg := makeCgroup(t)
	n := startNode(t, nodeConfig(maxSwarms, lifetime), cg)
	t.Logf("node at udp %s, http %s, memory limited by %s, %s a phase", n.udp, n.http, cg.how, dur)

	lg := startLegit(n)
	defer lg.stop()
	lg.waitAllAnswered(t)
	time.Sleep(time.Second)
	baseline := n.liveHeap("heap-before")
	t.Logf("live heap before the flood: %.1f MiB", baseline/(1<<20))

	for _, ph := range []phase{
		{name: "udp, one address", udp: true, sources: 1, perSource: 16},
		{name: fmt.Sprintf("udp, %d addresses", manyIPs), udp: true, sources: manyIPs, perSource: 1},
		{name: "http, one address", sources: 1, perSource: 200},
		{name: fmt.Sprintf("http, %d addresses", manyIPs), sources: manyIPs, perSource: 1},
	} {
		t.Run(ph.name, func(t *testing.T) {
			lg.joinDuring(true)
			defer lg.joinDuring(false)
			ph.run(t, n, dur)
		})
		n.alive("after phase " + ph.name)
	}

	// The flood is over. Every legitimate peer answered is stored; those
	// that joined during it leave again, so the node holds what it held
	// before, and the first ones keep announcing while the rest expire
	// (collected every second).
	lg.checkStored(t, n)
	lg.stopJoiners()
	deadline := time.Now().Add(lifetime + 30*time.Second)
	for n.metric("karuta_store_swarms") > float64(len(legitSwarms)) || n.metric("karuta_store_peers") > float64(legitFirst) {
		if time.Now().After(deadline) {
			t.Fatalf("the flood has not expired: %v swarms and %v peers held", n.metric("karuta_store_swarms"), n.metric("karuta_store_peers"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // a sweep of the rate limiter's buckets
	after := n.liveHeap("heap-after")
	t.Logf("live heap once the flood expired: %.1f MiB (%.1f MiB before); largest RSS %d MiB, cgroup peak %d MiB",
		after/(1<<20), baseline/(1<<20), n.maxRSS.Load()>>20, cg.peak()>>20)
	if after > 1.2*baseline {
		t.Errorf("live heap %.1f MiB once the flood expired, more than 20%% above %.1f MiB before it", after/(1<<20), baseline/(1<<20))
	}
	if rss := n.maxRSS.Load(); rss >= memLimit {
		t.Errorf("largest RSS %d MiB, not under the %d MiB limit", rss>>20, memLimit>>20)
	}
	if k := cg.oomKills(); k > 0 {
		t.Errorf("%d OOM kills in the node's cgroup", k)
	}
	lg.stop()
	lg.check(t)
	n.alive("at the end")
}

// phase is one flood: from sources addresses, perSource sockets or
// connections each, for the phase's duration.
type phase struct {
	name      string
	udp       bool
	sources   int
	perSource int
}

// tally is what the flooders of a phase saw.
type tally struct {
	mu       sync.Mutex
	sent     int
	ok       int
	reasons  map[string]int
	timeouts int
	errs     map[string]int
}

func (ta *tally) add(r result) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.sent++
	switch {
	case errors.Is(r.err, errTimeout):
		ta.timeouts++
	case r.err != nil:
		ta.errs[r.err.Error()]++
	case r.reason != "":
		ta.reasons[r.reason]++
	default:
		ta.ok++
	}
}

// Failure reasons a flood may get.
const (
	reasonRateLimited = "rate limit exceeded"
	reasonFullPrefix  = "tracker full"
	reasonPerSource   = "too many peers from your address in this torrent"
)

func (ph phase) run(t *testing.T, n *node, dur time.Duration) {
	ta := &tally{reasons: map[string]int{}, errs: map[string]int{}}
	rlBefore := n.metric("karuta_hook_rate_limited_total")
	fullBefore := n.metric("karuta_store_refused_total", `stage="announce"`)

	// Every flooder is ready before the clock starts.
	type flooder func(rng *rand.Rand) result
	var flooders []flooder
	var mu sync.Mutex
	var setup sync.WaitGroup
	for s := range ph.sources {
		local := oneIP
		if ph.sources > 1 {
			local = manyIP(s)
		}
		for range ph.perSource {
			setup.Go(func() {
				var f flooder
				if ph.udp {
					c, err := dialUDP(local, n.udp)
					if err != nil {
						t.Error(err)
						return
					}
					t.Cleanup(c.close)
					f = func(rng *rand.Rand) result { return c.announce(randomAnnounce(rng), time.Second, 1) }
				} else {
					c := newHTTPClient(local, n.http)
					t.Cleanup(c.close)
					f = func(rng *rand.Rand) result { return c.announce(randomAnnounce(rng), 0) }
				}
				mu.Lock()
				flooders = append(flooders, f)
				mu.Unlock()
			})
		}
	}
	setup.Wait()
	if t.Failed() {
		t.FailNow()
	}
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	var seed atomic.Uint64
	for _, f := range flooders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed.Add(1), 7))
			for time.Now().Before(deadline) {
				ta.add(f(rng))
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	n.alive(ph.name)

	rl := n.metric("karuta_hook_rate_limited_total") - rlBefore
	full := n.metric("karuta_store_refused_total", `stage="announce"`) - fullBefore
	var sawRL, sawFull int
	for reason, k := range ta.reasons {
		switch {
		case reason == reasonRateLimited:
			sawRL += k
		case strings.HasPrefix(reason, reasonFullPrefix), reason == reasonPerSource:
			sawFull += k
		default:
			t.Errorf("%d announces refused with an unexpected reason %q", k, reason)
		}
	}
	t.Logf("%d announces in %s (%.0f/s): %d answered, refused %v, %d timed out, errors %v; node counted %v rate limited, %v at store limits; largest RSS so far %d MiB",
		ta.sent, took.Round(time.Millisecond), float64(ta.sent)/took.Seconds(), ta.ok, ta.reasons, ta.timeouts, ta.errs, rl, full, n.maxRSS.Load()>>20)
	// A flood from one address meets the rate limit; one from many, which
	// the rate limit lets through, fills the store to its limit.
	if ta.ok == 0 || sawRL+sawFull == 0 || (ph.sources == 1 && sawRL == 0) {
		t.Errorf("the flood had %d announces answered, %d rate limited and %d refused at store limits; want some answered and some refused", ta.ok, sawRL, sawFull)
	}
	for e, k := range ta.errs {
		t.Errorf("%d announces failed: %s", k, e)
	}
	// Every refusal a flooder saw is counted. Over UDP a flooder gives up
	// on a datagram after a second, so the node may have counted a
	// refusal whose answer came too late: at most the timeouts more.
	check := func(what string, saw int, counted float64) {
		t.Helper()
		slack := 0
		if ph.udp {
			slack = ta.timeouts
		}
		if counted < float64(saw) || counted > float64(saw+slack) {
			t.Errorf("%s: flooders saw %d refusals, the node counted %v", what, saw, counted)
		}
	}
	check("rate limit", sawRL, rl)
	check("store limits", sawFull, full)
}

// The legitimate clients' torrents.
var legitSwarms = func() [][20]byte {
	out := make([][20]byte, 10)
	for i := range out {
		copy(out[i][:], fmt.Sprintf("legitimate torrent %d", i))
	}
	return out
}()

// legitFirst is how many legitimate clients announce from the start.
const legitFirst = 40

// legit runs the legitimate clients: each announces to one of
// legitSwarms every second, half over UDP, half over HTTP, and while a
// flood runs a new one joins every 200ms. Every announce must be answered;
// over UDP a client sends again after 1, 2, 4 and 8 seconds, as clients do
// for a datagram lost (BEP 15 waits longer still).
type legit struct {
	n        *node
	stopping chan struct{}
	leaving  chan struct{} // closed: those that joined during the flood stop
	wg       sync.WaitGroup
	joining  atomic.Bool

	mu       sync.Mutex
	next     int
	answered map[int]bool     // clients answered at least once
	stored   map[int]announce // what each client announced
	failures []string         // announces not answered
}

func startLegit(n *node) *legit {
	lg := &legit{n: n, stopping: make(chan struct{}), leaving: make(chan struct{}), answered: map[int]bool{}, stored: map[int]announce{}}
	for range legitFirst {
		lg.add()
	}
	lg.wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-lg.stopping:
				return
			case <-tick.C:
			}
			if lg.joining.Load() {
				lg.add()
			}
		}
	})
	return lg
}

func (lg *legit) joinDuring(on bool) { lg.joining.Store(on) }

// stopJoiners stops the clients that joined during the flood, closing
// their connections: their peers expire like the flood's.
func (lg *legit) stopJoiners() {
	lg.joining.Store(false)
	close(lg.leaving)
}

// add starts one more legitimate client.
func (lg *legit) add() {
	lg.mu.Lock()
	i := lg.next
	lg.next++
	lg.mu.Unlock()
	a := announce{ih: legitSwarms[i%len(legitSwarms)], port: uint16(10000 + i), left: uint64(i % 2)}
	copy(a.peerID[:], fmt.Sprintf("-LG0001-%012d", i))
	udp := i%2 == 0
	leave := lg.stopping
	if i >= legitFirst {
		leave = lg.leaving
	}
	lg.wg.Go(func() {
		var send func() result
		if udp {
			c, err := dialUDP(legitIP(i), lg.n.udp)
			if err != nil {
				lg.fail(fmt.Sprintf("client %d (udp): %v", i, err))
				return
			}
			defer c.close()
			send = func() result {
				r := result{err: errTimeout}
				for wait := time.Second; errors.Is(r.err, errTimeout) && wait <= 8*time.Second; wait *= 2 {
					r = c.announce(a, wait, 1)
				}
				return r
			}
		} else {
			c := newHTTPClient(legitIP(i), lg.n.http)
			defer c.close()
			send = func() result { return c.announce(a, 0) }
		}
		for {
			if r := send(); r.err != nil || r.reason != "" {
				proto := map[bool]string{true: "udp", false: "http"}[udp]
				lg.fail(fmt.Sprintf("client %d (%s) from %s: reason %q, error %v", i, proto, legitIP(i), r.reason, r.err))
			} else {
				lg.mu.Lock()
				lg.answered[i], lg.stored[i] = true, a
				lg.mu.Unlock()
			}
			select {
			case <-lg.stopping:
				return
			case <-leave:
				return
			case <-time.After(time.Second):
			}
		}
	})
}

func (lg *legit) fail(what string) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	lg.failures = append(lg.failures, what)
}

func (lg *legit) waitAllAnswered(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lg.mu.Lock()
		done, fails := len(lg.answered) == lg.next, slices.Clone(lg.failures)
		lg.mu.Unlock()
		if done && len(fails) == 0 {
			return
		}
		if len(fails) > 0 || time.Now().After(deadline) {
			t.Fatalf("legitimate clients not answered before the flood: %v", fails[:min(5, len(fails))])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (lg *legit) stop() {
	select {
	case <-lg.stopping:
	default:
		close(lg.stopping)
	}
	lg.wg.Wait()
}

// check fails the test for every legitimate announce not answered.
func (lg *legit) check(t *testing.T) {
	t.Helper()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if len(lg.failures) > 0 {
		t.Errorf("%d legitimate announces not answered, e.g.:\n%s", len(lg.failures), strings.Join(lg.failures[:min(10, len(lg.failures))], "\n"))
	}
	t.Logf("%d legitimate clients, %d of them joining during the floods, every announce answered: %v", lg.next, lg.next-legitFirst, len(lg.failures) == 0)
}

// checkStored asks the node for every legitimate swarm's peers and checks
// that each legitimate client that was answered is among them.
func (lg *legit) checkStored(t *testing.T, n *node) {
	t.Helper()
	lg.mu.Lock()
	want := map[[20]byte]map[netip.AddrPort]bool{}
	for i, a := range lg.stored {
		if want[a.ih] == nil {
			want[a.ih] = map[netip.AddrPort]bool{}
		}
		want[a.ih][netip.AddrPortFrom(netip.MustParseAddr(legitIP(i)), a.port)] = true
	}
	lg.mu.Unlock()
	c := newHTTPClient(checkerIP, n.http)
	defer c.close()
	var missing []string
	total := 0
	for ih, peers := range want {
		q := announce{ih: ih, port: 1, left: 1}
		copy(q.peerID[:], "-CHECK0-000000000000")
		r := c.announce(q, 200)
		if r.err != nil || r.reason != "" {
			t.Fatalf("checking swarm %q: reason %q, error %v", ih[:], r.reason, r.err)
		}
		got := map[netip.AddrPort]bool{}
		for _, p := range r.peers {
			got[p] = true
		}
		for p := range peers {
			total++
			if !got[p] {
				missing = append(missing, fmt.Sprintf("%s in %q", p, ih[:]))
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d legitimate peers answered OK are not stored, e.g. %v", len(missing), total, missing[:min(5, len(missing))])
	}
	t.Logf("all %d legitimate peers answered are stored", total-len(missing))
}
