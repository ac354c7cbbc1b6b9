// Package wsload is the load generator of `karuta bench-ws`: it holds many
// WebTorrent WebSocket peers open against a tracker, from several loopback
// source addresses, and drives announce, offer and answer traffic between
// them, measuring what the tracker's processes spend on it.
package wsload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// Modes of a run.
const (
	// ModeIdle opens Sockets peers, announces each once and holds them,
	// to measure the tracker's memory per idle peer.
	ModeIdle = "idle"
	// ModeRelay has leechers announce offers to seeders, which answer
	// each; the tracker relays both.
	ModeRelay = "relay"
)

// Config is one run.
type Config struct {
	// URLs are the tracker's WebSocket URLs. In relay mode with Split,
	// leechers use URLs[0] and seeders URLs[1]; otherwise sockets are
	// spread over all of them.
	URLs    []string
	Mode    string
	Sockets int
	// Sources are how many source addresses, 127.0.10.1 and up, the
	// sockets are spread over (a source has about 28,000 ports per
	// destination).
	Sources int
	// Swarms the peers are spread over.
	Swarms int
	// Offers per announce, in relay mode.
	Offers int
	// SDPBytes is the size of each offer's and answer's SDP.
	SDPBytes int
	// Split puts leechers and seeders on different nodes (URLs[0], [1]).
	Split bool
	// Dialers open sockets concurrently.
	Dialers  int
	Warmup   time.Duration
	Duration time.Duration
	// Settle is how long idle mode waits after the last socket opened
	// before it reads the tracker's memory.
	Settle time.Duration
	// PIDs are the tracker processes to measure (this host's /proc).
	PIDs []int
}

// Default returns a small relay run.
func Default() Config {
	return Config{
		Mode: ModeRelay, Sockets: 1000, Sources: 8, Swarms: 50, Offers: 10, SDPBytes: 600,
		Dialers: 64, Warmup: 2 * time.Second, Duration: 10 * time.Second, Settle: 10 * time.Second,
	}
}

// Validate checks the run, naming the flag at fault.
func (c Config) Validate() error {
	switch {
	case len(c.URLs) == 0:
		return errors.New("--url: at least one ws://host:port/path")
	case c.Mode != ModeIdle && c.Mode != ModeRelay:
		return fmt.Errorf("--mode: %q; want idle or relay", c.Mode)
	case c.Sockets < 2:
		return errors.New("--sockets: at least 2")
	case c.Sources < 1 || c.Sources > 250:
		return errors.New("--sources: 1 to 250")
	case c.Swarms < 1 || c.Swarms > c.Sockets:
		return errors.New("--swarms: 1 to --sockets")
	case c.Offers < 1 || c.Offers > 100:
		return errors.New("--offers: 1 to 100")
	case c.Split && len(c.URLs) != 2:
		return errors.New("--split: needs exactly two --url, the leechers' node then the seeders'")
	case c.Dialers < 1:
		return errors.New("--dialers: at least 1")
	}
	for _, u := range c.URLs {
		host := strings.TrimPrefix(strings.TrimPrefix(u, "ws://"), "wss://")
		host, _, _ = strings.Cut(host, "/")
		h, _, err := net.SplitHostPort(host)
		if err != nil {
			return fmt.Errorf("--url %q: %w", u, err)
		}
		ip, err := netip.ParseAddr(h)
		if err != nil || !ip.IsLoopback() {
			return fmt.Errorf("--url %q: the bench loads loopback addresses only (127.0.0.0/8, ::1)", u)
		}
	}
	return nil
}

