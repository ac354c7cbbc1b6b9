package http

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// TestServerConnectionCaps reproduces finding 4 of issue 11 at a small
// scale: clients hold idle connections open. The connection over a cap is
// closed at once and counted, the per-IP cap applies apart from the global
// one, and a trusted proxy is held only to the global cap.
func TestServerConnectionCaps(t *testing.T) {
	type conn struct {
		from   string // local address to dial from: the client's IP
		served bool   // whether the connection is answered
	}
	tests := []struct {
		name    string
		conns   []conn // opened in order, each kept open
		refused map[string]int
	}{
		{
			name: "per-IP cap",
			conns: []conn{
				{"127.0.0.2", true}, {"127.0.0.2", true}, {"127.0.0.2", false}, {"127.0.0.2", false},
				{"127.0.0.3", true},
			},
			refused: map[string]int{"max_connections_per_ip": 2},
		},
		{
			name: "global cap, below every per-IP cap",
			conns: []conn{
				{"127.0.0.2", true}, {"127.0.0.2", true}, {"127.0.0.3", true}, {"127.0.0.3", true},
				{"127.0.0.4", false}, {"127.0.0.2", false},
			},
			refused: map[string]int{"max_connections": 2},
		},
		{
			name: "a trusted proxy is not held to the per-IP cap",
			conns: []conn{
				{"127.0.0.9", true}, {"127.0.0.9", true}, {"127.0.0.9", true}, {"127.0.0.2", true},
				{"127.0.0.9", false},
			},
			refused: map[string]int{"max_connections": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := frontends.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			_, addr := testServer(t, &fakeTracker{}, m.ForConnections("http"), func(c *Config) {
				c.MaxConnections, c.MaxConnectionsPerIP = 4, 2
				c.TrustedProxies = []string{"127.0.0.9"}
			})
			open := 0
			for i, c := range tt.conns {
				r := dialRawFrom(t, addr, c.from)
				if !c.served {
					r.expectRefused()
					continue
				}
				// Answered, then left idle on purpose.
				r.write(fmt.Sprintf("GET /announce?%s HTTP/1.1\r\nHost: t\r\n\r\n", baseQuery))
				if resp, body := r.read("GET"); resp.StatusCode != 200 || !strings.HasPrefix(body, "d8:complete") {
					t.Fatalf("connection %d from %s: status %d, body %q", i, c.from, resp.StatusCode, body)
				}
				open++
			}
			want := fmt.Sprintf(`
# HELP karuta_frontend_connections Client connections open, by frontend.
# TYPE karuta_frontend_connections gauge
karuta_frontend_connections{frontend="http"} %d
# HELP karuta_frontend_connections_refused_total Client connections closed unanswered at a connection cap, by frontend and cap.
# TYPE karuta_frontend_connections_refused_total counter
karuta_frontend_connections_refused_total{frontend="http",reason="max_connections"} %d
karuta_frontend_connections_refused_total{frontend="http",reason="max_connections_per_ip"} %d
`, open, tt.refused["max_connections"], tt.refused["max_connections_per_ip"])
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
				"karuta_frontend_connections", "karuta_frontend_connections_refused_total"); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestServerConnectionCapFrees checks that closing a connection frees its
// place under both caps.
func TestServerConnectionCapFrees(t *testing.T) {
	s, addr := testServer(t, &fakeTracker{}, nil, func(c *Config) { c.MaxConnections, c.MaxConnectionsPerIP = 2, 1 })
	a := dialRawFrom(t, addr, "127.0.0.2")
	b := dialRawFrom(t, addr, "127.0.0.3")
	eventually.True(t, 5*time.Second, "two connections tracked", func() bool { return s.openConns() == 2 })
	dialRawFrom(t, addr, "127.0.0.4").expectRefused()
	dialRawFrom(t, addr, "127.0.0.2").expectRefused()
	a.c.Close()
	eventually.True(t, 5*time.Second, "a closed connection let go", func() bool { return s.openConns() == 1 })
	c := dialRawFrom(t, addr, "127.0.0.2")
	c.write(fmt.Sprintf("GET /announce?%s HTTP/1.1\r\nHost: t\r\n\r\n", baseQuery))
	if resp, _ := c.read("GET"); resp.StatusCode != 200 {
		t.Errorf("after a close, a new connection got status %d", resp.StatusCode)
	}
	b.write(fmt.Sprintf("GET /announce?%s HTTP/1.1\r\nHost: t\r\n\r\n", baseQuery))
	if resp, _ := b.read("GET"); resp.StatusCode != 200 {
		t.Errorf("a connection held through the refusals got status %d", resp.StatusCode)
	}
}

// openConns is the number of connections the server tracks.
func (s *Server) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// dialRawFrom dials addr from the loopback address local, which stands for
// another client.
func dialRawFrom(t *testing.T, addr, local string) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", local, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// expectRefused checks the server closes the connection before answering
// anything, even a request already sent.
func (r *rawConn) expectRefused() {
	r.t.Helper()
	_, _ = io.WriteString(r.c, "GET /announce HTTP/1.1\r\nHost: t\r\n\r\n") // may fail once the close arrives
	rest, err := io.ReadAll(r.br)
	if len(rest) > 0 {
		r.t.Errorf("refused connection answered %q", rest)
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		r.t.Errorf("connection over the cap not closed: %v", err)
	}
}

// TestConnectionMapsShrink opens more than a thousand connections from
// many addresses and closes them: the server's connection maps, which Go
// never shrinks, are built again small, so a flood of connections does
// not keep its memory.
func TestConnectionMapsShrink(t *testing.T) {
	s, addr := testServer(t, &fakeTracker{}, nil, nil)
	const n = 1100
	var conns []net.Conn
	for i := range n {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 3, byte(i>>8), byte(i)+1)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	open := func() (conns, ips, peak int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns), len(s.perIP), s.peak
	}
	eventually.True(t, 10*time.Second, "every connection tracked", func() bool { c, _, _ := open(); return c == n })
	for _, c := range conns {
		c.Close()
	}
	eventually.True(t, 10*time.Second, "every connection gone", func() bool { c, _, _ := open(); return c == 0 })
	if _, ips, peak := open(); peak >= 1024 || ips != 0 {
		t.Errorf("after %d connections closed: peak %d, %d addresses; want the maps built again", n, peak, ips)
	}
}
