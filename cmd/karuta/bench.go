package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/karuta-tracker/karuta/cmd/karuta/internal/loadgen"
	"github.com/karuta-tracker/karuta/frontends/udp"
)

// benchCmd runs `karuta bench`: load against any UDP or HTTP tracker, a
// progress line a second on stderr, then a table or --json on stdout. A
// signal ends the run early with a report of what was measured.
func benchCmd(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	if len(args) > 0 && args[0] == "visibility" {
		return visibilityCmd(args[1:], stdout, stderr, sigs)
	}
	if len(args) > 0 && args[0] == "floor" {
		return floorCmd(args[1:], stderr, sigs)
	}
	cfg := loadgen.Default()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var((*urlList)(&cfg.URLs), "url", "tracker announce `URL`: udp://host:port/announce or http://host:port/announce; repeat it to spread the clients evenly over a cluster's nodes")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to measure")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "load sent, not measured, before the measurement")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "simulated clients (closed loop), or most requests in flight (open loop)")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "open loop: announces+scrapes per second on a fixed schedule; 0 is closed loop")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "UDP sockets shared by the clients")
	fs.IntVar(&cfg.Swarms, "swarms", cfg.Swarms, "infohashes in the simulated population")
	fs.IntVar(&cfg.Peers, "peers", cfg.Peers, "peers in the simulated population, spread over swarms by popularity")
	fs.Float64Var(&cfg.Zipf, "zipf", cfg.Zipf, "popularity exponent: swarm s has weight 1/(s+1)^zipf; 0 is uniform")
	fs.Float64Var(&cfg.ScrapeRatio, "scrape-ratio", cfg.ScrapeRatio, "share of requests that are scrapes")
	fs.IntVar(&cfg.ScrapeHashes, "scrape-hashes", cfg.ScrapeHashes, "infohashes per scrape")
	fs.IntVar(&cfg.NumWant, "numwant", cfg.NumWant, "numwant of announces; -1 lets the tracker choose")
	fs.Float64Var(&cfg.Seeders, "seeders", cfg.Seeders, "share of peers that are seeders")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "how long a request waits for its answer")
	fs.DurationVar(&cfg.ConnIDTTL, "conn-id-ttl", cfg.ConnIDTTL, "how long a UDP client reuses a connection ID")
	fs.Var((*pidList)(&cfg.PIDs), "pid", "tracker `pid` on this host: report its CPU per request and peak RSS from /proc; repeat it, or list pids with commas, to sum a cluster's processes")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "random seed of the request sequence")
	fs.Var((*urlList)(&cfg.Metrics), "metrics", "a tracker node's metrics `URL` (http://127.0.0.1:6880/metrics); repeat it for every node: their drop, refusal and failed-read counters are read before the run and after the nodes drain, and any increase marks the run INVALID; their store and read cache gauges give the memory each node holds")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "with --metrics: how long to wait after the load for the nodes' post and forward queues to empty")
	fs.BoolVar(&cfg.Prime, "prime", cfg.Prime, "announce every peer of the population once before the warmup (with --duration 0: only that), so the tracker holds the whole population")
	fs.BoolVar(&cfg.Primed, "primed", cfg.Primed, "an earlier --prime run loaded this population (same --swarms, --peers, --zipf, --seeders): compare each node's memory with its share of it")
	strict := fs.Bool("strict", false, "exit with status 1 when the run is INVALID (errors, timeouts, or a node dropped, refused or failed anything)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	listHashes := fs.Bool("list-infohashes", false, "print the population's infohashes in hex, one a line (a whitelist for trackers that need one), and exit")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: bench: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if *listHashes {
		if cfg.Swarms < 1 {
			fmt.Fprintln(stderr, "karuta: bench: --swarms must be at least 1")
			return exitUsage
		}
		if err := loadgen.WriteInfoHashes(stdout, cfg.Swarms); err != nil {
			fmt.Fprintf(stderr, "karuta: bench: %v\n", err)
			return exitFailure
		}
		return exitOK
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "karuta: bench: %v\n", err)
		return exitUsage
	}

	ctx, cancel := signalContext(sigs)
	defer cancel()
	res, err := loadgen.Run(ctx, cfg, stderr, isTerminal(stderr))
	if res == nil {
		fmt.Fprintf(stderr, "karuta: bench: %v\n", err)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "karuta: bench: %v\n", err)
	}
	if *asJSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteTable(stdout)
	}
	if err != nil || (res.Responses == 0 && res.Mode != "prime") {
		if err == nil {
			fmt.Fprintf(stderr, "karuta: bench: no answer from %s\n", strings.Join(cfg.URLs, " "))
		}
		return exitFailure
	}
	if *strict && res.Invalid {
		fmt.Fprintf(stderr, "karuta: bench: run INVALID: %s\n", strings.Join(res.InvalidReasons, "; "))
		return exitFailure
	}
	return exitOK
}

