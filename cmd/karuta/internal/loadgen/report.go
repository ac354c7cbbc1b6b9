package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what a run measured. Its JSON form is the --json output;
// latencies are in microseconds.
type Result struct {
	URLs        []string `json:"urls"`
	Protocol    string   `json:"protocol"`
	Mode        string   `json:"mode"` // "closed" or "open"
	Concurrency int      `json:"concurrency"`
	Rate        float64  `json:"rate,omitempty"` // requested, open loop only
	Seconds     float64  `json:"seconds"`        // measured phase
	// Responses counts every answer, connects included.
	Responses       uint64  `json:"responses"`
	ResponsesPerSec float64 `json:"responses_per_sec"`
	// RequestsPerSec counts announce and scrape answers only: the rate an
	// open-loop run asked for.
	RequestsPerSec float64 `json:"requests_per_sec"`
	// Errors is TrackerErrors + Malformed + NetErrors; timeouts are apart.
	Errors           uint64                   `json:"errors"`
	TrackerErrors    uint64                   `json:"tracker_errors"`
	Malformed        uint64                   `json:"malformed"`
	NetErrors        uint64                   `json:"net_errors"`
	Timeouts         uint64                   `json:"timeouts"`
	Latency          Latency                  `json:"latency_us"`
	PeersPerAnnounce float64                  `json:"peers_per_announce"`
	Actions          map[string]*ActionResult `json:"actions"`
	Server           *Server                  `json:"server,omitempty"`
	// Prime is what priming the tracker took (--prime).
	Prime *PrimeResult `json:"prime,omitempty"`
	// Nodes are the nodes' reports (--metrics), in the order given.
	Nodes []NodeReport `json:"nodes,omitempty"`
	// Memory compares the peers each node holds with its share of the
	// whole, when the population is known to be in the tracker.
	Memory *Memory `json:"memory,omitempty"`
	// SocketDrops are the datagrams the kernel dropped at the tracker's
	// UDP sockets and the bench's own, where this host can see them.
	SocketDrops []SocketDrops `json:"socket_drops,omitempty"`
	// Invalid says the figures cannot be trusted, for InvalidReasons:
	// errors, timeouts, or anything a node dropped, refused or could not
	// drain (see invalidReasons).
	Invalid        bool     `json:"invalid"`
	InvalidReasons []string `json:"invalid_reasons,omitempty"`
}

// ActionResult is the part of a Result for one action.
type ActionResult struct {
	Responses     uint64  `json:"responses"`
	PerSec        float64 `json:"per_sec"`
	TrackerErrors uint64  `json:"tracker_errors"`
	Malformed     uint64  `json:"malformed"`
	NetErrors     uint64  `json:"net_errors"`
	Timeouts      uint64  `json:"timeouts"`
	Latency       Latency `json:"latency_us"`
}

