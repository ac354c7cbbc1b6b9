package transport_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/node/cluster/transport/transporttest"
)

// loopbackOnly admits 127.0.0.1 and knows no names: enough for shared-key
// mode, where the key proof authenticates.
type loopbackOnly struct{}

func (loopbackOnly) HostIsMember(ip netip.Addr) bool { return ip == netip.MustParseAddr("127.0.0.1") }
func (loopbackOnly) NameAt(string) (string, bool)    { return "", false }
func (loopbackOnly) IsMember(string) bool            { return false }

func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestTCPConformance(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	transporttest.Run(t, transporttest.Env{
		Node: func(t *testing.T) transport.Transport {
			tr, err := transport.NewTCP(transport.TCPOptions{Bind: "127.0.0.1:0", Keys: [][]byte{key}, Members: loopbackOnly{}, Label: "conformance", Log: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		},
		DeadAddr: deadAddr,
	})
}

// certCluster is the nodes of a certificate-mode conformance run: each
// transport gets a certificate for its own name, and every node's Members
// knows them all at 127.0.0.1.
type certCluster struct {
	dir           string
	caCert, caKey []byte

	mu    sync.Mutex
	nodes map[string]*transport.TCP
}

func (c *certCluster) HostIsMember(ip netip.Addr) bool { return ip == netip.MustParseAddr("127.0.0.1") }

func (c *certCluster) NameAt(addr string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, tr := range c.nodes {
		if tr.Addr() == addr {
			return name, true
		}
	}
	return "", false
}

func (c *certCluster) IsMember(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.nodes[name]
	return ok
}

func (c *certCluster) node(t *testing.T) transport.Transport {
	c.mu.Lock()
	name := fmt.Sprintf("n%d", len(c.nodes)+1)
	c.mu.Unlock()
	certPEM, keyPEM, err := transport.NewNodeCert(c.caCert, c.caKey, transport.CertRequest{Name: name, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	files := transport.CertFiles{CA: filepath.Join(c.dir, "ca.pem"), Cert: filepath.Join(c.dir, name+".pem"), Key: filepath.Join(c.dir, name+"-key.pem")}
	for path, data := range map[string][]byte{files.CA: c.caCert, files.Cert: certPEM, files.Key: keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := transport.NewTCP(transport.TCPOptions{Bind: "127.0.0.1:0", Certs: &files, Members: c, Label: "conformance", Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes[name] = tr
	c.mu.Unlock()
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestTCPCertConformance(t *testing.T) {
	caCert, caKey, err := transport.NewCA(transport.CertRequest{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := &certCluster{dir: t.TempDir(), caCert: caCert, caKey: caKey, nodes: map[string]*transport.TCP{}}
	transporttest.Run(t, transporttest.Env{Node: c.node, DeadAddr: deadAddr})
}
