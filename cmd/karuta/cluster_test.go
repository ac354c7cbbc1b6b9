package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node"
	"github.com/karuta-tracker/karuta/node/cluster"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

func startNode(t *testing.T, mutate func(*node.Config)) *node.Node {
	t.Helper()
	cfg := node.Default()
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
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
	eventually.NoError(t, 10*time.Second, "two-node cluster settles and its data channel works", func() error {
		if st, _ := a.ClusterStatus(); len(st.Ring.Members) != 2 || !st.Ring.Settled || st.Ring.Members[1].Link != cluster.LinkOK {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	code, out, errOut := runCLI(t, "cluster", "status", "--addr", a.Addrs().Metrics)
	if code != exitOK {
		t.Fatalf("cluster status exited %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.HasPrefix(lines[0], "node alpha  epoch ") || !regexp.MustCompile(`  replicas 2  settled yes  whole (yes|no)  health ok$`).MatchString(lines[0]) {
		t.Errorf("header = %q", lines[0])
	}
	if len(lines) != 5 || !strings.HasPrefix(lines[2], "MEMBER") {
		t.Fatalf("want a header, a blank line, a column line and two members; got:\n%s", out)
	}
	for i, name := range []string{"alpha", "beta"} {
		f := strings.Fields(lines[3+i])
		link := map[string]string{"alpha": "self", "beta": "ok"}[name]
		// With two members and two replicas each owns every swarm.
		if len(f) != 8 || f[0] != name || f[1] != "alive" || f[2] != "dc-"+name || f[3] != "-" || f[5] != link || f[6] != "100.0%" || f[7] != "0" {
			t.Errorf("member line %q: want %s alive dc-%s - <data> %s 100.0%% 0", lines[3+i], name, name, link)
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

// clusteredNode returns a mutation that clusters a node on loopback with
// the test's shared key.
func clusteredNode(name string, join []string) func(*node.Config) {
	return func(c *node.Config) {
		c.Node.Name = name
		c.Cluster.Bind, c.Cluster.DataBind = "127.0.0.1:0", "127.0.0.1:0"
		c.Cluster.Profile, c.Cluster.Join = "local", join
		c.Cluster.SecretKeys = []string{"a2FydXRhLWNsaS10ZXN0LWtleS0zMi1ieXRlcy1vayE="}
	}
}

// writePKI writes a new CA and a certificate for each name into dir and
// returns each node's cluster.tls.
func writePKI(t *testing.T, dir string, names ...string) map[string]transport.Config {
	t.Helper()
	caCert, caKey, err := transport.NewCA(transport.CertRequest{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	writeFile(t, ca, string(caCert))
	out := map[string]transport.Config{}
	for _, n := range names {
		certPEM, keyPEM, err := transport.NewNodeCert(caCert, caKey, transport.CertRequest{Name: n, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(dir, n+".pem"), filepath.Join(dir, n+"-key.pem")
		writeFile(t, cert, string(certPEM))
		writeFile(t, key, string(keyPEM))
		out[n] = transport.Config{CAFile: ca, CertFile: cert, KeyFile: key}
	}
	return out
}

// statusWhen runs karuta cluster status against the node at addr until
// its output satisfies ok, and returns that output.
func statusWhen(t *testing.T, addr, what string, ok func(out string) bool) string {
	t.Helper()
	var out string
	eventually.NoError(t, 20*time.Second, what, func() error {
		code, o, errOut := runCLI(t, "cluster", "status", "--addr", addr)
		if out = o; code != exitOK {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		if !ok(out) {
			return fmt.Errorf("not yet:\n%s", out)
		}
		return nil
	})
	return out
}

// TestClusterStatusDegraded is the operator's view of a cluster whose
// members gossip but cannot exchange data: the second node's certificate
// comes from another CA. karuta cluster status says degraded, names the
// problem and marks the member's link failing.
func TestClusterStatusDegraded(t *testing.T) {
	good := writePKI(t, t.TempDir(), "alpha")["alpha"]
	stray := writePKI(t, t.TempDir(), "beta")["beta"]
	a := startNode(t, func(c *node.Config) { clusteredNode("alpha", nil)(c); c.Cluster.TLS = good })
	startNode(t, func(c *node.Config) { clusteredNode("beta", []string{a.Addrs().Gossip})(c); c.Cluster.TLS = stray })
	out := statusWhen(t, a.Addrs().Metrics, "cluster status reports beta's data channel failing", func(out string) bool {
		return strings.Contains(out, "health degraded")
	})
	if !strings.Contains(out, "whole no") || !strings.Contains(out, "problem: data channel to beta") || !strings.Contains(out, "certificate") {
		t.Errorf("status does not say what fails:\n%s", out)
	}
	var beta []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "beta" {
			beta = f
		}
	}
	if len(beta) != 8 || beta[1] != "alive" || beta[5] != "failing" {
		t.Errorf("beta's line is %q; want it alive by gossip and its link failing", beta)
	}
}

// TestClusterStatusSharedName starts two nodes with one name: status
// shows two lines for them, one in the ring and one out of it, and says
// the name is shared.
func TestClusterStatusSharedName(t *testing.T) {
	a := startNode(t, clusteredNode("twin", nil))
	b := startNode(t, clusteredNode("twin", []string{a.Addrs().Gossip}))
	out := statusWhen(t, a.Addrs().Metrics, "cluster status lists both processes", func(out string) bool {
		return strings.Count(out, "\ntwin ") == 2 && strings.Contains(out, "health degraded")
	})
	if !strings.Contains(out, "2 live members are named twin") {
		t.Errorf("status does not say the name is shared:\n%s", out)
	}
	for _, n := range []*node.Node{a, b} {
		if !strings.Contains(out, n.Addrs().Data) {
			t.Errorf("status lacks the data address %s:\n%s", n.Addrs().Data, out)
		}
	}
}

// TestStatusOwners checks the header's account of how many members own
// each swarm: under full replication it is every member, whatever
// cluster.replicas says, and the header says so.
func TestStatusOwners(t *testing.T) {
	members := func(n int) []cluster.MemberStatus { return make([]cluster.MemberStatus, n) }
	for _, tc := range []struct {
		ring cluster.Status
		want string
	}{
		{cluster.Status{Replicas: 2, Owners: 2, Members: members(5)}, "replicas 2"},
		{cluster.Status{Replicas: 2, Owners: 3, Members: members(3)}, "replicas 2, owners 3 (full replication)"},
		{cluster.Status{Replicas: 2, Owners: 3, Members: members(6)}, "replicas 2, owners 3 (every_datacenter)"},
	} {
		if got := owners(node.ClusterStatus{Ring: tc.ring}); got != tc.want {
			t.Errorf("owners(%+v) = %q, want %q", tc.ring, got, tc.want)
		}
	}
}
