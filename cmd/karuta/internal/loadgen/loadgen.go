// Package loadgen drives a BitTorrent tracker over UDP (BEP 15) or HTTP
// with a synthetic population of swarms and peers and measures what it
// answers: responses per second, errors, latency and, given the tracker's
// pid, the tracker's CPU time per request and peak memory.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config describes one run. The zero value is not valid; start from
// Default.
type Config struct {
	// URLs are the tracker's announce URLs: udp://host:port[/path] or
	// http(s)://host:port/path, all of one protocol. Several (the nodes
	// of a cluster) share the clients between them evenly.
	URLs []string `yaml:"urls"`
	// Duration is how long the measured phase lasts.
	Duration time.Duration `yaml:"duration"`
	// Warmup is how long requests are sent, but not measured, before.
	Warmup time.Duration `yaml:"warmup"`
	// Concurrency is the number of simulated clients. In closed loop each
	// sends its next request when the previous one is answered; in open
	// loop it bounds the requests in flight.
	Concurrency int `yaml:"concurrency"`
	// Rate, when above zero, selects open loop: requests (announces and
	// scrapes) per second on a fixed schedule, latency measured from the
	// scheduled time, so a stalled tracker cannot hide its stall.
	Rate float64 `yaml:"rate"`
	// Workers is the number of UDP sockets the clients share.
	Workers int `yaml:"workers"`
	// Swarms and Peers size the simulated population.
	Swarms int `yaml:"swarms"`
	Peers  int `yaml:"peers"`
	// Zipf is the popularity exponent: swarm s is picked with weight
	// 1/(s+1)^Zipf. 0 is uniform; about 1 gives a few huge swarms and a
	// long tail.
	Zipf float64 `yaml:"zipf"`
	// ScrapeRatio is the share of requests that are scrapes.
	ScrapeRatio float64 `yaml:"scrape_ratio"`
	// ScrapeHashes is the number of infohashes per scrape.
	ScrapeHashes int `yaml:"scrape_hashes"`
	// NumWant is the numwant of announces; -1 leaves it to the tracker.
	NumWant int `yaml:"numwant"`
	// Seeders is the share of peers that announce left=0.
	Seeders float64 `yaml:"seeders"`
	// Timeout is how long a request may wait for its answer.
	Timeout time.Duration `yaml:"timeout"`
	// ConnIDTTL is how long a UDP client reuses a connection ID before
	// connecting again. BEP 15 lets clients use one for a minute.
	ConnIDTTL time.Duration `yaml:"conn_id_ttl"`
	// PIDs are the tracker's process IDs on this host, to read their CPU
	// time and memory from /proc; several (the nodes of a cluster) are
	// summed. Empty skips that.
	PIDs []int `yaml:"pids"`
	// Seed makes the request sequence reproducible.
	Seed uint64 `yaml:"seed"`
	// Metrics are the tracker nodes' metrics URLs. Their fault counters
	// (drops, refusals, failed reads, undelivered forwards) are read
	// before the run and after it, once the nodes have drained their
	// queues; any increase makes the run invalid. Their store and read
	// cache gauges give the memory each node holds.
	Metrics []string `yaml:"metrics"`
	// DrainTimeout bounds the wait, after the load, for the nodes' post
	// and forward queues to empty; what is left then makes the run
	// invalid. It outlasts a forward's retries (forward_retry, 10 s).
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Prime announces every peer of the population once before the
	// warmup, so the tracker holds all of it: the measured phase then
	// updates peers as a tracker in steady state does, and the whole
	// population is the reference for the memory each node holds. With
	// Duration zero the run only primes.
	Prime bool `yaml:"prime"`
	// Primed says an earlier run primed the tracker with this
	// population (same Swarms, Peers, Zipf and Seeders).
	Primed bool `yaml:"primed"`
}

// Default returns a closed-loop run of 10 s with 64 clients over a
// population of 100 000 swarms and a million peers.
func Default() Config {
	return Config{
		Duration:     10 * time.Second,
		Warmup:       time.Second,
		Concurrency:  64,
		Workers:      min(runtime.GOMAXPROCS(0), 8),
		Swarms:       100000,
		Peers:        1000000,
		Zipf:         1.1,
		ScrapeRatio:  0.1,
		ScrapeHashes: 1,
		NumWant:      50,
		Seeders:      0.3,
		Timeout:      time.Second,
		ConnIDTTL:    time.Minute,
		Seed:         1,
		DrainTimeout: 15 * time.Second,
	}
}

// target is a parsed tracker URL.
type target struct {
	udp  bool
	host string // host:port
	// announce and scrape are the HTTP URLs, each ending in '?' or '&'
	// ready for parameters; scrape is empty if it cannot be derived.
	announce, scrape string
}

