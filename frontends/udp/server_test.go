package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// startServer starts a server on addr (port 0) with cfg's other settings
// and stops it when the test ends.
func startServer(t *testing.T, cfg Config, tr *fakeTracker, rec *frontends.Recorder) *Server {
	t.Helper()
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultConfig().BatchSize
	}
	if len(cfg.ConnectionIDKeys) == 0 {
		cfg.ConnectionIDKeys = []string{testKey}
	}
	s, err := New(cfg, tr, rec, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if host, _, _ := net.SplitHostPort(cfg.Addr); strings.Contains(host, ":") {
		requireIPv6(t)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

// requireIPv6 skips the test on hosts without IPv6 loopback.
func requireIPv6(t *testing.T) {
	t.Helper()
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c.Close()
}

// client is a test's UDP tracker client.
type client struct {
	t    *testing.T
	conn *net.UDPConn
	buf  []byte
}

// dial connects a client to the server's port on host.
func dial(t *testing.T, s *Server, host string) *client {
	t.Helper()
	port := s.Addr().(*net.UDPAddr).Port
	raddr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Skipf("cannot reach %s: %v", raddr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, buf: make([]byte, 64<<10)}
}

func (c *client) send(pkt []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(pkt); err != nil {
		c.t.Fatal(err)
	}
}

// roundTrip sends pkt and returns the reply with its transaction ID,
// skipping replies to earlier packets.
func (c *client) roundTrip(pkt []byte) []byte {
	c.t.Helper()
	c.send(pkt)
	txID := be.Uint32(pkt[12:])
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := c.conn.SetReadDeadline(deadline); err != nil {
			c.t.Fatal(err)
		}
		n, err := c.conn.Read(c.buf)
		if err != nil {
			c.t.Fatalf("no reply to action %d: %v", be.Uint32(pkt[8:]), err)
		}
		if n >= 8 && replyTxID(c.buf[:n]) == txID {
			return append([]byte(nil), c.buf[:n]...)
		}
	}
}

// connect returns a fresh connection ID.
func (c *client) connect() uint64 {
	c.t.Helper()
	r := c.roundTrip(connectPacket(0x11111111))
	if len(r) != connectReplyLen || replyAction(r) != actionConnect {
		c.t.Fatalf("connect reply % x", r)
	}
	return be.Uint64(r[8:])
}

// expectSilence checks that nothing arrives for a short while.
func (c *client) expectSilence() {
	c.t.Helper()
	if err := c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		c.t.Fatal(err)
	}
	if n, err := c.conn.Read(c.buf); err == nil {
		c.t.Fatalf("unexpected reply % x", c.buf[:n])
	}
}

func TestServerEndToEnd(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		for _, batch := range []int{1, 32} {
			t.Run(fmt.Sprintf("%s/batch=%d", host, batch), func(t *testing.T) {
				tr := &fakeTracker{
					peers:  testPeers(5),
					counts: bittorrent.Counts{Seeders: 3, Leechers: 4},
					after:  make(chan bittorrent.AnnounceRequest, 10),
				}
				s := startServer(t, Config{Addr: net.JoinHostPort(host, "0"), Readers: 2, BatchSize: batch}, tr, nil)
				c := dial(t, s, host)
				id := c.connect()

				a := testAnnounce()
				a.ip = 0x01020304 // must be ignored
				a.options = urlOption("/announce?passkey=abc")
				r := c.roundTrip(a.packet(id, 2))
				peerLen := peer4Len
				if strings.Contains(host, ":") {
					peerLen = peer6Len
				}
				if replyAction(r) != actionAnnounce || len(r) != announceReplyLen+5*peerLen {
					t.Fatalf("announce reply of %d bytes: % x; want 5 peers of %d bytes", len(r), r, peerLen)
				}
				if be.Uint32(r[8:]) != 1800 || be.Uint32(r[12:]) != 4 || be.Uint32(r[16:]) != 3 {
					t.Errorf("interval, leechers, seeders = %d, %d, %d", be.Uint32(r[8:]), be.Uint32(r[12:]), be.Uint32(r[16:]))
				}
				select {
				case got := <-tr.after:
					want := netip.AddrPortFrom(netip.MustParseAddr(host), 6881)
					if got.Addr != want || got.Params.Path != "/announce" || got.Params.Query != "passkey=abc" || got.InfoHash != a.infoHash {
						t.Errorf("AfterAnnounce got addr %s, params %+v; want %s, /announce?passkey=abc", got.Addr, got.Params, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("AfterAnnounce not called")
				}

				r = c.roundTrip(scrapePacket(id, 3, hashN(1), hashN(9)))
				want := concat([]byte{0, 0, 0, 2, 0, 0, 0, 3},
					[]byte{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3},
					[]byte{0, 0, 0, 9, 0, 0, 0, 10, 0, 0, 0, 11})
				if string(r) != string(want) {
					t.Errorf("scrape reply\n got % x\nwant % x", r, want)
				}

				// A failed announce is answered with an error and not
				// passed on.
				a.event = 7
				r = c.roundTrip(a.packet(id, 4))
				if replyAction(r) != actionError || string(r[8:]) != string(bittorrent.ErrBadEvent) {
					t.Errorf("bad event reply %q", r)
				}
				r = c.roundTrip(testAnnounce().packet(id^1, 5))
				if replyAction(r) != actionError || string(r[8:]) != string(errBadConnectionID) {
					t.Errorf("bad connection ID reply %q", r)
				}
				select {
				case got := <-tr.after:
					t.Errorf("AfterAnnounce called for a failed announce: %+v", got)
				case <-time.After(50 * time.Millisecond):
				}
			})
		}
	}
}

// TestServerGarbage checks that no packet stalls a reader: each run of
// garbage is followed by a valid request, which must be answered.
func TestServerGarbage(t *testing.T) {
	for _, batch := range []int{1, 32} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 1, BatchSize: batch}, &fakeTracker{}, nil)
			c := dial(t, s, "127.0.0.1")
			id := c.connect()
			garbage := [][]byte{
				{},
				{1, 2, 3},
				make([]byte, 15),
				make([]byte, maxPacket+1),
				make([]byte, 9000),
				header(0xffffffffffffffff, 0xffffffff, 1),
				append(header(id, actionAnnounce, 2), 0xff),
				append(header(id, actionScrape, 3), 1, 2, 3),
				header(protocolID, actionAnnounce, 4),
				append(testAnnounce().packet(id, 5), optionURLData, 255, 'x'),
			}
			for i, g := range garbage {
				c.send(g)
				r := c.roundTrip(connectPacket(uint32(0x1000 + i)))
				if replyAction(r) != actionConnect {
					t.Fatalf("after garbage %d: reply % x", i, r)
				}
			}
		})
	}
}

