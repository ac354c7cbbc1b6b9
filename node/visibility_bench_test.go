package node

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/node/cluster"
)

// visibilityWait is how long one iteration waits for the peer before it
// counts as a timeout; the promise is 100 ms at p99.
const visibilityWait = 2 * time.Second

// BenchmarkCrossNodeVisibility measures how long a peer announced at one
// node takes to appear in another node's answers: a seeder announces over
// UDP to node A, then a leecher polls node B every millisecond until the
// seeder is in its peer list. Every iteration uses a new swarm and the next
// ordered pair of the three nodes. The data plane runs with its production
// defaults; the log breaks the figures down by the path the peer took.
// "full" is the default for three nodes, every node an owner of every
// swarm; "placed" turns full_replication off, so swarms have two owners
// of three as in a larger cluster.
func BenchmarkCrossNodeVisibility(b *testing.B) {
	b.Run("full", func(b *testing.B) { benchVisibility(b, -1) })
	b.Run("placed", func(b *testing.B) { benchVisibility(b, 0) })
}

// benchVisibility runs the benchmark with full_replication full, or the
// default if negative.
func benchVisibility(b *testing.B, full int) {
	nodes := startBenchCluster(b, full, "v1", "v2", "v3")
	clients := make([]tracker.Client, len(nodes))
	for i, n := range nodes {
		cl, err := tracker.NewClient("udp://"+n.Addrs().UDP, tracker.NewClientOpts{})
		if err != nil {
			b.Fatalf("tracker client for %s: %v", n.Addrs().UDP, err)
		}
		b.Cleanup(func() { cl.Close() })
		clients[i] = cl
	}
	var pairs [][2]int
	for a := range nodes {
		for r := range nodes {
			if a != r {
				pairs = append(pairs, [2]int{a, r})
			}
		}
	}

	// The three ways a peer can reach the reader, with replicas 2 of 3:
	// both nodes own the swarm (the reader fetches from the writer until
	// the forwarded change lands), only the reader owns it (it waits for
	// the writer's forward), or only the writer owns it (the reader
	// fetches from the owners and caches what it got).
	var all []time.Duration
	var byPath [3][]time.Duration
	pathNames := [3]string{"both own", "writer forwards", "reader fetches"}
	timeouts := 0
	for i := 0; b.Loop(); i++ {
		a, r := pairs[i%len(pairs)][0], pairs[i%len(pairs)][1]
		ih := infohash.T{0xb1, 0x5e, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
		port := uint16(10000 + i%50000)
		seeder := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('s'), Port: port, NumWant: 0, Event: tracker.Started}
		if _, err := announceOnce(clients[a], seeder); err != nil {
			b.Fatalf("announce to %s: %v", nodes[a].Config().Node.Name, err)
		}
		t0 := time.Now()
		probe := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('p'), Left: 1, Port: 9, NumWant: 200, Event: tracker.Started}
		d, ok, err := waitForPeer(clients[r], probe, int(port), t0)
		if err != nil {
			b.Fatalf("probe %s: %v", nodes[r].Config().Node.Name, err)
		}
		if !ok {
			timeouts++
			continue
		}
		all = append(all, d)
		path := 0
		switch {
		case !nodes[a].cl.data.View().Owns(bittorrent.InfoHash(ih), nil):
			path = 1
		case !nodes[r].cl.data.View().Owns(bittorrent.InfoHash(ih), nil):
			path = 2
		}
		byPath[path] = append(byPath[path], d)
	}

	slices.Sort(all)
	b.ReportMetric(percentileMs(all, 0.50), "p50-ms")
	b.ReportMetric(percentileMs(all, 0.99), "p99-ms")
	b.ReportMetric(percentileMs(all, 1), "max-ms")
	b.ReportMetric(float64(timeouts), "timeouts")
	for i, ds := range byPath {
		b.Logf("%s: %s", pathNames[i], latencySummary(ds))
	}
	if timeouts > 0 {
		b.Fatalf("%d of %d announces not visible at the other node within %v", timeouts, timeouts+len(all), visibilityWait)
	}
}

// startBenchCluster is startConverged for benchmarks, whose helpers take
// *testing.T, with full_replication full (the default if negative). It
// keeps the data plane's defaults: the tests' longer read
// timeout, meant for -race, would change what is measured here.
func startBenchCluster(b *testing.B, full int, names ...string) []*Node {
	b.Helper()
	var nodes []*Node
	for i, name := range names {
		cfg := Default()
		cfg.Node.Name = name
		cfg.Node.Zone = name
		cfg.Frontends.HTTP.Addr = "127.0.0.1:0"
		cfg.Frontends.UDP.Addr = "127.0.0.1:0"
		cfg.Frontends.UDP.ConnectionIDKeys = []string{"0123456789abcdef0123456789abcdef"}
		cfg.Metrics.Addr = "127.0.0.1:0"
		cfg.RateLimit.PerIP.Rate = 0 // the leecher polls every millisecond from one address
		cfg.Cluster.Bind = "127.0.0.1:0"
		cfg.Cluster.DataBind = "127.0.0.1:0"
		if i > 0 {
			cfg.Cluster.Join = []string{nodes[0].Addrs().Gossip}
		}
		cfg.Cluster.Profile = "local"
		cfg.Cluster.JoinRetry = 200 * time.Millisecond
		cfg.Cluster.SecretKeys = []string{testClusterKey}
		cfg.Cluster.Label = "karuta-test"
		cfg.Cluster.Data = cluster.DefaultConfig()
		if full >= 0 {
			cfg.Cluster.FullReplication = full
		}
		n, err := New(cfg, Options{Log: zaptest.NewLogger(b, zaptest.Level(zapcore.WarnLevel)), Version: "test"})
		if err != nil {
			b.Fatalf("New %s: %v", name, err)
		}
		if err := n.Start(); err != nil {
			b.Fatalf("Start %s: %v", name, err)
		}
		// Shutdown errors are logged, not failed: the last node to leave
		// sometimes times out announcing it to members that have gone,
		// which says nothing about visibility and would drop the run's
		// figures. The cluster tests check shutdown.
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := n.Shutdown(ctx); err != nil {
				b.Logf("Shutdown %s: %v", name, err)
			}
		})
		nodes = append(nodes, n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for {
			st, _ := n.ClusterStatus()
			if len(st.Ring.Members) == len(names) && st.Ring.Settled {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: ring %+v not settled with %d members within 10s", n.Config().Node.Name, st.Ring, len(names))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nodes
}

func announceOnce(cl tracker.Client, req tracker.AnnounceRequest) (tracker.AnnounceResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return cl.Announce(ctx, req, trhttp.AnnounceOpt{})
}

// waitForPeer announces probe every millisecond until the answer holds a
// peer on port, and returns the time from t0 to that answer; ok is false
// when visibilityWait passed first.
func waitForPeer(cl tracker.Client, probe tracker.AnnounceRequest, port int, t0 time.Time) (time.Duration, bool, error) {
	for {
		resp, err := announceOnce(cl, probe)
		if err != nil {
			return 0, false, err
		}
		d := time.Since(t0)
		if hasPeer(resp, port) {
			return d, true, nil
		}
		if d > visibilityWait {
			return d, false, nil
		}
		time.Sleep(time.Millisecond)
	}
}

// percentileMs is the nearest-rank percentile of sorted durations, in
// milliseconds.
func percentileMs(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / float64(time.Millisecond)
}

func latencySummary(ds []time.Duration) string {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return fmt.Sprintf("%d announces, p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		len(ds), percentileMs(ds, 0.50), percentileMs(ds, 0.99), percentileMs(ds, 1))
}
