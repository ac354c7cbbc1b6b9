package main

import (
	"encoding/json"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/karuta-tracker/karuta/cmd/karuta/loadgen"
)

// runBench runs `karuta bench --json` with args and decodes its result.
func runBench(t *testing.T, args ...string) loadgen.Result {
	t.Helper()
	code, out, errOut := runCLI(t, append([]string{"bench", "--json", "--warmup", "200ms"}, args...)...)
	if code != exitOK {
		t.Fatalf("bench exited %d: %s", code, errOut)
	}
	var res loadgen.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json output does not parse: %v\n%s", err, out)
	}
	return res
}

// TestBenchAgainstNode runs the load generator against an in-process node
// in closed loop over UDP and HTTP. The node runs in this process, so --pid
// measures both sides; the test checks the figures exist, not their size.
func TestBenchAgainstNode(t *testing.T) {
	n := startNode(t, nil)
	for _, url := range []string{"udp://" + n.Addrs().UDP + "/announce", "http://" + n.Addrs().HTTP + "/announce"} {
		t.Run(url[:strings.Index(url, ":")], func(t *testing.T) {
			res := runBench(t, "--url", url, "--duration", "1s", "--concurrency", "8", "--workers", "2",
				"--swarms", "1000", "--peers", "10000", "--pid", strconv.Itoa(os.Getpid()))
			if res.Responses == 0 || res.Actions["announce"].Responses == 0 || res.Actions["scrape"].Responses == 0 {
				t.Errorf("responses: %d, announces %d, scrapes %d; want some of each",
					res.Responses, res.Actions["announce"].Responses, res.Actions["scrape"].Responses)
			}
			if res.Errors != 0 || res.Timeouts != 0 {
				t.Errorf("errors %d (tracker %d, malformed %d, net %d), timeouts %d; want none",
					res.Errors, res.TrackerErrors, res.Malformed, res.NetErrors, res.Timeouts)
			}
			if l := res.Latency; !(l.P50 > 0 && l.P50 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Errorf("latency percentiles out of order: %+v", l)
			}
			if res.PeersPerAnnounce <= 0 {
				t.Errorf("peers per announce = %v; the swarms should fill", res.PeersPerAnnounce)
			}
			if s := res.Server; s == nil || s.CPUPerRequestUS <= 0 || s.PeakRSSBytes == 0 {
				t.Errorf("server use = %+v; want CPU per request and peak RSS", s)
			}
		})
	}
}

// TestBenchOpenLoop checks that an open-loop run keeps to its schedule when
// the tracker keeps up. The band is wide: this is a functional check on a
// shared machine, not a performance claim.
func TestBenchOpenLoop(t *testing.T) {
	n := startNode(t, nil)
	for _, url := range []string{"udp://" + n.Addrs().UDP + "/announce", "http://" + n.Addrs().HTTP + "/announce"} {
		t.Run(url[:strings.Index(url, ":")], func(t *testing.T) {
			res := runBench(t, "--url", url, "--duration", "1s", "--rate", "500", "--concurrency", "16",
				"--swarms", "1000", "--peers", "10000")
			if res.Mode != "open" || res.RequestsPerSec < 300 || res.RequestsPerSec > 600 {
				t.Errorf("mode %s at %.0f requests/s; want open at 300..600", res.Mode, res.RequestsPerSec)
			}
			if res.Errors != 0 || res.Timeouts != 0 {
				t.Errorf("errors %d, timeouts %d; want none", res.Errors, res.Timeouts)
			}
		})
	}
}

func TestBenchUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no url", nil, "--url is required"},
		{"bad scheme", []string{"--url", "ftp://127.0.0.1:6969/announce"}, "scheme must be udp, http or https"},
		{"udp without port", []string{"--url", "udp://127.0.0.1/announce"}, "needs a port"},
		{"no host", []string{"--url", "http:///announce"}, "has no host"},
		{"no scrape path", []string{"--url", "http://127.0.0.1:6969/a"}, "--scrape-ratio 0"},
		{"peers below swarms", []string{"--url", "udp://127.0.0.1:6969", "--swarms", "10", "--peers", "5"}, "--peers must be at least --swarms"},
		{"unknown flag", []string{"--frobnicate"}, "flag provided but not defined"},
		{"argument", []string{"--url", "udp://127.0.0.1:6969", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, append([]string{"bench"}, tt.args...)...)
			if code != exitUsage || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitUsage, tt.want)
			}
		})
	}
}

func TestBenchNoTracker(t *testing.T) {
	code, _, errOut := runCLI(t, "bench", "--url", "udp://"+freeUDPPort(t), "--duration", "300ms", "--warmup", "0s", "--timeout", "100ms", "--concurrency", "2")
	if code != exitFailure || !strings.Contains(errOut, "no answer") {
		t.Errorf("exit %d, stderr %q; want %d and 'no answer'", code, errOut, exitFailure)
	}
}

// freeUDPPort returns a loopback UDP address nobody listens on.
func freeUDPPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}
