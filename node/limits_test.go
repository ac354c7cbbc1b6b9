package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/types/infohash"
	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/memlimit"
)

// TestRateLimitOnByDefault checks the `rate_limit` section's defaults on a
// node configured with nothing else: one address gets its burst of 300
// and then "rate limit exceeded", counted; a trusted proxy's own requests
// are never limited, while the clients it speaks for are, each by its own
// address.
func TestRateLimitOnByDefault(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Frontends.HTTP.TrustedProxies = []string{"127.0.0.2"}
	})
	_, port, err := net.SplitHostPort(n.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + port
	// Past the burst: what is served is the burst plus the refill (30 a
	// second) over the time taken, and the rest is refused.
	served := func(start time.Time) (lo, hi int) {
		return 300, 300 + int(30*time.Since(start).Seconds()) + 1
	}
	refused := 0
	start := time.Now()
	for i := range 400 {
		if got := rateLimitHTTP(t, addr, ""); got == "rate limit exceeded" {
			refused++
		} else if got != "" {
			t.Fatalf("request %d: failure reason %q", i, got)
		}
	}
	if lo, hi := served(start); 400-refused < lo || 400-refused > hi {
		t.Errorf("%d of 400 requests from one address served; want %d to %d, a burst of 300 and the refill", 400-refused, lo, hi)
	}
	// The proxy, 127.0.0.2, keeps one connection open for all of it.
	proxy := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	defer proxy.CloseIdleConnections()
	viaProxy := func(client string) string { return rateLimitHTTPFrom(t, proxy, addr, client) }
	for i := range 400 {
		if got := viaProxy(""); got != "" {
			t.Fatalf("request %d from the trusted proxy itself: %q, want never limited", i, got)
		}
	}
	clientRefused := 0
	start = time.Now()
	for range 400 {
		if viaProxy("10.9.9.9") != "" {
			clientRefused++
		}
	}
	if lo, hi := served(start); 400-clientRefused < lo || 400-clientRefused > hi {
		t.Errorf("%d of 400 requests from a client behind the trusted proxy served; want %d to %d", 400-clientRefused, lo, hi)
	}
	refused += clientRefused
	metrics := scrapeMetrics(t, n.Addrs().Metrics)
	if got := metricValue(metrics, "karuta_hook_rate_limited_total", `scope="ip"`); got != float64(refused) {
		t.Errorf(`karuta_hook_rate_limited_total{scope="ip"} = %v, want %d`, got, refused)
	}
}

// TestStoreLimitsAtTheFrontends fills a node to max_swarms and max_peers
// and checks that new torrents and peers get the store's failure reason
// over both protocols, counted, while the swarms held are served.
func TestStoreLimitsAtTheFrontends(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Store.MaxSwarms, c.Store.MaxPeers, c.Store.MaxPeersPerSource = 2, 5, 3
	})
	a := n.Addrs()
	udp := newClient(t, "udp://"+a.UDP)
	web := newClient(t, "http://"+a.HTTP+"/announce")
	announce := func(c *client, ih byte, port int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.cl.Announce(ctx, tracker.AnnounceRequest{InfoHash: infohash.T{ih}, PeerId: peerID(byte(port)), Port: uint16(port), NumWant: -1, Left: 1}, trhttp.AnnounceOpt{})
		return err
	}
	wantOK := func(c *client, ih byte, port int) {
		t.Helper()
		if err := announce(c, ih, port); err != nil {
			t.Fatalf("announce to swarm %d from port %d: %v", ih, port, err)
		}
		// Applied after the answer: wait until the store holds it.
		eventually.True(t, 5*time.Second, fmt.Sprintf("peer %d stored in swarm %d", port, ih), func() bool {
			_, _, st := n.store.AnnouncePeers(bittorrent.InfoHash{ih}, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), false, 0, nil)
			return st != bittorrent.Absent
		})
	}
	wantRefused := func(c *client, ih byte, port int, reason string) {
		t.Helper()
		if err := announce(c, ih, port); err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("announce to swarm %d from port %d: %v, want %q", ih, port, err, reason)
		}
	}
	wantOK(udp, 1, 1001)
	wantOK(web, 2, 1002)
	wantRefused(udp, 3, 1003, "tracker full: no new torrents")
	wantRefused(web, 3, 1003, "tracker full: no new torrents")
	wantOK(udp, 1, 1004) // new peers in a swarm held
	wantOK(web, 1, 1005)
	wantRefused(udp, 1, 1008, "too many peers from your address in this torrent")
	wantOK(web, 2, 1006)
	wantRefused(udp, 2, 1007, "tracker full: no new peers")
	if err := announce(udp, 1, 1001); err != nil { // a peer held is served
		t.Errorf("re-announce of a peer held: %v", err)
	}
	metrics := scrapeMetrics(t, a.Metrics)
	for label, want := range map[string]float64{
		`reason="max_swarms",stage="announce"`:           2,
		`reason="max_peers",stage="announce"`:            1,
		`reason="max_peers_per_source",stage="announce"`: 1,
		`reason="max_peers",stage="apply"`:               0,
	} {
		if got := metricValue(metrics, "karuta_store_refused_total", label); got != want {
			t.Errorf("karuta_store_refused_total{%s} = %v, want %v", label, got, want)
		}
	}
}