// Result is what a run measured.
type Result struct {
	Mode    string `json:"mode"`
	Sockets int    `json:"sockets"`
	Open    int    `json:"open"`
	Failed  int    `json:"failed_dials"`
	Closed  int64  `json:"closed_by_tracker"`
	// Refused counts the tracker's failure answers (a limit, a hook), by
	// reason; a run with any is not a measurement of the relay.
	Refused map[string]int64 `json:"refused,omitempty"`
	Seconds float64          `json:"seconds"`
	// Idle mode.
	RSSBefore    uint64  `json:"rss_before_bytes,omitempty"`
	RSSAfter     uint64  `json:"rss_after_bytes,omitempty"`
	BytesPerPeer float64 `json:"rss_bytes_per_peer,omitempty"`
	// Relay mode.
	Announces     int64   `json:"announces,omitempty"`
	OffersIn      int64   `json:"offers_delivered,omitempty"`
	AnswersIn     int64   `json:"answers_delivered,omitempty"`
	PerSecond     float64 `json:"relayed_per_second,omitempty"`
	TrackerCPU    float64 `json:"tracker_cpu_seconds,omitempty"`
	PerCoreSecond float64 `json:"relayed_per_cpu_second,omitempty"`
	// Round trip of a relayed offer, seen by the offerer: from sending
	// the announce to receiving an answer, through the tracker twice and
	// the seeder once. Percentiles over every answer of the measurement.
	RoundTripP50 time.Duration `json:"round_trip_p50_ns,omitempty"`
	RoundTripP99 time.Duration `json:"round_trip_p99_ns,omitempty"`
}

// peer is one socket.
type peer struct {
	nc      net.Conn
	wmu     sync.Mutex
	id      string
	ih      string
	seeder  bool
	answers atomic.Int64 // answers received this round
	// done is signalled when a round's answers are all in.
	done chan struct{}
	// sent is when the round's announce went out (unix nanoseconds).
	sent atomic.Int64
}

type run struct {
	cfg    Config
	sdp    string
	closed atomic.Int64
	// refusedMu guards refused, the failure reasons the tracker sent.
	refusedMu sync.Mutex
	refused   map[string]int64
	// counting is set during the measurement.
	counting  atomic.Bool
	offersIn  atomic.Int64
	answersIn atomic.Int64
	announces atomic.Int64
	rttMu     sync.Mutex
	rtts      []time.Duration
}

// Run performs one run, logging progress to log.
func Run(ctx context.Context, cfg Config, log io.Writer) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	raiseFileLimit(uint64(cfg.Sockets) + 1024) //nolint:gosec // G115: Validate keeps sockets positive
	r := &run{cfg: cfg, sdp: strings.Repeat("a", cfg.SDPBytes)}
	res := &Result{Mode: cfg.Mode, Sockets: cfg.Sockets}
	var before uint64
	if cfg.Mode == ModeIdle {
		before = r.rss()
	}
	peers := r.open(ctx, res, log)
	defer func() {
		for _, p := range peers {
			_ = p.nc.Close()
		}
	}()
	if len(peers) == 0 {
		return res, errors.New("no socket opened")
	}
	if cfg.Mode == ModeIdle {
		fmt.Fprintf(log, "%d sockets open; settling %s\n", len(peers), cfg.Settle)
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
		}
		res.RSSBefore, res.RSSAfter = before, r.rss()
		if res.RSSAfter > before {
			res.BytesPerPeer = float64(res.RSSAfter-before) / float64(res.Open)
		}
		res.Closed = r.closed.Load()
		return res, r.checkRefused(res)
	}
	res, err := r.relay(ctx, peers, res, log)
	if err != nil {
		return res, err
	}
	return res, r.checkRefused(res)
}

// checkRefused copies the failure answers into res and makes them the
// run's error: a run the tracker refused in part measured its limits, not
// its relay.
func (r *run) checkRefused(res *Result) error {
	r.refusedMu.Lock()
	defer r.refusedMu.Unlock()
	if len(r.refused) == 0 {
		return nil
	}
	res.Refused = maps.Clone(r.refused)
	var total int64
	for _, n := range r.refused {
		total += n
	}
	return fmt.Errorf("wsload: the tracker refused %d requests (%v); raise its limits for the bench", total, res.Refused)
}

