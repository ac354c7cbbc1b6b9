package transport_test

import (
	"net"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/node/cluster/transport"
	"github.com/karuta-tracker/karuta/node/cluster/transport/transporttest"
)

func TestTCPConformance(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	transporttest.Run(t, transporttest.Env{
		Node: func(t *testing.T) transport.Transport {
			tr, err := transport.NewTCP(transport.TCPOptions{Bind: "127.0.0.1:0", Keys: [][]byte{key}, Label: "conformance", Log: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			return tr
		},
		DeadAddr: func(t *testing.T) string {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			return addr
		},
	})
}
