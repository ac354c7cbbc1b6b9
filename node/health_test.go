package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster"
	"github.com/karuta-tracker/karuta/ring"
)

// TestClusterReportsFailingDataChannel runs three nodes in certificate
// mode where c3's certificate comes from another CA: gossip works (the
// shared keys), so every member is alive and in every ring, but no data
// passes between c3 and the others. That must not look healthy: /cluster
// says degraded and not whole and names the failing members, the link
// gauge is 0 for them (and 1 for the link that works), and /readyz still
// answers ready, saying why the cluster is degraded. No log line carries
// a key twice.
func TestClusterReportsFailingDataChannel(t *testing.T) {
	dir := t.TempDir()
	// Two CAs: c3's certificate and bundle come from the second.
	tlsOf := clusterPKI(t, dir, "c1", "c2")
	other := t.TempDir()
	tlsOf["c3"] = clusterPKI(t, other, "c3")["c3"]

	var (
		nodes []*Node
		logs  []*observer.ObservedLogs
	)
	for i, name := range []string{"c1", "c2", "c3"} {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		n, l := startClusterNodeLogged(t, name, join, func(c *Config) { c.Cluster.TLS = tlsOf[name] })
		nodes, logs = append(nodes, n), append(logs, l)
	}
	eventually.NoError(t, convergeWithin, "every ring holds the three nodes", func() error {
		for _, n := range nodes {
			if st, _ := n.ClusterStatus(); len(st.Ring.Members) != 3 {
				return fmt.Errorf("%s's ring has %d members", nodeName(n), len(st.Ring.Members))
			}
		}
		return nil
	})

	type statusJSON struct {
		Health   string   `json:"health"`
		Problems []string `json:"problems"`
		Ring     struct {
			Whole        bool                   `json:"whole"`
			FailingLinks int                    `json:"failing_links"`
			Members      []cluster.MemberStatus `json:"members"`
		} `json:"ring"`
	}
	status := func(n *Node) statusJSON {
		code, body := httpGet(t, "http://"+n.Addrs().Metrics+"/cluster")
		var st statusJSON
		if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
			t.Fatalf("GET /cluster on %s: %d %s", nodeName(n), code, body)
		}
		return st
	}
	links := func(st statusJSON) map[string]cluster.MemberStatus {
		out := map[string]cluster.MemberStatus{}
		for _, m := range st.Ring.Members {
			out[m.Name] = m
		}
		return out
	}
	eventually.NoError(t, 15*time.Second, "c1 and c3 report the links between them failing", func() error {
		for _, tc := range []struct {
			n       *Node
			failing []string
		}{{nodes[0], []string{"c3"}}, {nodes[2], []string{"c1", "c2"}}} {
			st := status(tc.n)
			if st.Health != "degraded" || st.Ring.Whole || st.Ring.FailingLinks != len(tc.failing) {
				return fmt.Errorf("%s: health %q, whole %v, failing_links %d", nodeName(tc.n), st.Health, st.Ring.Whole, st.Ring.FailingLinks)
			}
			for _, peer := range tc.failing {
				if m := links(st)[peer]; m.Link != cluster.LinkFailing {
					return fmt.Errorf("%s says its link to %s is %q", nodeName(tc.n), peer, m.Link)
				}
			}
		}
		return nil
	})

	st := status(nodes[0])
	if m := links(st)["c3"]; !strings.Contains(m.LinkError, "certificate") {
		t.Errorf("c1 says its link to c3 fails because %q; want the certificate error", m.LinkError)
	}
	if m := links(st)["c2"]; m.Link != cluster.LinkOK {
		t.Errorf("c1's link to c2 is %q, want ok", m.Link)
	}
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "data channel to c3") {
		t.Errorf("c1's problems = %q; want one naming c3's data channel", st.Problems)
	}
	_, text := httpGet(t, "http://"+nodes[0].Addrs().Metrics+"/metrics")
	for peer, want := range map[string]float64{"c3": 0, "c2": 1} {
		if got := metricValue(text, "karuta_cluster_data_link_up", `peer="`+peer+`"`); got != want {
			t.Errorf("c1's karuta_cluster_data_link_up{peer=%q} = %v, want %v", peer, got, want)
		}
	}
	code, body := httpGet(t, "http://"+nodes[0].Addrs().Metrics+"/readyz")
	if code != http.StatusOK || !strings.Contains(body, "ready; cluster degraded: data channel to c3") {
		t.Errorf("c1's /readyz = %d %q; want 200, saying the cluster is degraded", code, body)
	}
	if st := status(nodes[1]); st.Ring.FailingLinks != 1 || links(st)["c1"].Link != cluster.LinkOK {
		t.Errorf("c2: failing_links %d, link to c1 %q; want 1 (c3) and ok", st.Ring.FailingLinks, links(st)["c1"].Link)
	}

	for i, l := range logs {
		for _, e := range l.All() {
			seen := map[string]bool{}
			for _, f := range e.Context {
				if seen[f.Key] {
					t.Errorf("node %d logged %q with the key %q twice", i+1, e.Message, f.Key)
				}
				seen[f.Key] = true
			}
		}
	}
}