// Validate reports the first bad setting, named by its flag.
func (c *Config) Validate() error {
	_, err := c.targets()
	switch {
	case err != nil:
		return err
	case c.Duration < 0 || c.Duration == 0 && !c.Prime:
		return errors.New("--duration must be positive (or zero with --prime, to prime only)")
	case c.Warmup < 0:
		return errors.New("--warmup must not be negative")
	case c.Concurrency < 1:
		return errors.New("--concurrency must be at least 1")
	case c.Concurrency < len(c.URLs):
		return fmt.Errorf("--concurrency %d is below the %d URLs; want at least one client per URL", c.Concurrency, len(c.URLs))
	case c.Rate < 0:
		return errors.New("--rate must not be negative")
	case c.Workers < 1:
		return errors.New("--workers must be at least 1")
	case c.Concurrency > c.Workers*65535:
		return errors.New("--concurrency must be at most 65535 per worker")
	case c.Swarms < 1:
		return errors.New("--swarms must be at least 1")
	case c.Peers < c.Swarms:
		return errors.New("--peers must be at least --swarms")
	case c.Zipf < 0:
		return errors.New("--zipf must not be negative")
	case c.ScrapeRatio < 0 || c.ScrapeRatio > 1:
		return errors.New("--scrape-ratio must be between 0 and 1")
	case c.ScrapeHashes < 1 || c.ScrapeHashes > 74:
		return errors.New("--scrape-hashes must be between 1 and 74")
	case c.NumWant < -1:
		return errors.New("--numwant must be -1 or more")
	case c.Seeders < 0 || c.Seeders > 1:
		return errors.New("--seeders must be between 0 and 1")
	case c.Timeout <= 0:
		return errors.New("--timeout must be positive")
	case c.ConnIDTTL <= 0:
		return errors.New("--conn-id-ttl must be positive")
	}
	if err := c.validateMetrics(); err != nil {
		return err
	}
	for _, pid := range c.PIDs {
		if pid <= 0 {
			return fmt.Errorf("--pid %d: must be a positive process ID", pid)
		}
	}
	return nil
}

// validateMetrics checks Metrics and DrainTimeout.
func (c *Config) validateMetrics() error {
	if c.DrainTimeout < 0 {
		return errors.New("--drain-timeout must not be negative")
	}
	for _, m := range c.Metrics {
		if u, err := url.Parse(m); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--metrics %q: want a node's metrics URL, e.g. http://127.0.0.1:6880/metrics", m)
		}
	}
	return nil
}

// targets parses the URLs, which must all be of one protocol.
func (c *Config) targets() ([]target, error) {
	if len(c.URLs) == 0 {
		return nil, errors.New("--url is required, e.g. udp://127.0.0.1:6969/announce")
	}
	out := make([]target, 0, len(c.URLs))
	for _, raw := range c.URLs {
		t, err := c.target(raw)
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && t.udp != out[0].udp {
			return nil, fmt.Errorf("--url %q: all URLs must use one protocol, and %q uses the other", raw, c.URLs[0])
		}
		out = append(out, t)
	}
	return out, nil
}

// target parses one URL.
func (c *Config) target(raw string) (target, error) {
	if raw == "" {
		return target{}, errors.New("--url is required, e.g. udp://127.0.0.1:6969/announce")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("--url: %w", err)
	}
	if u.Hostname() == "" {
		return target{}, fmt.Errorf("--url %q has no host", raw)
	}
	switch u.Scheme {
	case "udp":
		if p, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || p == 0 {
			return target{}, fmt.Errorf("--url %q needs a port: udp://host:port/announce", raw)
		}
		return target{udp: true, host: u.Host}, nil
	case "http", "https":
		t := target{host: u.Host, announce: withQuery(u)}
		// BEP 48: the scrape URL replaces the last "announce" of the path.
		if i := strings.LastIndex(u.Path, "/announce"); i >= 0 {
			s := *u
			s.Path = u.Path[:i] + "/scrape" + u.Path[i+len("/announce"):]
			s.RawPath = ""
			t.scrape = withQuery(&s)
		} else if c.ScrapeRatio > 0 {
			return target{}, fmt.Errorf("--url %q: no /announce in the path to derive a scrape URL from; use --scrape-ratio 0", raw)
		}
		return t, nil
	}
	return target{}, fmt.Errorf("--url %q: scheme must be udp, http or https", raw)
}

func withQuery(u *url.URL) string {
	s := u.String()
	if u.RawQuery != "" {
		return s + "&"
	}
	return s + "?"
}

// driver sends requests to a tracker in one protocol.
type driver interface {
	// drive runs the driver's clients by p until ctx is done or, when
	// priming, until every peer is announced.
	drive(ctx context.Context, p *plan)
	// Close releases the driver once drive has returned.
	Close() error
}

// spread shares the clients between one driver per target: client i talks
// to target i mod n, so every node of a cluster gets the same share.
type spread []driver

