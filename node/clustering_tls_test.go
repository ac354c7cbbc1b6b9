package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// clusterPKI writes a cluster CA and a certificate per name into dir, as
// `karuta cluster tls` does, and returns each node's cluster.tls.
func clusterPKI(t *testing.T, dir string, names ...string) map[string]transport.Config {
	t.Helper()
	caCert, caKey, err := transport.NewCA(transport.CertRequest{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := write("ca.pem", caCert)
	out := map[string]transport.Config{}
	for _, n := range names {
		certPEM, keyPEM, err := transport.NewNodeCert(caCert, caKey, transport.CertRequest{Name: n, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		out[n] = transport.Config{CAFile: ca, CertFile: write(n+".pem", certPEM), KeyFile: write(n+"-key.pem", keyPEM)}
	}
	return out
}

// TestClusterCertificates runs a cluster in certificate mode: the nodes
// authenticate each other by their certificates and serve one tracker.
func TestClusterCertificates(t *testing.T) {
	names := []string{"c1", "c2", "c3"}
	tlsOf := clusterPKI(t, t.TempDir(), names...)
	var nodes []*Node
	for i, name := range names {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) { c.Cluster.TLS = tlsOf[name] }))
	}
	eventually.NoError(t, convergeWithin, "certificate cluster converges", func() error { return converged(nodes) })
	want := announceSwarms(t, nodes, 0x7c)
	eventually.NoError(t, visibleWithin, "swarms visible on every node", func() error { return visibleEverywhere(nodes, want) })

	// A SIGHUP reload rereads the files; with the same files nothing
	// changes and the cluster keeps answering.
	if err := nodes[1].Reload(nodes[1].Config()); err != nil {
		t.Fatal(err)
	}
	more := announceSwarms(t, nodes, 0x7d)
	eventually.NoError(t, visibleWithin, "swarms visible after the reload", func() error { return visibleEverywhere(nodes, more) })
}

// TestClusterCertificateErrors checks that certificate problems stop a
// node at start with the key named.
func TestClusterCertificateErrors(t *testing.T) {
	dir := t.TempDir()
	good := clusterPKI(t, dir, "c1")["c1"]
	for _, tc := range []struct {
		name string
		tls  transport.Config
		want string
	}{
		{"missing key file", transport.Config{CAFile: good.CAFile, CertFile: good.CertFile}, "cluster.tls.key_file"},
		{"unreadable CA", transport.Config{CAFile: filepath.Join(dir, "nope.pem"), CertFile: good.CertFile, KeyFile: good.KeyFile}, "cluster.tls"},
		{"certificate as CA", transport.Config{CAFile: good.CertFile, CertFile: good.CertFile, KeyFile: good.KeyFile}, "not a CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.Node.Name = "c1"
			cfg.Cluster.Bind = "127.0.0.1:0"
			cfg.Cluster.SecretKeys = []string{testClusterKey}
			cfg.Cluster.TLS = tc.tls
			_, err := New(cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v; want an error mentioning %q", err, tc.want)
			}
		})
	}
}
