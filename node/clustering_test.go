package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"go.uber.org/zap/zaptest/observer"
)

var testClusterKey = base64.StdEncoding.EncodeToString([]byte("karuta-test-cluster-key-32-bytes"))

// startClusterNode runs a clustered node on loopback, joining through join.
func startClusterNode(t *testing.T, name string, join []string, mutate func(*Config)) *Node {
	t.Helper()
	n, _ := startClusterNodeLogged(t, name, join, mutate)
	return n
}

// startClusterNodeLogged is startClusterNode that also records the node's
// warnings.
func startClusterNodeLogged(t *testing.T, name string, join []string, mutate func(*Config)) (*Node, *observer.ObservedLogs) {
	t.Helper()
	return startNodeLogged(t, "127.0.0.1", func(c *Config) {
		c.Node.Name = name
		c.Node.Zone = name
		c.Cluster.Bind = "127.0.0.1:0"
		c.Cluster.DataBind = "127.0.0.1:0"
		c.Cluster.Join = join
		c.Cluster.Profile = "local"
		c.Cluster.JoinRetry = 200 * time.Millisecond
		c.Cluster.SecretKeys = []string{testClusterKey}
		// Each test its own label: cluster tests run in parallel, and a
		// node retrying a crashed member's address must not join another
		// test's node that reuses the port.
		c.Cluster.Label = "karuta-test-" + t.Name()
		c.Cluster.Data.ReadTimeout = 500 * time.Millisecond // -race on two cores
		// These tests place swarms on some nodes and read them from the
		// others, as in a cluster too large to hold everything everywhere.
		c.Cluster.FullReplication = 0
		if mutate != nil {
			mutate(c)
		}
	})
}

// TestClusterSwarmAcrossNodes announces a seeder over HTTP to one node and
// a leecher over UDP to another: each sees the other.
func TestClusterSwarmAcrossNodes(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	nodes := startConverged(t, "n1", "n2", "n3")
	httpc := newClient(t, "http://"+nodes[0].Addrs().HTTP+"/announce")
	udpc := newClient(t, "udp://"+nodes[2].Addrs().UDP)
	for i := range 20 {
		ih := infohash.T{byte(i), 0xc1}
		seeder := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('s'), Port: 5001, NumWant: -1, Event: tracker.Started}
		httpc.announce(seeder)
		leecher := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('l'), Left: 10, Port: 5002, NumWant: -1, Event: tracker.Started}
		eventually.True(t, 5*time.Second, fmt.Sprintf("swarm %d: leecher at n3 gets the seeder announced at n1", i), func() bool {
			r := udpc.announce(leecher)
			return hasPeer(r, 5001) && r.Seeders == 1 && r.Leechers == 1
		})
		eventually.True(t, 5*time.Second, fmt.Sprintf("swarm %d: seeder at n1 gets the leecher announced at n3", i), func() bool {
			return hasPeer(httpc.announce(seeder), 5002)
		})
	}
	// Every node scrapes the same counts.
	for _, n := range nodes {
		c := newClient(t, "udp://"+n.Addrs().UDP)
		eventually.True(t, 5*time.Second, n.Config().Node.Name+" scrapes 1 seeder and 1 leecher", func() bool {
			s := c.scrape(infohash.T{3, 0xc1})
			return len(s) == 1 && s[0].Seeders == 1 && s[0].Leechers == 1
		})
	}

	// /cluster lists the members with their shares, summing to replicas.
	resp, err := http.Get("http://" + nodes[1].Addrs().Metrics + "/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st ClusterStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Node != "n2" || len(st.Members) != 3 || len(st.Ring.Members) != 3 {
		t.Fatalf("/cluster = %+v; want n2 with 3 members", st)
	}
	var total float64
	for _, m := range st.Ring.Members {
		total += m.Share
		if m.Share < 0.4 || m.Share > 0.93 {
			t.Errorf("member %s owns %.2f of the swarms; want about 2/3", m.Name, m.Share)
		}
	}
	if total < 1.99 || total > 2.01 {
		t.Errorf("shares sum to %.3f, want 2 (replicas)", total)
	}
	for _, m := range st.Members {
		if m.State != "alive" || m.DataAddr == "" || strings.HasPrefix(m.DataAddr, "0.0.0.0") {
			t.Errorf("member %+v: want alive with a reachable data address", m)
		}
	}

	metrics := scrapeMetrics(t, nodes[0].Addrs().Metrics)
	for _, want := range []string{`karuta_cluster_members{state="alive"} 3`, `karuta_cluster_forwarded_changes_total{result="ok"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

// TestClusterGracefulShutdownKeepsSwarms shuts a node down the way SIGTERM
// does and checks that the survivors still have every peer, with replicas
// 1 so the leaving node holds the only copy of its swarms.
func TestClusterGracefulShutdownKeepsSwarms(t *testing.T) {
	t.Parallel() // real gossip timers, mostly idle; see startClusterNode
	var nodes []*Node
	for i, name := range []string{"g1", "g2", "g3"} {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) { c.Cluster.Replicas = 1 }))
	}
	for _, n := range nodes {
		eventually.True(t, 5*time.Second, "three members", func() bool {
			st, _ := n.ClusterStatus()
			return len(st.Ring.Members) == 3 && st.Ring.Settled
		})
	}
	c := newClient(t, "udp://"+nodes[2].Addrs().UDP)
	const swarms = 30
	for i := range swarms {
		c.announce(tracker.AnnounceRequest{InfoHash: infohash.T{byte(i), 0x9}, PeerId: peerID('p'), Port: uint16(4000 + i), NumWant: -1})
	}
	eventually.True(t, 5*time.Second, "g3's swarms spread over the owners", func() bool {
		return nodes[0].store.Stats().Swarms+nodes[1].store.Stats().Swarms+nodes[2].store.Stats().Swarms == swarms
	})
	held := nodes[2].store.Stats().Swarms
	if held == 0 {
		t.Fatal("g3 owns none of the swarms; the test would prove nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := nodes[2].Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	c1 := newClient(t, "udp://"+nodes[0].Addrs().UDP)
	for i := range swarms {
		probe := tracker.AnnounceRequest{InfoHash: infohash.T{byte(i), 0x9}, PeerId: peerID('q'), Port: 9999, Left: 1, NumWant: -1}
		eventually.True(t, 5*time.Second, fmt.Sprintf("swarm %d still has its peer after g3 left", i), func() bool {
			return hasPeer(c1.announce(probe), 4000+i)
		})
	}
	st, _ := nodes[0].ClusterStatus()
	if len(st.Ring.Members) != 2 {
		t.Errorf("after g3 left, g1's ring has %d members", len(st.Ring.Members))
	}
}
