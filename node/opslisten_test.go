package node

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

// TestOpsListenerCaps checks that the operations listener, which the
// deploy configs expose on every interface, bounds the connections anyone
// can hold open: in total and per source, counted, and freed on close.
func TestOpsListenerCaps(t *testing.T) {
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ln, err := newOpsListener(tcpLn, 3, 2, reg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial from %s: %v", from, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	admitted := func(from string) net.Conn {
		t.Helper()
		dial(from)
		select {
		case c := <-accepted:
			return c
		case <-time.After(5 * time.Second):
			t.Fatalf("connection from %s not accepted", from)
			return nil
		}
	}
	refused := func(from string) {
		t.Helper()
		c := dial(from)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("connection from %s over a cap got data", from)
		} else if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("connection from %s over a cap was not closed", from)
		}
	}
	first := admitted("127.0.0.2")
	admitted("127.0.0.2")
	refused("127.0.0.2") // per-source cap
	admitted("127.0.0.3")
	refused("127.0.0.4") // total cap
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	_ = first.Close() // a second close gives nothing back twice
	admitted("127.0.0.2")
	refused("127.0.0.5")
	for reason, want := range map[string]float64{"max_connections": 2, "max_connections_per_ip": 1} {
		if got := testutil.ToFloat64(ln.refused.WithLabelValues(reason)); got != want {
			t.Errorf("refused{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}