// TestServerNoReply checks what must get no answer at all.
func TestServerNoReply(t *testing.T) {
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 1}, &fakeTracker{}, nil)
	c := dial(t, s, "127.0.0.1")
	for _, pkt := range [][]byte{
		make([]byte, 15),
		make([]byte, maxPacket+1),
		writeError(make([]byte, 64), 9, "connection ID expired or invalid", 64), // a tracker's error reply
	} {
		c.send(pkt)
		c.expectSilence()
	}
}

// TestServerErrorSize checks over the wire that error replies never
// outgrow their requests.
func TestServerErrorSize(t *testing.T) {
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 1}, &fakeTracker{}, nil)
	c := dial(t, s, "127.0.0.1")
	id := c.connect()
	for _, pkt := range [][]byte{
		header(id, 42, 1),                    // unknown action
		header(0x00ff000000000000, 0, 2),     // connect without magic
		header(id^1, actionScrape, 3),        // bad ID
		scrapePacket(id, 4),                  // no hashes
		append(header(id, 42, 5), 0, 0, 0),   // unknown action, 19 bytes
		testAnnounce().packet(id, 6)[:20],    // truncated announce
		testAnnounce().packet(id^7, 7)[:16],  // bad ID, header only
		append(header(id, 1000, 8), "xx"...), // unknown action, 18 bytes
	} {
		r := c.roundTrip(pkt)
		if replyAction(r) != actionError || len(r) > len(pkt) {
			t.Errorf("reply of %d bytes to a %d-byte request: %q", len(r), len(pkt), r)
		}
	}
}

// TestServerDualStack checks that a wildcard IPv6 address serves both
// families, each with its own peer format, and that IPv4 clients are seen
// as IPv4, not IPv4-mapped IPv6.
func TestServerDualStack(t *testing.T) {
	tr := &fakeTracker{peers: testPeers(4), after: make(chan bittorrent.AnnounceRequest, 10)}
	s := startServer(t, Config{Addr: "[::]:0", Readers: 2}, tr, nil)
	for _, tc := range []struct {
		host    string
		peerLen int
	}{{"127.0.0.1", peer4Len}, {"::1", peer6Len}} {
		c := dial(t, s, tc.host)
		r := c.roundTrip(testAnnounce().packet(c.connect(), 2))
		if len(r) != announceReplyLen+4*tc.peerLen {
			t.Errorf("%s: reply of %d bytes, want 4 peers of %d bytes", tc.host, len(r), tc.peerLen)
		}
		select {
		case got := <-tr.after:
			if got.Addr.Addr() != netip.MustParseAddr(tc.host) {
				t.Errorf("%s: tracker saw %s", tc.host, got.Addr)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: AfterAnnounce not called", tc.host)
		}
	}
}

// TestServerKeyRotation rotates keys on a running server while clients
// keep announcing, which -race checks for data races.
func TestServerKeyRotation(t *testing.T) {
	const (
		oldKey = "old-key-0123456789abcdef"
		newKey = "new-key-0123456789abcdef"
	)
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 2, ConnectionIDKeys: []string{oldKey}}, &fakeTracker{}, nil)
	c := dial(t, s, "127.0.0.1")
	id := c.connect()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.SetConnectionIDKeys([]string{oldKey, newKey}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	busy := dial(t, s, "127.0.0.1")
	for range 50 {
		busy.connect()
	}
	close(stop)
	wg.Wait()

	steps := []struct {
		keys []string
		want uint32
	}{
		{[]string{newKey, oldKey}, actionScrape}, // rotated out but still accepted
		{[]string{newKey}, actionError},          // dropped
		{nil, actionError},                       // empty keeps the keys in force
	}
	for i, st := range steps {
		if err := s.SetConnectionIDKeys(st.keys); err != nil {
			t.Fatal(err)
		}
		if r := c.roundTrip(scrapePacket(id, uint32(i), hashN(1))); replyAction(r) != st.want {
			t.Errorf("step %d: reply action %d, want %d", i, replyAction(r), st.want)
		}
	}
	if id2 := c.connect(); replyAction(c.roundTrip(scrapePacket(id2, 9, hashN(1)))) != actionScrape {
		t.Error("ID minted with the new key rejected")
	}
	if err := s.SetConnectionIDKeys([]string{newKey, "short"}); err == nil ||
		!strings.Contains(err.Error(), "connection_id_keys[1]: key is 5 bytes, want at least 16") {
		t.Errorf("SetConnectionIDKeys with a short key: %v", err)
	}
}

