package transport_test

import (
	"net"
	"net/netip"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/node/cluster/transport/transporttest"
)

// loopbackOnly admits 127.0.0.1 and knows no names: enough for shared-key
// mode, where the key proof authenticates.
type loopbackOnly struct{}

func (loopbackOnly) HostIsMember(ip netip.Addr) bool { return ip == netip.MustParseAddr("127.0.0.1") }
func (loopbackOnly) NameAt(string) (string, bool)    { return "", false }
func (loopbackOnly) IsAt(string, netip.Addr) bool    { return false }

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
