//go:build unix

package udp

import (
	"net"
	"sync"
	"testing"
)

// TestServerReusePort checks that several readers share one port picked
// by the kernel, and that many clients, spread over the sockets, are all
// answered.
func TestServerReusePort(t *testing.T) {
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 3}, &fakeTracker{}, nil)
	port := s.Addr().(*net.UDPAddr).Port
	if port == 0 || len(s.conns) != 3 {
		t.Fatalf("port %d, %d sockets", port, len(s.conns))
	}
	for _, c := range s.conns {
		if p := c.LocalAddr().(*net.UDPAddr).Port; p != port {
			t.Errorf("socket on port %d, want %d", p, port)
		}
	}
	var wg sync.WaitGroup
	for range 16 {
		c := dial(t, s, "127.0.0.1")
		wg.Go(func() {
			for range 5 {
				c.connect()
			}
		})
	}
	wg.Wait()
}