// TestSharedNodeNameIsReported starts two nodes with the same node.name:
// status lists both processes and says the name is shared, and the
// degraded health says so.
func TestSharedNodeNameIsReported(t *testing.T) {
	a := startClusterNode(t, "twin", nil, nil)
	b := startClusterNode(t, "twin", []string{a.Addrs().Gossip}, nil)
	eventually.NoError(t, convergeWithin, "both processes see two members named twin", func() error {
		for _, n := range []*Node{a, b} {
			st, _ := n.ClusterStatus()
			if len(st.Members) != 2 || st.Health != "degraded" {
				return fmt.Errorf("%d gossip members, health %q", len(st.Members), st.Health)
			}
		}
		return nil
	})
	st, _ := a.ClusterStatus()
	if st.Members[0].Gossip == st.Members[1].Gossip || st.Members[0].DataAddr == st.Members[1].DataAddr {
		t.Errorf("the two members are not told apart: %+v", st.Members)
	}
	if len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "named twin") || !strings.Contains(st.Problems[0], a.Addrs().Gossip) || !strings.Contains(st.Problems[0], b.Addrs().Gossip) {
		t.Errorf("problems = %q; want the shared name with both gossip addresses", st.Problems)
	}
}

// TestSharedNameCheckWaitsOutRestarts checks the log rule: a name shared
// for less than sharedNameGrace (a restart at a new address) is not
// logged; one that lasts is logged once, and its end once.
func TestSharedNameCheckWaitsOutRestarts(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	twins := sharedMembers("twin", "10.0.0.1:7946", "10.0.0.2:7946")
	alone := twins[:1]
	t0 := time.Unix(1_700_000_000, 0)
	var nc nameCheck
	nc.check(twins, t0, log)
	nc.check(alone, t0.Add(sharedNameGrace/2), log) // a restart: the old process went
	nc.check(twins, t0.Add(sharedNameGrace), log)
	nc.check(twins, t0.Add(sharedNameGrace+time.Second), log)
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d lines logged for a name shared for less than %s: %v", n, sharedNameGrace, logs.All())
	}
	nc.check(twins, t0.Add(2*sharedNameGrace), log)
	nc.check(twins, t0.Add(3*sharedNameGrace), log)
	if got := logs.FilterMessageSnippet("share one node.name").Len(); got != 1 {
		t.Errorf("a lasting shared name logged %d times, want once", got)
	}
	nc.check(alone, t0.Add(4*sharedNameGrace), log)
	if got := logs.FilterMessageSnippet("no longer shared").Len(); got != 1 {
		t.Errorf("its end logged %d times, want once", got)
	}
}

// sharedMembers returns alive members named name, one per gossip address.
func sharedMembers(name string, gossip ...string) []ring.MemberStatus {
	out := make([]ring.MemberStatus, len(gossip))
	for i, g := range gossip {
		out[i].Name, out[i].Gossip, out[i].State, out[i].Boot = name, g, ring.StateAlive, fmt.Sprint(i)
	}
	return out
}