// TestServerSharedKeys checks that a connection ID from one node is
// accepted by another holding the same keys, as in a cluster.
func TestServerSharedKeys(t *testing.T) {
	cfg := Config{Addr: "127.0.0.1:0", Readers: 1, ConnectionIDKeys: []string{"cluster-key-0123456789"}}
	a := startServer(t, cfg, &fakeTracker{}, nil)
	b := startServer(t, cfg, &fakeTracker{}, nil)
	id := dial(t, a, "127.0.0.1").connect()
	if r := dial(t, b, "127.0.0.1").roundTrip(scrapePacket(id, 1, hashN(1))); replyAction(r) != actionScrape {
		t.Errorf("other node rejected the ID: %q", r)
	}
}

func TestServerLifecycle(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:0", BatchSize: 8}, &fakeTracker{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr() != nil {
		t.Error("Addr before Start is not nil")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	c := dial(t, s, "127.0.0.1")
	c.connect()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := s.Start(); err == nil {
		t.Error("Start after Shutdown succeeded")
	}
	c.send(connectPacket(1))
	c.expectSilence()

	unstarted, err := New(DefaultConfig(), &fakeTracker{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := unstarted.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown before Start: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{Addr: "", BatchSize: 1}, "udp: addr is empty"},
		{Config{Addr: ":0", BatchSize: 0}, "udp: batch_size: 0 is out of range"},
		{Config{Addr: ":0", BatchSize: 1, ConnectionIDKeys: []string{"x"}}, "udp: connection_id_keys[0]: key is 1 bytes"},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg, &fakeTracker{}, nil, nil); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error starting %q", tt.cfg, err, tt.want)
		}
	}
}

func TestServerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := frontends.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 1}, &fakeTracker{}, m.For("udp"))
	c := dial(t, s, "127.0.0.1")
	id := c.connect()
	c.roundTrip(testAnnounce().packet(id, 2))
	c.roundTrip(testAnnounce().packet(id^1, 3))
	c.roundTrip(header(id, 77, 4))
	c.send([]byte{1, 2, 3})
	c.roundTrip(connectPacket(5)) // flushes the short packet's batch

	want := `
# HELP karuta_frontend_dropped_total Requests dropped without an answer, by frontend and reason.
# TYPE karuta_frontend_dropped_total counter
karuta_frontend_dropped_total{frontend="udp",reason="connect_rate"} 0
karuta_frontend_dropped_total{frontend="udp",reason="response"} 0
karuta_frontend_dropped_total{frontend="udp",reason="too_long"} 0
karuta_frontend_dropped_total{frontend="udp",reason="too_short"} 1
# HELP karuta_frontend_requests_total Requests answered, by frontend, action and result.
# TYPE karuta_frontend_requests_total counter
karuta_frontend_requests_total{action="announce",frontend="udp",result="client_error"} 1
karuta_frontend_requests_total{action="announce",frontend="udp",result="error"} 0
karuta_frontend_requests_total{action="announce",frontend="udp",result="ok"} 1
karuta_frontend_requests_total{action="connect",frontend="udp",result="client_error"} 0
karuta_frontend_requests_total{action="connect",frontend="udp",result="ok"} 2
karuta_frontend_requests_total{action="scrape",frontend="udp",result="client_error"} 0
karuta_frontend_requests_total{action="scrape",frontend="udp",result="error"} 0
karuta_frontend_requests_total{action="scrape",frontend="udp",result="ok"} 0
karuta_frontend_requests_total{action="unknown",frontend="udp",result="client_error"} 1
`
	// Outcomes are recorded just after the replies go out.
	eventually.NoError(t, 5*time.Second, "request metrics", func() error {
		return testutil.GatherAndCompare(reg, strings.NewReader(want),
			"karuta_frontend_requests_total", "karuta_frontend_dropped_total")
	})
}
