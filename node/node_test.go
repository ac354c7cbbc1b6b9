package node

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	trhttp "github.com/anacrolix/torrent/tracker/http"
	"github.com/anacrolix/torrent/tracker/udp"
	"github.com/anacrolix/torrent/types/infohash"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// startNode runs a node on loopback ports chosen by the kernel.
func startNode(t *testing.T, host string, mutate func(*Config)) *Node {
	t.Helper()
	n, _ := startNodeLogged(t, host, mutate)
	return n
}

// startNodeLogged is startNode that also records the node's warnings, for
// tests that wait for the node to have noticed something.
func startNodeLogged(t *testing.T, host string, mutate func(*Config)) (*Node, *observer.ObservedLogs) {
	t.Helper()
	warns, logs := observer.New(zap.WarnLevel)
	cfg := Default()
	cfg.Node.Name = "test"
	cfg.Frontends.HTTP.Addr = netipJoin(host, 0)
	cfg.Frontends.UDP.Addr = netipJoin(host, 0)
	cfg.Metrics.Addr = "127.0.0.1:0"
	if mutate != nil {
		mutate(&cfg)
	}
	n, err := New(cfg, Options{Log: zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), warns)), Version: "test"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := n.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return n, logs
}

func netipJoin(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

type client struct {
	t   *testing.T
	url string
	cl  tracker.Client
}

func newClient(t *testing.T, url string) *client {
	t.Helper()
	cl, err := tracker.NewClient(url, tracker.NewClientOpts{})
	if err != nil {
		t.Fatalf("tracker client for %s: %v", url, err)
	}
	t.Cleanup(func() { cl.Close() })
	return &client{t: t, url: url, cl: cl}
}

func (c *client) announce(req tracker.AnnounceRequest) tracker.AnnounceResponse {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cl.Announce(ctx, req, trhttp.AnnounceOpt{})
	if err != nil {
		c.t.Fatalf("announce to %s: %v", c.url, err)
	}
	return resp
}

func (c *client) scrape(ihs ...infohash.T) udp.ScrapeResponse {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cl.Scrape(ctx, ihs)
	if err != nil {
		c.t.Fatalf("scrape %s: %v", c.url, err)
	}
	return resp
}

func peerID(b byte) [20]byte {
	var id [20]byte
	copy(id[:], "-KT0001-")
	for i := 8; i < 20; i++ {
		id[i] = b
	}
	return id
}

func hasPeer(resp tracker.AnnounceResponse, port int) bool {
	for _, p := range resp.Peers {
		if p.Port == port {
			return true
		}
	}
	return false
}

// TestSwarmAcrossFrontends is the basic promise: a seeder announcing over
// HTTP and a leecher over UDP see each other, with counts that include the
// announcer, and scrapes over both protocols agree.
func TestSwarmAcrossFrontends(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			n := startNode(t, host, nil)
			a := n.Addrs()
			httpc := newClient(t, "http://"+a.HTTP+"/announce")
			udpc := newClient(t, "udp://"+a.UDP)
			ih := infohash.T{1, 2, 3}

			seeder := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('s'), Left: 0, Port: 5001, NumWant: -1, Event: tracker.Started}
			resp := httpc.announce(seeder)
			if resp.Seeders != 1 || resp.Leechers != 0 {
				t.Errorf("first seeder sees %d seeders, %d leechers; want 1, 0 (counts include the announcer)", resp.Seeders, resp.Leechers)
			}
			if len(resp.Peers) != 0 {
				t.Errorf("first seeder got peers %v, want none (never itself)", resp.Peers)
			}

			leecher := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('l'), Left: 1000, Port: 5002, NumWant: 50, Event: tracker.Started}
			var lresp tracker.AnnounceResponse
			eventually.True(t, 5*time.Second, "leecher sees the seeder", func() bool {
				lresp = udpc.announce(leecher)
				return hasPeer(lresp, 5001)
			})
			if lresp.Seeders != 1 || lresp.Leechers != 1 {
				t.Errorf("leecher sees %d seeders, %d leechers; want 1, 1", lresp.Seeders, lresp.Leechers)
			}
			for _, p := range lresp.Peers {
				addr, _ := p.ToNetipAddrPort()
				if addr.Addr().Unmap() != netip.MustParseAddr(host) {
					t.Errorf("peer %v is not of the announcer's family/address %s", p, host)
				}
			}
			eventually.True(t, 5*time.Second, "seeder sees the leecher", func() bool {
				return hasPeer(httpc.announce(seeder), 5002)
			})

			leecher.Event = tracker.Completed
			leecher.Left = 0
			udpc.announce(leecher)
			for _, c := range []*client{httpc, udpc} {
				eventually.True(t, 5*time.Second, c.url+" scrape shows the snatch", func() bool {
					s := c.scrape(ih, infohash.T{9})
					return len(s) == 2 && s[0].Seeders == 2 && s[0].Leechers == 0 && s[0].Completed == 1 &&
						s[1].Seeders == 0 && s[1].Completed == 0
				})
			}

			seeder.Event = tracker.Stopped
			httpc.announce(seeder)
			eventually.True(t, 5*time.Second, "stopped seeder leaves the swarm", func() bool {
				s := udpc.scrape(ih)
				return len(s) == 1 && s[0].Seeders == 1
			})
		})
	}
}