// Latency holds percentiles of answer latency in microseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Server is the tracker's resource use over the measured phase, summed
// over its processes when there are several.
type Server struct {
	PIDs       []int   `json:"pids"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUPerRequestUS divides CPUSeconds by every response, connects
	// included.
	CPUPerRequestUS float64 `json:"cpu_per_request_us"`
	// CPUSource is "schedstat" (ns, per thread) or "stat" (10 ms ticks).
	CPUSource string `json:"cpu_source"`
	// PeakRSSBytes sums each process's own peak.
	PeakRSSBytes uint64 `json:"peak_rss_bytes"`
}

// WriteJSON writes r as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes r for people: a header, a row per action and a total,
// then what the nodes and the kernel reported and whether the run is
// valid.
func (r *Result) WriteTable(w io.Writer) error {
	if r.Mode == "prime" {
		fmt.Fprintf(w, "%s (%s), priming only\n", strings.Join(r.URLs, " "), r.Protocol)
		return r.writeChecks(w)
	}
	mode := fmt.Sprintf("closed loop, %d clients", r.Concurrency)
	if r.Mode == "open" {
		mode = fmt.Sprintf("open loop at %.0f req/s, up to %d in flight", r.Rate, r.Concurrency)
	}
	fmt.Fprintf(w, "%s (%s), %s, %.1f s measured\n\n", strings.Join(r.URLs, " "), r.Protocol, mode, r.Seconds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ACTION\tRESP/S\tRESPONSES\tTRACKER ERR\tMALFORMED\tNET ERR\tTIMEOUTS\tP50\tP99\tP99.9\tMAX\t")
	row := func(name string, a *ActionResult) {
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", name, a.PerSec, a.Responses,
			a.TrackerErrors, a.Malformed, a.NetErrors, a.Timeouts,
			us(a.Latency.P50), us(a.Latency.P99), us(a.Latency.P999), us(a.Latency.Max))
	}
	for _, name := range actionNames {
		if a := r.Actions[name]; a != nil && (a.Responses > 0 || a.Timeouts+a.NetErrors > 0) {
			row(name, a)
		}
	}
	row("total", &ActionResult{PerSec: r.ResponsesPerSec, Responses: r.Responses, TrackerErrors: r.TrackerErrors,
		Malformed: r.Malformed, NetErrors: r.NetErrors, Timeouts: r.Timeouts, Latency: r.Latency})
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nannounce+scrape: %.0f/s; %.1f peers per announce\n", r.RequestsPerSec, r.PeersPerAnnounce)
	if s := r.Server; s != nil {
		pids := make([]string, len(s.PIDs))
		for i, p := range s.PIDs {
			pids[i] = strconv.Itoa(p)
		}
		label := "pid"
		if len(pids) > 1 {
			label = "pids"
		}
		fmt.Fprintf(w, "server %s %s: %.2f s CPU (%s), %.2f µs CPU per response, peak RSS %.1f MiB\n",
			label, strings.Join(pids, ","), s.CPUSeconds, s.CPUSource, s.CPUPerRequestUS, float64(s.PeakRSSBytes)/(1<<20))
	}
	return r.writeChecks(w)
}

// writeChecks writes the priming, the nodes' memory, the kernel's drops
// and the verdict: VALID, or INVALID with every reason.
func (r *Result) writeChecks(w io.Writer) error {
	if p := r.Prime; p != nil {
		fmt.Fprintf(w, "primed: %d peers in %.1f s, %d not announced\n", p.Peers, p.Seconds, p.Failed)
	}
	for _, n := range r.Nodes {
		cached := "no read cache gauge"
		if n.CachedPeers >= 0 {
			cached = fmt.Sprintf("%.0f cached", n.CachedPeers)
		}
		fmt.Fprintf(w, "node %s: %.0f peers stored, %s\n", n.Metrics, n.StoredPeers, cached)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "memory: the fullest node holds %.0f peers, %.3f of the %.0f in all; its share with %d of %d owners is %.3f (%.2f×); %.2f copies of each peer in all\n",
			m.MaxHeld, m.MaxHeldShare, m.Whole, m.Replicas, m.Nodes, m.Share, m.Ratio, m.TotalHeld/m.Whole)
	}
	if len(r.SocketDrops) > 0 {
		var server, client uint64
		var servers int
		for _, d := range r.SocketDrops {
			if d.Side == "server" {
				server += d.Drops
				servers++
			} else {
				client += d.Drops
			}
		}
		fmt.Fprintf(w, "kernel UDP drops: %d at the tracker's sockets (%d addresses seen), %d at the bench's\n", server, servers, client)
	}
	return r.writeVerdict(w)
}

// writeVerdict writes VALID, or INVALID with every reason.
func (r *Result) writeVerdict(w io.Writer) error {
	if !r.Invalid {
		checked := "errors and timeouts"
		if len(r.Nodes) > 0 {
			checked += fmt.Sprintf(", %d nodes' drop counters", len(r.Nodes))
		}
		_, err := fmt.Fprintf(w, "VALID: no loss seen (checked %s)\n", checked)
		return err
	}
	fmt.Fprintln(w, "INVALID:")
	for _, why := range r.InvalidReasons {
		fmt.Fprintf(w, "  %s\n", why)
	}
	return nil
}

// us formats microseconds with a unit that keeps three digits or so.
func us(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fs", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.2fms", v/1e3)
	}
	return fmt.Sprintf("%.0fµs", v)
}

// progress prints one line a second of the live counters.
type progress struct {
	w      io.Writer
	tty    bool
	st     *stats
	start  time.Time
	warmup time.Duration
	last   [nActions][nOutcomes]uint64
	lastAt time.Time
	width  int
}

func newProgress(w io.Writer, tty bool, st *stats, start time.Time, warmup time.Duration) *progress {
	p := &progress{w: w, tty: tty, st: st, start: start, warmup: warmup, lastAt: start}
	for a := range nActions {
		for o := range nOutcomes {
			p.last[a][o] = st.live[a][o].Load() // priming's, if any, are not this run's
		}
	}
	return p
}

// line prints the rates since the previous line.
func (p *progress) line() {
	if p.w == nil {
		return
	}
	now := time.Now()
	prev := p.lastAt
	sec := now.Sub(prev).Seconds()
	p.lastAt = now
	var cur [nActions][nOutcomes]uint64
	var errs, timeouts uint64
	for a := range nActions {
		for o := range nOutcomes {
			cur[a][o] = p.st.live[a][o].Load()
			d := cur[a][o] - p.last[a][o]
			switch o {
			case trackerError, malformed, netError:
				errs += d
			case timeout:
				timeouts += d
			}
		}
	}
	rate := func(a action) float64 {
		var n uint64
		for o := ok; o <= malformed; o++ {
			n += cur[a][o] - p.last[a][o]
		}
		return float64(n) / sec
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%5.0fs  announce %8.0f/s  scrape %7.0f/s  connect %7.0f/s  errors %d  timeouts %d",
		now.Sub(p.start).Seconds(), rate(actAnnounce), rate(actScrape), rate(actConnect), errs, timeouts)
	if prev.Sub(p.start) < p.warmup {
		b.WriteString("  (warmup)")
	}
	p.last = cur
	s := b.String()
	if p.tty {
		pad := max(p.width-len(s), 0)
		p.width = len(s)
		fmt.Fprintf(p.w, "\r%s%s", s, strings.Repeat(" ", pad))
		return
	}
	fmt.Fprintln(p.w, s)
}

// done ends an overwritten line.
func (p *progress) done() {
	if p.w != nil && p.tty && p.width > 0 {
		fmt.Fprintln(p.w)
	}
}
