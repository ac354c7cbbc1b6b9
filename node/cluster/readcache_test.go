package cluster

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// TestReadCacheGauges reads swarms a node does not own and checks that
// karuta_cluster_read_cache_swarms and _peers count the copies it keeps:
// the memory a node spends on other nodes' swarms.
func TestReadCacheGauges(t *testing.T) { synctest.Test(t, testReadCacheGauges) }

func testReadCacheGauges(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.ReadCacheTTL = time.Minute })
	all := []string{"a", "b", "c"}
	for _, n := range all {
		tc.start(n)
	}
	tc.see(all, all)
	want := swarmSet{}
	tc.announce(want, []string{"b", "c"}, 30, 300, 1)

	a := tc.nodes["a"]
	check := func(swarms, peers int) {
		t.Helper()
		exp := fmt.Sprintf(`# HELP karuta_cluster_read_cache_peers %s
# TYPE karuta_cluster_read_cache_peers gauge
karuta_cluster_read_cache_peers %d
# HELP karuta_cluster_read_cache_swarms %s
# TYPE karuta_cluster_read_cache_swarms gauge
karuta_cluster_read_cache_swarms %d
`, helpOf(t, a, "karuta_cluster_read_cache_peers"), peers, helpOf(t, a, "karuta_cluster_read_cache_swarms"), swarms)
		if err := testutil.GatherAndCompare(a.reg, strings.NewReader(exp), "karuta_cluster_read_cache_peers", "karuta_cluster_read_cache_swarms"); err != nil {
			t.Error(err)
		}
	}
	check(0, 0)

	v := a.c.View()
	var remote []bittorrent.InfoHash
	peers := 0
	for ih, ps := range want {
		owner := v.Members()[v.OwnersOf(ih, nil)[0]].Name
		if owner == "a" {
			continue
		}
		eventually.True(t, 5*time.Second, "owner "+owner+" holds its swarm", func() bool {
			return int(size(tc.nodes[owner].store.Counts(ih))) == len(ps)
		})
		remote = append(remote, ih)
		peers += len(ps)
	}
	if len(remote) == 0 {
		t.Fatal("placement gave a no remote swarm; the test needs some")
	}
	for _, ih := range remote {
		if got, _ := tc.visible("a", ih); len(got) != len(want[ih]) {
			t.Fatalf("swarm %x: a shows %d peers, want %d", ih[:4], len(got), len(want[ih]))
		}
	}
	check(len(remote), peers)

	a.c.cache.clear()
	check(0, 0)
}

// helpOf returns the help text n registers for metric name.
func helpOf(t *testing.T, n *testNode, name string) string {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetHelp()
		}
	}
	t.Fatalf("%s is not registered", name)
	return ""
}