// open dials every socket and announces each peer once.
func (r *run) open(ctx context.Context, res *Result, log io.Writer) []*peer {
	cfg := r.cfg
	peers := make([]*peer, cfg.Sockets)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	for range cfg.Dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.Sockets || ctx.Err() != nil {
					return
				}
				p, err := r.dial(ctx, i)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				peers[i] = p
			}
		}()
	}
	wg.Wait()
	out := peers[:0]
	for _, p := range peers {
		if p != nil {
			out = append(out, p)
		}
	}
	res.Open, res.Failed = len(out), int(failed.Load())
	fmt.Fprintf(log, "opened %d sockets in %s (%d failed", len(out), time.Since(start).Round(time.Millisecond), res.Failed)
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(log, "; first error: %v", e)
	}
	fmt.Fprintln(log, ")")
	return out
}

// dial opens socket i and announces it. Even sockets are seeders in
// relay mode, odd ones leechers.
func (r *run) dial(ctx context.Context, i int) (*peer, error) {
	cfg := r.cfg
	src := netip.AddrFrom4([4]byte{127, 0, 10, byte(1 + i%cfg.Sources)}) //nolint:gosec // G115: Validate keeps sources within 1..250
	seeder := i%2 == 0
	url := cfg.URLs[i%len(cfg.URLs)]
	if cfg.Split {
		url = cfg.URLs[0]
		if seeder {
			url = cfg.URLs[1]
		}
	}
	d := ws.Dialer{Timeout: 10 * time.Second, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		return nd.DialContext(ctx, network, addr)
	}}
	nc, br, _, err := d.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
	}
	p := &peer{nc: nc, seeder: seeder, id: binID('p', i), ih: binID('s', i/2%cfg.Swarms), done: make(chan struct{}, 1)}
	left := 1
	if seeder || cfg.Mode == ModeIdle {
		left = 0
	}
	if err := p.send(map[string]any{"action": "announce", "info_hash": p.ih, "peer_id": p.id, "left": left, "numwant": 0, "event": "started"}); err != nil {
		_ = nc.Close()
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := wsutil.ReadServerData(nc); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("first announce: %w", err)
	}
	_ = nc.SetReadDeadline(time.Time{})
	go r.read(p)
	return p, nil
}

// binID is a 20-character binary string unique to (tag, n).
func binID(tag byte, n int) string {
	s := fmt.Sprintf("%c%019d", tag, n)
	return s
}

func (p *peer) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return wsutil.WriteClientText(p.nc, b)
}

type incoming struct {
	PeerID  string          `json:"peer_id"`
	OfferID string          `json:"offer_id"`
	Offer   json.RawMessage `json:"offer"`
	Answer  json.RawMessage `json:"answer"`
	Failure string          `json:"failure reason"`
}

// read handles one socket's messages: a seeder answers every offer, a
// leecher counts the answers. Pings are answered by ReadServerData.
func (r *run) read(p *peer) {
	for {
		b, _, err := wsutil.ReadServerData(p.nc)
		if err != nil {
			r.closed.Add(1)
			return
		}
		var m incoming
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		switch {
		case m.Failure != "":
			r.refusedMu.Lock()
			if r.refused == nil {
				r.refused = map[string]int64{}
			}
			r.refused[m.Failure]++
			r.refusedMu.Unlock()
		case m.Offer != nil:
			if r.counting.Load() {
				r.offersIn.Add(1)
			}
			_ = p.send(map[string]any{
				"action": "announce", "info_hash": p.ih, "peer_id": p.id, "to_peer_id": m.PeerID,
				"offer_id": m.OfferID, "answer": map[string]string{"type": "answer", "sdp": r.sdp},
			})
		case m.Answer != nil:
			if r.counting.Load() {
				r.answersIn.Add(1)
				rtt := time.Duration(time.Now().UnixNano() - p.sent.Load())
				r.rttMu.Lock()
				if len(r.rtts) < 1<<20 {
					r.rtts = append(r.rtts, rtt)
				}
				r.rttMu.Unlock()
			}
			if p.answers.Add(1) == int64(r.cfg.Offers) {
				select {
				case p.done <- struct{}{}:
				default:
				}
			}
		}
	}
}