func newSpread(tgts []target, cfg *Config, st *stats) (spread, error) {
	var s spread
	for t, tgt := range tgts {
		var ids []int // target t serves clients t, t+n, t+2n, …
		for i := t; i < cfg.Concurrency; i += len(tgts) {
			ids = append(ids, i)
		}
		var d driver
		if tgt.udp {
			var err error
			if d, err = newUDPDriver(tgt.host, ids, cfg, st); err != nil {
				_ = s.Close()
				return nil, err
			}
		} else {
			d = newHTTPDriver(tgt, ids, cfg, st)
		}
		s = append(s, d)
	}
	return s, nil
}

// drive runs every driver by p and waits for them.
func (s spread) drive(ctx context.Context, p *plan) {
	var wg sync.WaitGroup
	for _, d := range s {
		wg.Go(func() { d.drive(ctx, p) })
	}
	wg.Wait()
}

// udpAddrs groups the UDP addresses whose kernel drops a run reports:
// each tracker's, and the bench's own sockets together.
func (s spread) udpAddrs() []socketGroup {
	var out []socketGroup
	client := socketGroup{name: "the bench's sockets", side: "client"}
	for _, d := range s {
		u, isUDP := d.(*udpDriver)
		if !isUDP {
			continue
		}
		out = append(out, socketGroup{name: u.raddr.String(), side: "server", addrs: []netip.AddrPort{u.raddr}})
		for _, sk := range u.socks {
			if la, isAddr := sk.conn.LocalAddr().(*net.UDPAddr); isAddr {
				ap := la.AddrPort()
				client.addrs = append(client.addrs, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			}
		}
	}
	if len(client.addrs) > 0 {
		out = append(out, client)
	}
	return out
}

func (s spread) Close() error {
	var err error
	for _, d := range s {
		err = errors.Join(err, d.Close())
	}
	return err
}

// session is one simulated HTTP client. Its methods send one request,
// wait for the answer or the timeout, record the outcome with latency
// from start and return it; they return early, recording nothing and
// reporting false, when ctx is done.
type session interface {
	announce(ctx context.Context, a *announce, start time.Time) (outcome, bool)
	scrape(ctx context.Context, hashes [][20]byte, start time.Time) (outcome, bool)
}

// Run sends the configured load until the duration ends or ctx is done,
// writing a progress line to progress each second (overwritten in place
// when tty), and returns what it measured. With Metrics it reads the
// nodes before the load and after they drained, and marks the result
// invalid if anything was lost (see invalidReasons).
func Run(ctx context.Context, cfg Config, progress io.Writer, tty bool) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tgts, _ := cfg.targets()
	if len(cfg.PIDs) > 0 {
		if _, err := readProcs("/proc", cfg.PIDs); err != nil {
			return nil, fmt.Errorf("--pid: %w", err)
		}
	}
	var (
		nodes  *nodeClient
		before []metricPage
	)
	if len(cfg.Metrics) > 0 {
		nodes = newNodeClient(cfg.Metrics)
		var err error
		if before, err = nodes.scrape(ctx); err != nil {
			return nil, err
		}
	}
	w := newWorkload(cfg.Swarms, cfg.Peers, cfg.Zipf, &cfg)
	st := &stats{}
	drv, err := newSpread(tgts, &cfg, st)
	if err != nil {
		return nil, err
	}
	socks := watchSockets(drv.udpAddrs())

	var prime *PrimeResult
	if cfg.Prime {
		p := &plan{mode: modePrime, w: w, clients: cfg.Concurrency}
		began := time.Now()
		drv.drive(ctx, p)
		pr := p.primeResult(time.Since(began))
		prime = &pr
		if progress != nil {
			fmt.Fprintf(progress, "primed %d peers in %.1f s, %d not announced\n", pr.Peers, pr.Seconds, pr.Failed)
		}
	}
	res := &Result{}
	if cfg.Duration > 0 && ctx.Err() == nil {
		res, err = load(ctx, &cfg, drv, w, st, progress, tty)
	}
	err = errors.Join(err, drv.Close())
	if res == nil {
		return nil, err
	}
	res.URLs, res.Protocol = cfg.URLs, "http"
	if tgts[0].udp {
		res.Protocol = "udp"
	}
	res.Mode, res.Concurrency, res.Rate = "closed", cfg.Concurrency, cfg.Rate
	switch {
	case cfg.Duration == 0:
		res.Mode, res.Rate = "prime", 0
	case cfg.Rate > 0:
		res.Mode = "open"
	}
	res.Prime = prime
	if nodes != nil {
		after, derr := nodes.drain(context.WithoutCancel(ctx), cfg.DrainTimeout)
		if derr != nil {
			return res, errors.Join(err, derr)
		}
		for i, u := range cfg.Metrics {
			res.Nodes = append(res.Nodes, nodeReport(u, before[i], after[i]))
		}
		if cfg.Prime || cfg.Primed {
			replicas, rerr := nodes.replicas(context.WithoutCancel(ctx))
			if rerr != nil {
				return res, errors.Join(err, rerr)
			}
			res.Memory = memoryOf(res.Nodes, float64(w.held()), replicas)
		}
	}
	res.SocketDrops = socks.finish()
	res.InvalidReasons = invalidReasons(res)
	res.Invalid = len(res.InvalidReasons) > 0
	return res, err
}