func TestNumWantIsCapped(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Tracker.DefaultNumWant = 3
		c.Tracker.MaxNumWant = 5
	})
	udpc := newClient(t, "udp://"+n.Addrs().UDP)
	ih := infohash.T{7}
	for i := range 10 {
		udpc.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID(byte('a' + i)), Left: 0, Port: uint16(6000 + i), NumWant: -1})
	}
	// Announces are stored after the reply: wait for all ten, or the cap
	// below could be measured on a swarm still smaller than it.
	eventually.True(t, 5*time.Second, "the ten seeders are stored", func() bool {
		s := udpc.scrape(ih)
		return len(s) == 1 && s[0].Seeders == 10
	})
	probe := tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('z'), Left: 10, Port: 7000, NumWant: -1}
	eventually.True(t, 5*time.Second, "default numwant applies", func() bool { return len(udpc.announce(probe).Peers) == 3 })
	probe.NumWant = 1000
	if got := len(udpc.announce(probe).Peers); got != 5 {
		t.Errorf("numwant 1000 returned %d peers, want the cap of 5", got)
	}
}

func TestOpsEndpoints(t *testing.T) {
	n := startNode(t, "127.0.0.1", nil)
	udpc := newClient(t, "udp://"+n.Addrs().UDP)
	udpc.announce(tracker.AnnounceRequest{InfoHash: infohash.T{5}, PeerId: peerID('m'), Port: 1234, NumWant: -1})
	base := "http://" + n.Addrs().Metrics
	get := func(path string) (int, string) { return httpGet(t, base+path) }
	for _, path := range []string{"/healthz", "/readyz"} { // pprof: TestOpsListenerDefaults
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", path, code)
		}
	}
	eventually.True(t, 5*time.Second, "metrics show the announce and the stored peer", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `karuta_frontend_requests_total{action="announce",frontend="udp",result="ok"} 1`) &&
			strings.Contains(body, `karuta_store_swarms 1`) &&
			strings.Contains(body, "karuta_hooks_post_queue_depth") &&
			strings.Contains(body, `karuta_build_info{version="test"} 1`) &&
			strings.Contains(body, "karuta_ready 1")
	})
}

func TestReloadAppliesAnnouncePolicy(t *testing.T) {
	n := startNode(t, "127.0.0.1", nil)
	cfg := n.Config()
	cfg.Tracker.AnnounceInterval = 20 * time.Minute
	cfg.Frontends.HTTP.IdleTimeout = time.Hour // needs a restart: kept as it was
	if err := n.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	udpc := newClient(t, "udp://"+n.Addrs().UDP)
	resp := udpc.announce(tracker.AnnounceRequest{InfoHash: infohash.T{6}, PeerId: peerID('r'), Port: 1, NumWant: -1})
	if resp.Interval != 1200 {
		t.Errorf("interval after reload = %d, want 1200", resp.Interval)
	}
	if got := n.Config().Frontends.HTTP.IdleTimeout; got == time.Hour {
		t.Error("a restart-only change was recorded as applied")
	}
}