// visibilityCmd runs `karuta bench visibility`: a new peer announced at
// one node, polled for at another, over every ordered pair of nodes.
func visibilityCmd(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	cfg := loadgen.DefaultVisibility()
	fs := flag.NewFlagSet("bench visibility", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: karuta bench visibility --url udp://A/announce --url udp://B/announce [--url ...] [flags]\n\n"+
			"Each round announces a seeder of a new swarm at one node, then a leecher of it at another\n"+
			"every --poll until that node hands the seeder out, and records the time from the first\n"+
			"node's answer. Rounds cycle over every ordered pair of nodes.\n\n")
		fs.PrintDefaults()
	}
	fs.Var((*urlList)(&cfg.URLs), "url", "a node's UDP announce `URL`; give every node")
	fs.Var((*urlList)(&cfg.Metrics), "metrics", "the node's metrics `URL`, once per --url in the same order: breaks the rounds down by which nodes own each swarm, and checks the nodes' drop counters")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "rounds, one new swarm each")
	fs.IntVar(&cfg.Parallel, "parallel", cfg.Parallel, "rounds at once")
	fs.DurationVar(&cfg.Poll, "poll", cfg.Poll, "pause between the leecher's announces")
	fs.DurationVar(&cfg.Wait, "wait", cfg.Wait, "how long a round waits for the peer before it counts as a timeout")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "how long one request waits for its answer (tried three times)")
	fs.IntVar(&cfg.MaxFailed, "max-failed", cfg.MaxFailed, "stop after this many rounds timed out or failed")
	fs.BoolVar(&cfg.Existing, "existing", cfg.Existing, "make each swarm one the reader already serves (a resident peer announced at it and handed out first), so the new peer joins an existing swarm")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "with --metrics: how long to wait at the end for the nodes' queues to empty")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "picks the run's infohashes; 0 draws new ones")
	strict := fs.Bool("strict", false, "exit with status 1 when the run is INVALID (a timeout, a failed round, or a node dropped anything)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: bench visibility: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "karuta: bench visibility: %v\n", err)
		return exitUsage
	}
	ctx, cancel := signalContext(sigs)
	defer cancel()
	res, err := loadgen.RunVisibility(ctx, cfg, stderr)
	if res == nil {
		fmt.Fprintf(stderr, "karuta: bench visibility: %v\n", err)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "karuta: bench visibility: %v\n", err)
	}
	if *asJSON {
		err = json.NewEncoder(stdout).Encode(res)
	} else {
		err = res.WriteTable(stdout)
	}
	if err != nil || res.Seen == 0 {
		if err == nil {
			fmt.Fprintln(stderr, "karuta: bench visibility: no round saw its peer")
		}
		return exitFailure
	}
	if *strict && res.Invalid {
		fmt.Fprintf(stderr, "karuta: bench visibility: run INVALID: %s\n", strings.Join(res.InvalidReasons, "; "))
		return exitFailure
	}
	return exitOK
}

// floorCmd runs `karuta bench floor`: a UDP server that answers BEP 15
// requests with fixed bytes over the UDP frontend's own socket path, until a
// signal. Benchmarks measure a tracker's CPU per response against it, so the
// cost of the sockets alone is always measured beside the tracker's
// (deploy/bench/compare.sh).
func floorCmd(args []string, stderr io.Writer, sigs <-chan os.Signal) int {
	fs := flag.NewFlagSet("bench floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:6969", "UDP address to answer on")
	readers := fs.Int("readers", 1, "sockets, each with one reader goroutine (as frontends.udp.readers)")
	batch := fs.Int("batch-size", udp.DefaultConfig().BatchSize, "datagrams per recvmmsg/sendmmsg call (as frontends.udp.batch_size)")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: bench floor: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	f, err := udp.StartFloor(*addr, *readers, *batch)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: bench floor: %v\n", err)
		return exitFailure
	}
	ctx, cancel := signalContext(sigs)
	defer cancel()
	<-ctx.Done()
	if err := f.Close(); err != nil {
		fmt.Fprintf(stderr, "karuta: bench floor: %v\n", err)
		return exitFailure
	}
	return exitOK
}

// signalContext returns a context cancelled by the first signal on sigs.
func signalContext(sigs <-chan os.Signal) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// pidList is the --pid flag: process IDs, given with commas or by
// repeating the flag.
type pidList []int

func (p *pidList) String() string {
	if p == nil {
		return ""
	}
	s := make([]string, len(*p))
	for i, pid := range *p {
		s[i] = strconv.Itoa(pid)
	}
	return strings.Join(s, ",")
}

func (p *pidList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || pid <= 0 {
			return fmt.Errorf("%q is not a process ID", f)
		}
		*p = append(*p, pid)
	}
	return nil
}

// urlList is the --url flag: announce URLs, one per use of the flag.
type urlList []string

func (u *urlList) String() string {
	if u == nil {
		return ""
	}
	return strings.Join(*u, " ")
}

func (u *urlList) Set(v string) error {
	*u = append(*u, v)
	return nil
}

// isTerminal reports whether w is a character device, so progress can be
// redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
