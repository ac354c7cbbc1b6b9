package udp

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// TestServerConnectFlood reproduces finding 7 of issue 11: one source
// sends connects as fast as it can. Its connects past the burst go
// unanswered and are counted, while a client at another address still
// connects and announces.
func TestServerConnectFlood(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := frontends.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	const burst, flood = 5, 100 // well within a socket buffer, so the kernel drops none
	cfg := Config{Addr: "127.0.0.1:0", Readers: 2, ConnectRate: 0.01, ConnectBurst: burst, ConnectSources: 1024}
	s := startServer(t, cfg, &fakeTracker{}, m.For("udp"))

	attacker := dialFrom(t, s, "127.0.0.2")
	for i := range flood {
		attacker.send(connectPacket(uint32(i)))
	}
	// The victim's requests queue behind the flood on the same socket, so
	// answers to them show the flood has been read.
	victim := dial(t, s, "127.0.0.1")
	id := victim.connect()
	if r := victim.roundTrip(testAnnounce().packet(id, 2)); replyAction(r) != actionAnnounce {
		t.Fatalf("announce from another address during the flood: reply % x", r)
	}

	answered := 0
	for {
		if err := attacker.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := attacker.conn.Read(attacker.buf); err != nil {
			break
		}
		answered++
	}
	if answered != burst {
		t.Errorf("flooding source got %d connect replies, want its burst of %d", answered, burst)
	}
	want := fmt.Sprintf(`
# HELP karuta_frontend_dropped_total Requests dropped without an answer, by frontend and reason.
# TYPE karuta_frontend_dropped_total counter
karuta_frontend_dropped_total{frontend="udp",reason="connect_rate"} %d
karuta_frontend_dropped_total{frontend="udp",reason="response"} 0
karuta_frontend_dropped_total{frontend="udp",reason="too_long"} 0
karuta_frontend_dropped_total{frontend="udp",reason="too_short"} 0
`, flood-burst)
	eventually.NoError(t, 5*time.Second, "the refused connects are counted", func() error {
		return testutil.GatherAndCompare(reg, strings.NewReader(want), "karuta_frontend_dropped_total")
	})
}

// dialFrom connects a client bound to the local address host (another
// loopback address, to stand for another source) to the server.
func dialFrom(t *testing.T, s *Server, host string) *client {
	t.Helper()
	raddr := s.Addr().(*net.UDPAddr)
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)}, raddr)
	if err != nil {
		t.Fatalf("bind a client to %s: %v", host, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, buf: make([]byte, 64<<10)}
}
