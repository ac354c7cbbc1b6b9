package node

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// metricValue returns the value of the sample of name whose labels
// include label (`result="ok"`), from a /metrics text, or -1.
func metricValue(text, name, label string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") || !strings.Contains(line, label) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			return v
		}
	}
	return -1
}

// TestClusterDataChannelFlood reproduces finding 1 of issue 11 and case 3
// of issue 17 against nodes in this process: 300 silent connections to a
// node's data channel, reopened as soon as they are closed, from a host
// that is not a member and, in the second case, from the very address the
// members connect from, while clients announce to every node. Every
// forward arrives, none is counted unreachable, and the flood is counted
// where it landed; under the flood from the members' address no read
// fails either.
func TestClusterDataChannelFlood(t *testing.T) {
	for _, tc := range []struct {
		name, source string
		rounds       int64 // flood connections closed before the announces
		// reads says no read may fail. The outsider's flood reconnects at
		// once, thousands of times a second, in this process beside the
		// nodes, and on a busy machine starves their gossip enough to move
		// swarms; TestRealClusterFloods checks reads under it from another
		// process.
		reads bool
	}{
		{"outsider", "127.0.0.2", 1000, false},
		{"member's address", "127.0.0.1", 600, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := startConverged(t, "f1", "f2")
			target := nodes[1].Addrs().Data
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var dials atomic.Int64
			for range 300 {
				wg.Go(func() {
					d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.source)}, Timeout: time.Second}
					buf := make([]byte, 1)
					for {
						select {
						case <-stop:
							return
						default:
						}
						nc, err := d.Dial("tcp", target)
						if err != nil {
							continue
						}
						dials.Add(1)
						_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second))
						_, _ = nc.Read(buf) // silent until the node hangs up
						nc.Close()
					}
				})
			}
			defer func() {
				close(stop)
				wg.Wait()
			}()
			eventually.True(t, 20*time.Second, "the flood is under way", func() bool { return dials.Load() > tc.rounds })
			want := announceSwarms(t, nodes, 0x7e)
			eventually.NoError(t, visibleWithin, "swarms visible on every node during the flood", func() error { return visibleEverywhere(nodes, want) })

			for _, n := range nodes {
				m := scrapeMetrics(t, n.Addrs().Metrics)
				name := nodeName(n)
				if v := metricValue(m, "karuta_cluster_forwarded_changes_total", `result="unreachable"`); v > 0 {
					t.Errorf("%s counted %v forwarded changes unreachable during the flood; want 0", name, v)
				}
				if v := metricValue(m, "karuta_cluster_forwarded_changes_total", `result="ok"`); v <= 0 {
					t.Errorf("%s forwarded %v changes; want some", name, v)
				}
				if v := metricValue(m, "karuta_cluster_reads_total", `result="failed"`); tc.reads && v > 0 {
					t.Errorf("%s counted %v failed reads during the flood; want 0", name, v)
				}
			}
			m := scrapeMetrics(t, nodes[1].Addrs().Metrics)
			var refused float64
			for _, reason := range []string{"silent", "source_limit", "pending_limit"} {
				refused += metricValue(m, "karuta_cluster_data_rejected_total", `reason="`+reason+`"`)
			}
			if refused < float64(tc.rounds)/2 {
				t.Errorf("f2 counted %v flood connections closed; want most of the flood's %d", refused, dials.Load())
			}
			t.Logf("flood: %d connections; f2 closed %v of them", dials.Load(), refused)
		})
	}
}