// load runs the clients for the warmup and the measured duration.
func load(ctx context.Context, cfg *Config, drv spread, w *workload, st *stats, progress io.Writer, tty bool) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &plan{mode: modeClosed, w: w, start: time.Now(), rate: cfg.Rate, clients: cfg.Concurrency}
	if cfg.Rate > 0 {
		p.mode = modeOpen
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		drv.drive(ctx, p)
	}()
	pr := newProgress(progress, tty, st, p.start, cfg.Warmup)
	res, err := measure(ctx, cfg, st, pr)
	st.recording.Store(false)
	cancel()
	<-done
	pr.done()
	return res, err
}

// PrimeResult is what priming the tracker took.
type PrimeResult struct {
	Peers   int     `json:"peers"`
	Failed  int     `json:"failed"`
	Seconds float64 `json:"seconds"`
}

// measure waits out the warmup, records for the duration (or until ctx is
// done) and summarises, printing progress meanwhile.
func measure(ctx context.Context, cfg *Config, st *stats, p *progress) (*Result, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	phase := time.NewTimer(cfg.Warmup)
	defer phase.Stop()
	var before procSample
	var mStart time.Time
	for measuring := false; ; {
		select {
		case <-tick.C:
			p.line()
			continue
		case <-ctx.Done():
			if !measuring {
				return nil, ctx.Err()
			}
		case <-phase.C:
			if !measuring {
				measuring = true
				if len(cfg.PIDs) > 0 {
					var err error
					if before, err = readProcs("/proc", cfg.PIDs); err != nil {
						return nil, fmt.Errorf("--pid: %w", err)
					}
				}
				mStart = time.Now()
				st.recording.Store(true)
				phase.Reset(cfg.Duration)
				continue
			}
		}
		st.recording.Store(false)
		elapsed := time.Since(mStart)
		res := st.result(elapsed)
		if len(cfg.PIDs) > 0 {
			after, err := readProcs("/proc", cfg.PIDs)
			if err != nil {
				return res, fmt.Errorf("--pid: %w", err)
			}
			res.Server = serverUse(cfg.PIDs, before, after, res.Responses)
		}
		return res, nil
	}
}

// sessionLoop runs one HTTP client by p: client id of p.clients.
func sessionLoop(ctx context.Context, s session, p *plan, seed uint64, id int) {
	r := rand.New(rand.NewPCG(seed, uint64(id)))
	switch p.mode {
	case modePrime:
		primeLoop(ctx, s, p)
	case modeOpen:
		openLoop(ctx, s, p.w, r, p.start, id, p.clients, p.rate)
	default:
		closedLoop(ctx, s, p.w, r)
	}
}

// primeLoop announces peers handed out by p until none are left.
func primeLoop(ctx context.Context, s session, p *plan) {
	var a announce
	for ctx.Err() == nil {
		i, more := p.nextPeer()
		if !more {
			return
		}
		p.w.fillPrime(i, &a)
		for tries := 0; ; {
			o, live := s.announce(ctx, &a, time.Now())
			if !live || p.primed(&tries, o) {
				break
			}
		}
	}
}

// closedLoop sends requests back to back until ctx is done.
func closedLoop(ctx context.Context, s session, w *workload, r *rand.Rand) {
	var a announce
	hashes := make([][20]byte, 0, w.scrapeHashes)
	for ctx.Err() == nil {
		send(ctx, s, w, r, &a, hashes, time.Now())
	}
}

// openLoop sends client i's share of rate requests per second: request k
// of all n clients is due at start + k/rate, and client i sends those with
// k ≡ i (mod n). A request sent late still counts its latency from when it
// was due.
func openLoop(ctx context.Context, s session, w *workload, r *rand.Rand, start time.Time, i, n int, rate float64) {
	var a announce
	hashes := make([][20]byte, 0, w.scrapeHashes)
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for k := i; ; k += n {
		due := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		send(ctx, s, w, r, &a, hashes, due)
	}
}

func send(ctx context.Context, s session, w *workload, r *rand.Rand, a *announce, hashes [][20]byte, start time.Time) {
	if w.isScrape(r) {
		s.scrape(ctx, w.fillScrape(r, hashes[:0]), start)
		return
	}
	w.fillAnnounce(r, a)
	s.announce(ctx, a, start)
}
