package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// shutdownNode stops n as SIGTERM does, failing the test on error.
func shutdownNode(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown %s: %v", n.Config().Node.Name, err)
	}
}

// TestRestartKeepsSwarms stops a node with store.snapshot_file set and
// starts a new one on the same file: the swarm's peers and its downloaded
// count are still there.
func TestRestartKeepsSwarms(t *testing.T) {
	path := filepath.Join(t.TempDir(), "swarms")
	withFile := func(c *Config) { c.Store.SnapshotFile = path }
	ih := infohash.T{0x5a, 1}

	first := startNode(t, "127.0.0.1", withFile)
	c := newClient(t, "udp://"+first.Addrs().UDP)
	c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('a'), Port: 7001, NumWant: -1, Event: tracker.Started})
	c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('b'), Port: 7002, Left: 10, NumWant: -1, Event: tracker.Started})
	c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('c'), Port: 7003, NumWant: -1, Event: tracker.Completed})
	shutdownNode(t, first)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no swarm file after shutdown: %v", err)
	}

	second := startNode(t, "127.0.0.1", withFile)
	c2 := newClient(t, "udp://"+second.Addrs().UDP)
	s := c2.scrape(ih)
	if len(s) != 1 || s[0].Seeders != 2 || s[0].Leechers != 1 || s[0].Completed != 1 {
		t.Fatalf("after the restart the scrape is %+v; want 2 seeders, 1 leecher, 1 downloaded", s)
	}
	r := c2.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('d'), Port: 7004, Left: 10, NumWant: 50})
	for _, port := range []int{7001, 7002, 7003} {
		if !hasPeer(r, port) {
			t.Errorf("after the restart the announce lacks the peer on port %d: %v", port, r.Peers)
		}
	}
	metrics := scrapeMetrics(t, second.Addrs().Metrics)
	if !strings.Contains(metrics, `karuta_store_snapshot_loads_total{result="ok"} 1`) {
		t.Errorf("/metrics does not count the load:\n%s", grepLines(metrics, "snapshot"))
	}
}

// TestBadSwarmFileIsSkipped starts a node on a damaged and on a truncated
// swarm file: it starts empty, counts the bad load and keeps the file
// aside under the time it was found bad, and writes a good one at
// shutdown. Temporary files that crashed writes left are removed at start.
func TestBadSwarmFileIsSkipped(t *testing.T) {
	good := filepath.Join(t.TempDir(), "swarms")
	n := startNode(t, "127.0.0.1", func(c *Config) { c.Store.SnapshotFile = good })
	c := newClient(t, "udp://"+n.Addrs().UDP)
	c.announce(tracker.AnnounceRequest{InfoHash: infohash.T{0x5b}, PeerId: peerID('a'), Port: 7001, NumWant: -1})
	shutdownNode(t, n)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"truncated", data[:len(data)-5]},
		{"damaged", append(append([]byte{}, data[:20]...), append([]byte{^data[20]}, data[21:]...)...)},
		{"not a swarm file", []byte("hello\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "swarms")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			stale := filepath.Join(filepath.Dir(path), ".swarms.tmp-12345")
			if err := os.WriteFile(stale, data, 0o600); err != nil { //nolint:gosec // G703: a path in the test's own temporary directory
				t.Fatal(err)
			}
			n := startNode(t, "127.0.0.1", func(c *Config) { c.Store.SnapshotFile = path })
			if st := n.store.Stats(); st.Swarms != 0 {
				t.Errorf("loaded %+v from a bad file", st)
			}
			kept, _ := filepath.Glob(path + ".bad-*")
			if len(kept) != 1 {
				t.Fatalf("bad files kept: %v, want one %s.bad-TIME", kept, path)
			}
			if b, err := os.ReadFile(kept[0]); err != nil || string(b) != string(tc.data) {
				t.Errorf("%s does not hold the bad file: %v", kept[0], err)
			}
			if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stale temporary file %s still there: %v", stale, err)
			}
			metrics := scrapeMetrics(t, n.Addrs().Metrics)
			if !strings.Contains(metrics, `karuta_store_snapshot_loads_total{result="bad"} 1`) {
				t.Errorf("/metrics does not count the bad load:\n%s", grepLines(metrics, "snapshot"))
			}
			shutdownNode(t, n)
			if _, err := os.Stat(path); err != nil {
				t.Errorf("no new swarm file after shutdown: %v", err)
			}
		})
	}
}

// TestSwarmFileDirectoryMustExist refuses to build a node whose swarm file
// could never be written, naming the key.
func TestSwarmFileDirectoryMustExist(t *testing.T) {
	cfg := Default()
	cfg.Store.SnapshotFile = filepath.Join(t.TempDir(), "missing", "swarms")
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "store.snapshot_file") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("New = %v; want an error naming store.snapshot_file and the directory", err)
	}
}

// TestClusterRestartKeepsSnatches stops a whole 3-node cluster, one node
// after the other, and starts it again on the same swarm files: every
// swarm's snatch count and seeders come back, on every node.
func TestClusterRestartKeepsSnatches(t *testing.T) {
	names := []string{"s1", "s2", "s3"}
	dir := t.TempDir()
	start := func() []*Node {
		var nodes []*Node
		for i, name := range names {
			var join []string
			if i > 0 {
				join = []string{nodes[0].Addrs().Gossip}
			}
			nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) {
				c.Store.SnapshotFile = filepath.Join(dir, name+".swarms")
			}))
		}
		eventually.NoError(t, convergeWithin, "cluster converges", func() error { return converged(nodes) })
		return nodes
	}
	const swarms = 12
	ih := func(i int) infohash.T { return infohash.T{0x5c, byte(i)} }
	// Swarm i gets i%3+1 snatches, announced to rotating nodes.
	nodes := start()
	for i := range swarms {
		for k := range i%3 + 1 {
			c := newClient(t, "udp://"+nodes[(i+k)%3].Addrs().UDP)
			c.announce(tracker.AnnounceRequest{InfoHash: ih(i), PeerId: peerID(byte('a' + k)), Port: uint16(7100 + k), NumWant: -1, Event: tracker.Completed})
		}
	}
	check := func(nodes []*Node, when string) {
		t.Helper()
		for _, n := range nodes {
			c := newClient(t, "udp://"+n.Addrs().UDP)
			for i := range swarms {
				want := int32(i%3 + 1)
				eventually.True(t, 10*time.Second, fmt.Sprintf("%s: %s scrapes swarm %d with %d snatches", when, n.Config().Node.Name, i, want), func() bool {
					s := c.scrape(ih(i))
					return len(s) == 1 && s[0].Completed == want && s[0].Seeders == want
				})
			}
		}
	}
	check(nodes, "before the stop")
	for _, n := range nodes {
		shutdownNode(t, n)
	}
	check(start(), "after the restart")
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestNodeMetricsLint runs promlint over every metric a node with the
// swarm file and full scrapes on exports, Go and process collectors
// included, so new metrics follow Prometheus naming.
func TestNodeMetricsLint(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Store.SnapshotFile = filepath.Join(t.TempDir(), "swarms")
		c.Frontends.HTTP.FullScrape = true
	})
	problems, err := testutil.GatherAndLint(n.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for _, name := range []string{"karuta_store_snapshot_loads_total", "karuta_frontend_full_scrapes_total"} {
		if c, err := testutil.GatherAndCount(n.Registry(), name); err != nil || c == 0 {
			t.Errorf("%s: %d series, %v; want some", name, c, err)
		}
	}
}
