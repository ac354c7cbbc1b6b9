package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node"
)

func startNode(t *testing.T, mutate func(*node.Config)) *node.Node {
	t.Helper()
	cfg := node.Default()
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	// `karuta bench` sends everything from 127.0.0.1, as one flooding host
	// would: the per-source limits would refuse most of it.
	cfg.RateLimit.PerIP.Rate, cfg.Store.MaxPeersPerSource = 0, 0
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := node.New(cfg, node.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	return n
}

func TestClusterStatus(t *testing.T) {
	clustered := func(name string, join []string) func(*node.Config) {
		return func(c *node.Config) {
			c.Node.Name, c.Node.Datacenter = name, "dc-"+name
			c.Cluster.Bind, c.Cluster.DataBind = "127.0.0.1:0", "127.0.0.1:0"
			c.Cluster.Profile, c.Cluster.Join = "local", join
			c.Cluster.SecretKeys = []string{"a2FydXRhLWNsaS10ZXN0LWtleS0zMi1ieXRlcy1vayE="}
		}
	}
	a := startNode(t, clustered("alpha", nil))
	startNode(t, clustered("beta", []string{a.Addrs().Gossip}))
	eventually.NoError(t, 10*time.Second, "two-node cluster settles", func() error {
		if st, _ := a.ClusterStatus(); len(st.Ring.Members) != 2 || !st.Ring.Settled {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	code, out, errOut := runCLI(t, "cluster", "status", "--addr", a.Addrs().Metrics)
	if code != exitOK {
		t.Fatalf("cluster status exited %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "node alpha  epoch ") || !strings.Contains(lines[0], "replicas 2  settled yes") {
		t.Errorf("header = %q", lines[0])
	}
	if len(lines) != 5 || !strings.HasPrefix(lines[2], "MEMBER") {
		t.Fatalf("want a header, a blank line, a column line and two members; got:\n%s", out)
	}
	for i, name := range []string{"alpha", "beta"} {
		f := strings.Fields(lines[3+i])
		// With two members and two replicas each owns every swarm.
		if len(f) != 7 || f[0] != name || f[1] != "alive" || f[2] != "dc-"+name || f[3] != "-" || f[5] != "100.0%" || f[6] != "0" {
			t.Errorf("member line %q: want %s alive dc-%s - <data> 100.0%% 0", lines[3+i], name, name)
		}
	}

	code, out, _ = runCLI(t, "cluster", "status", "--json", "--addr", a.Addrs().Metrics)
	var st node.ClusterStatus
	if code != exitOK || json.Unmarshal([]byte(out), &st) != nil || st.Node != "alpha" || len(st.Members) != 2 {
		t.Errorf("--json: exit %d, output %q", code, out)
	}
}

func TestClusterStatusErrors(t *testing.T) {
	single := startNode(t, nil)
	code, _, errOut := runCLI(t, "cluster", "status", "--addr", single.Addrs().Metrics)
	if code != exitFailure || !strings.Contains(errOut, "clustering is off") {
		t.Errorf("single node: exit %d, stderr %q; want %d and 'clustering is off'", code, errOut, exitFailure)
	}
	code, _, errOut = runCLI(t, "cluster", "status", "--addr", freePort(t), "--timeout", "1s")
	if code != exitFailure || !strings.Contains(errOut, "cluster status") {
		t.Errorf("nobody listening: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "cluster", "bogus"); code != exitUsage {
		t.Errorf("cluster bogus: exit %d, want %d", code, exitUsage)
	}
}