// TestLimitsSizedFromMemory checks that limits left at 0 follow the
// memory the process may use, and that limits set are kept.
func TestLimitsSizedFromMemory(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mem    int64
		set    func(*Config)
		swarms float64
		peers  float64
	}{
		{"512 MiB", 512 << 20, nil, 430185, 2485513},
		{"24 GiB", 24 << 30, nil, 20648881, 119304647},
		{"set", 512 << 20, func(c *Config) { c.Store.MaxSwarms = 7 }, 7, 2485513},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.Node.Name = "sized"
			cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
			if tc.set != nil {
				tc.set(&cfg)
			}
			n, err := New(cfg, Options{Memory: memlimit.Limit{Bytes: tc.mem, Source: "test"}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Shutdown(context.Background()) })
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			metrics := scrapeMetrics(t, n.Addrs().Metrics)
			if got := metricValue(metrics, "karuta_store_limit", `limit="max_swarms"`); got != tc.swarms {
				t.Errorf("max_swarms = %v, want %v", got, tc.swarms)
			}
			if got := metricValue(metrics, "karuta_store_limit", `limit="max_peers"`); got != tc.peers {
				t.Errorf("max_peers = %v, want %v", got, tc.peers)
			}
			if n.Config().Store.MaxPeers != 0 {
				t.Errorf("the config in force says max_peers %d; it keeps the file's 0, so a reload sees no change", n.Config().Store.MaxPeers)
			}
		})
	}
}

// TestSizedLimits checks every limit sized from memory, and that limits
// set in the config are kept.
func TestSizedLimits(t *testing.T) {
	for _, tc := range []struct {
		name               string
		mem                int64
		set                func(*Config)
		swarms, peers      int
		buckets, httpConns int
	}{
		{"512 MiB", 512 << 20, nil, 430185, 2485513, 335544, 3276},
		{"24 GiB", 24 << 30, nil, 20648881, 119304647, 16106127, 10000},
		{"64 MiB", 64 << 20, nil, 53773, 310689, 65536, 409},
		{"set", 512 << 20, func(c *Config) {
			c.Store.MaxPeers, c.RateLimit.MaxEntries, c.Frontends.HTTP.MaxConnections = 5, 2048, 20000
		}, 430185, 5, 2048, 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			if tc.set != nil {
				tc.set(&cfg)
			}
			got := sizedLimits(cfg, memlimit.Limit{Bytes: tc.mem, Source: "test"}, zap.NewNop())
			if got.store.MaxSwarms != tc.swarms || got.store.MaxPeers != tc.peers || got.rateLimit.MaxEntries != tc.buckets || got.http.MaxConnections != tc.httpConns {
				t.Errorf("sized max_swarms %d, max_peers %d, rate_limit.max_entries %d, http max_connections %d; want %d, %d, %d, %d",
					got.store.MaxSwarms, got.store.MaxPeers, got.rateLimit.MaxEntries, got.http.MaxConnections, tc.swarms, tc.peers, tc.buckets, tc.httpConns)
			}
			if err := got.http.Validate(); err != nil {
				t.Errorf("sized HTTP config: %v", err)
			}
		})
	}
}