// relay has every leecher announce offers in a loop, each waiting for its
// answers (or a second) before the next round.
func (r *run) relay(ctx context.Context, peers []*peer, res *Result, log io.Writer) (*Result, error) {
	cfg := r.cfg
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, p := range peers {
		if p.seeder {
			continue
		}
		wg.Add(1)
		go func(p *peer) {
			defer wg.Done()
			for round := 0; ; round++ {
				select {
				case <-stop:
					return
				default:
				}
				own := make([]map[string]any, cfg.Offers)
				for k := range own {
					own[k] = map[string]any{"offer_id": fmt.Sprintf("%d-%d", round, k), "offer": map[string]string{"type": "offer", "sdp": r.sdp}}
				}
				p.answers.Store(0)
				p.sent.Store(time.Now().UnixNano())
				select { // a late answer of the last round
				case <-p.done:
				default:
				}
				if err := p.send(map[string]any{"action": "announce", "info_hash": p.ih, "peer_id": p.id, "left": 1, "numwant": cfg.Offers, "offers": own}); err != nil {
					return
				}
				if r.counting.Load() {
					r.announces.Add(1)
				}
				select {
				case <-p.done:
				case <-time.After(time.Second):
				case <-stop:
					return
				}
			}
		}(p)
	}
	select {
	case <-time.After(cfg.Warmup):
	case <-ctx.Done():
	}
	cpu0 := r.cpu()
	t0 := time.Now()
	r.counting.Store(true)
	select {
	case <-time.After(cfg.Duration):
	case <-ctx.Done():
	}
	r.counting.Store(false)
	res.Seconds = time.Since(t0).Seconds()
	res.TrackerCPU = (r.cpu() - cpu0).Seconds()
	close(stop)
	wg.Wait()
	res.Announces, res.OffersIn, res.AnswersIn = r.announces.Load(), r.offersIn.Load(), r.answersIn.Load()
	relayed := float64(res.OffersIn + res.AnswersIn)
	res.PerSecond = relayed / res.Seconds
	if res.TrackerCPU > 0 {
		res.PerCoreSecond = relayed / res.TrackerCPU
	}
	res.Closed = r.closed.Load()
	r.rttMu.Lock()
	slices.Sort(r.rtts)
	if n := len(r.rtts); n > 0 {
		res.RoundTripP50, res.RoundTripP99 = r.rtts[n/2], r.rtts[n*99/100]
	}
	r.rttMu.Unlock()
	fmt.Fprintf(log, "relayed %.0f messages in %.1fs\n", relayed, res.Seconds)
	return res, nil
}

// cpu sums the tracker processes' user and system time.
func (r *run) cpu() time.Duration {
	var total time.Duration
	for _, pid := range r.cfg.PIDs {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which ends at the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseUint(f[11], 10, 64)
			k, _ := strconv.ParseUint(f[12], 10, 64)
			total += time.Duration(u+k) * time.Second / 100 //nolint:gosec // G115: CPU ticks of a process fit; USER_HZ is 100 on Linux
		}
	}
	return total
}

// rss sums the tracker processes' resident memory.
func (r *run) rss() uint64 {
	var total uint64
	for _, pid := range r.cfg.PIDs {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// raiseFileLimit lifts the open-file limit to at least n if it can (root
// may raise the hard limit too).
func raiseFileLimit(n uint64) {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil || l.Cur >= n {
		return
	}
	want := n
	if l.Max < want {
		l.Max = want
	}
	l.Cur = want
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