func TestShutdownAppliesQueuedAnnounces(t *testing.T) {
	n := startNode(t, "127.0.0.1", nil)
	udpc := newClient(t, "udp://"+n.Addrs().UDP)
	for i := range 50 {
		udpc.announce(tracker.AnnounceRequest{InfoHash: infohash.T{8}, PeerId: peerID(byte(i)), Left: 100, Port: uint16(1000 + i), NumWant: -1})
	}
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n.store.Counts([20]byte{8}); got.Leechers != 50 {
		t.Errorf("after shutdown the store holds %d leechers, want all 50 answered announces", got.Leechers)
	}
}

// TestScrapeOfAFullPacket scrapes 74 infohashes at once, the most that
// BEP 15 fits in one standard UDP packet, and the default limit's 100 over
// HTTP, and checks every entry is answered in order with its counts.
func TestScrapeOfAFullPacket(t *testing.T) {
	n := startNode(t, "127.0.0.1", nil)
	a := n.Addrs()
	for _, tc := range []struct {
		url    string
		hashes int
	}{
		{"udp://" + a.UDP, 74},
		{"http://" + a.HTTP + "/announce", n.Config().Tracker.MaxScrapeHashes},
	} {
		t.Run(tc.url, func(t *testing.T) {
			c := newClient(t, tc.url)
			ihs := make([]infohash.T, tc.hashes)
			for i := range ihs {
				ihs[i] = infohash.T{0xfa, byte(tc.hashes), byte(i)}
			}
			// Every third swarm gets a seeder, so counts tell entries apart.
			for i := 0; i < len(ihs); i += 3 {
				c.announce(tracker.AnnounceRequest{InfoHash: ihs[i], PeerId: peerID('f'), Port: uint16(7000 + i), NumWant: -1})
			}
			eventually.True(t, 10*time.Second, "the scrape answers every infohash with its counts", func() bool {
				s := c.scrape(ihs...)
				if len(s) != len(ihs) {
					t.Fatalf("scrape of %d infohashes answered %d entries", len(ihs), len(s))
				}
				for i, e := range s {
					want := int32(0)
					if i%3 == 0 {
						want = 1
					}
					if e.Seeders != want {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestFullScrapeSingleNode enables full scrapes and checks GET /scrape
// lists every swarm once with its counts, plain and gzipped, and that the
// rate limit refuses a second one at once.
func TestFullScrapeSingleNode(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) { c.Frontends.HTTP.FullScrape = true; c.Frontends.HTTP.FullScrapeInterval = time.Second })
	udpc := newClient(t, "udp://"+n.Addrs().UDP)
	want := announceForFullScrape(t, []*client{udpc}, 40)
	eventually.True(t, 10*time.Second, "the announces are applied", func() bool { return n.store.Stats().Swarms == len(want) })
	checkFullScrape(t, "http://"+n.Addrs().HTTP+"/scrape", want)
}

// TestNewUndoesPartialBuild fails New late, at the HTTP frontend's missing
// certificate, after the store, a watching hook and the hook chain have
// started goroutines: its one cleanup path must stop them all.
func TestNewUndoesPartialBuild(t *testing.T) {
	list := filepath.Join(t.TempDir(), "banned.txt")
	if err := os.WriteFile(list, []byte(strings.Repeat("ab", 20)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Default()
	cfg.Node.Name = "partial"
	cfg.Hooks = approvalHooks(t, "hooks: [{name: torrent_approval, options: {mode: deny, file: "+list+", check_interval: 10ms}}]")
	cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr, cfg.Metrics.Addr = "127.0.0.1:0", "127.0.0.1:0", ""
	missing := filepath.Join(t.TempDir(), "missing.pem")
	cfg.Frontends.HTTP.TLSCert, cfg.Frontends.HTTP.TLSKey = missing, missing

	before := runtime.NumGoroutine()
	n, err := New(cfg, Options{Log: zaptest.NewLogger(t), Version: "test"})
	if err == nil {
		_ = n.Shutdown(context.Background())
		t.Fatal("New succeeded with a missing certificate")
	}
	if !strings.Contains(err.Error(), "tls_cert") {
		t.Errorf("New = %v, want an error naming tls_cert", err)
	}
	eventually.NoError(t, 5*time.Second, "New's goroutines end with it", func() error {
		if now := runtime.NumGoroutine(); now > before {
			return fmt.Errorf("%d goroutines, %d before New", now, before)
		}
		return nil
	})
}
