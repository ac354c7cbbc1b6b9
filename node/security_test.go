package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/node/cluster/transport"
)

// TestClusterNeedsKeysOrInsecure reproduces finding 2 of issue 11: a
// cluster configured without secret_keys used to start, silently taking
// writes from anyone. Now the config is refused, naming the key and what
// is allowed, unless cluster.insecure asks for it.
func TestClusterNeedsKeysOrInsecure(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"single node", "cluster: {}\n", false},
		{"bind without keys", `cluster: {bind: "127.0.0.1:7946"}` + "\n", true},
		{"join without keys", `cluster: {join: ["a:7946"]}` + "\n", true},
		{"bind with keys", `cluster: {bind: "127.0.0.1:7946", secret_keys: ["` + testClusterKey + `"]}` + "\n", false},
		{"bind without keys, insecure on purpose", `cluster: {bind: "127.0.0.1:7946", insecure: true}` + "\n", false},
		{"bind with certificates, no keys", `cluster: {bind: "127.0.0.1:7946", tls: {ca_file: ca.pem, cert_file: n1.pem, key_file: n1-key.pem}}` + "\n", false},
		{"bind with half the certificate files", `cluster: {bind: "127.0.0.1:7946", tls: {ca_file: ca.pem}}` + "\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Parse accepted a cluster without secret_keys or insecure")
			}
			if strings.Contains(tt.in, "tls:") {
				if !strings.Contains(err.Error(), "cluster.tls.cert_file") {
					t.Errorf("error %q does not name cluster.tls.cert_file", err)
				}
				return
			}
			for _, w := range []string{"cluster.secret_keys: empty", "cluster.insecure: true", "16, 24 or 32 bytes"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestInsecureWarnsAtStart checks that every start of a node that gives up
// a secure default says so in a warning.
func TestInsecureWarnsAtStart(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the warnings expected; none for a secure config
	}{
		{"defaults", nil, nil},
		{"insecure cluster", func(c *Config) {
			c.Cluster.Bind, c.Cluster.DataBind, c.Cluster.Profile, c.Cluster.Insecure = "127.0.0.1:0", "127.0.0.1:0", "local", true
		}, []string{"cluster.insecure is true"}},
		{"keys make insecure moot", func(c *Config) {
			c.Cluster.Bind, c.Cluster.DataBind, c.Cluster.Profile, c.Cluster.Insecure = "127.0.0.1:0", "127.0.0.1:0", "local", true
			c.Cluster.SecretKeys = []string{testClusterKey}
		}, nil},
		{"certificates without keys", func(c *Config) {
			c.Cluster.Bind, c.Cluster.DataBind, c.Cluster.Profile = "127.0.0.1:0", "127.0.0.1:0", "local"
			c.Cluster.TLS = clusterPKI(t, t.TempDir(), "warn")["warn"]
		}, []string{"gossip is plain"}},
		{"metrics on every interface", func(c *Config) { c.Metrics.Addr = ":0" }, []string{"metrics.addr is reachable from other hosts: /metrics"}},
		{"pprof on every interface", func(c *Config) { c.Metrics.Addr, c.Metrics.Pprof = "0.0.0.0:0", true }, []string{"metrics.pprof is true"}},
		{"pprof on loopback", func(c *Config) { c.Metrics.Addr, c.Metrics.Pprof = "[::1]:0", true }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for start := range 2 { // every start, not only the first
				cfg := Default()
				cfg.Node.Name = "warn"
				cfg.Frontends.HTTP.Addr, cfg.Frontends.UDP.Addr = "127.0.0.1:0", ""
				cfg.Metrics.Addr = "127.0.0.1:0"
				if tt.mutate != nil {
					tt.mutate(&cfg)
				}
				core, logs := observer.New(zap.WarnLevel)
				n, err := New(cfg, Options{Log: zap.New(core)})
				if err != nil {
					t.Fatal(err)
				}
				if err := n.Start(); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := n.Shutdown(ctx); err != nil {
					t.Error(err)
				}
				cancel()
				var warned []string
				for _, e := range logs.All() {
					if strings.Contains(e.Message, "insecure") || strings.Contains(e.Message, "metrics.") || strings.Contains(e.Message, "gossip is plain") {
						warned = append(warned, e.Message)
					}
				}
				if len(warned) != len(tt.want) {
					t.Errorf("start %d: warnings %q, want %d matching %q", start, warned, len(tt.want), tt.want)
					continue
				}
				for i, w := range tt.want {
					if !strings.Contains(warned[i], w) {
						t.Errorf("start %d: warning %q does not contain %q", start, warned[i], w)
					}
				}
			}
		})
	}
}

// TestOpsListenerDefaults reproduces finding 5 of issue 11: pprof was
// served by default, and the operations listener listened on every
// interface with no write timeout.
func TestOpsListenerDefaults(t *testing.T) {
	if got := Default().Metrics; got.Addr != "127.0.0.1:6880" || got.Pprof {
		t.Errorf("default metrics = %+v, want loopback 127.0.0.1:6880 without pprof", got)
	}
	for _, pprofOn := range []bool{false, true} {
		n := startNode(t, "127.0.0.1", func(c *Config) { c.Metrics.Pprof = pprofOn })
		base := "http://" + n.Addrs().Metrics
		want := http.StatusNotFound
		if pprofOn {
			want = http.StatusOK
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline"} {
			if code, _ := httpGet(t, base+path); code != want {
				t.Errorf("pprof %v: GET %s = %d, want %d", pprofOn, path, code, want)
			}
		}
		if code, body := httpGet(t, base+"/readyz"); code != http.StatusOK || body != "ready\n" {
			t.Errorf("GET /readyz = %d %q", code, body)
		}
		if n.ops.ReadTimeout <= 0 || n.ops.WriteTimeout <= 0 || n.ops.IdleTimeout <= 0 || n.ops.ReadHeaderTimeout <= 0 {
			t.Errorf("ops server timeouts read %s, header %s, write %s, idle %s; want all set",
				n.ops.ReadTimeout, n.ops.ReadHeaderTimeout, n.ops.WriteTimeout, n.ops.IdleTimeout)
		}
		// A default 30 s CPU profile must fit in the write timeout.
		if pprofOn && n.ops.WriteTimeout <= 30*time.Second {
			t.Errorf("write timeout %s with pprof; want more than a 30 s profile", n.ops.WriteTimeout)
		}
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:6880": true, "127.9.9.9:1": true, "[::1]:6880": true, "localhost:6880": true,
		"[::ffff:127.0.0.1]:1": true,
		":6880":                false, "0.0.0.0:6880": false, "[::]:6880": false, "10.0.0.1:6880": false,
		"metrics.example:6880": false, "nonsense": false,
	} {
		if got := loopbackAddr(addr); got != want {
			t.Errorf("loopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestOpsAnswersAtHTTPCap reproduces the second half of finding 4 of issue
// 11: with the tracker's HTTP connections at their cap, the operations
// listener still answers /healthz and /readyz, and the next tracker
// connection is refused and counted.
func TestOpsAnswersAtHTTPCap(t *testing.T) {
	const capacity = 8
	n := startNode(t, "127.0.0.1", func(c *Config) {
		c.Frontends.HTTP.MaxConnections, c.Frontends.HTTP.MaxConnectionsPerIP = capacity, capacity
		c.Frontends.HTTP.ReadTimeout = time.Minute // the idle connections stay for the whole test
	})
	for range capacity {
		c, err := net.DialTimeout("tcp", n.Addrs().HTTP, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	eventually.True(t, 5*time.Second, "the HTTP frontend holds its cap of idle connections", func() bool {
		return gaugeValue(t, n, "karuta_frontend_connections") == capacity
	})
	over, err := net.DialTimeout("tcp", n.Addrs().HTTP, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	_ = over.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := over.Read(make([]byte, 1)); err == nil {
		t.Error("a connection over the cap was not closed")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := httpGet(t, "http://"+n.Addrs().Metrics+path); code != http.StatusOK {
			t.Errorf("GET %s at the HTTP cap = %d, want 200", path, code)
		}
	}
	eventually.True(t, 5*time.Second, "the refusal is counted", func() bool {
		return gaugeValue(t, n, "karuta_frontend_connections_refused_total") == 1
	})
}

// gaugeValue sums the samples of the named metric in n's registry.
func gaugeValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestSnatchesCountOncePerPeer reproduces finding 8 of issue 11 end to
// end: a peer announcing `completed` 50 times showed downloaded 50, and a
// forward retried after a lost acknowledgement could count twice.
func TestSnatchesCountOncePerPeer(t *testing.T) {
	t.Run("repeated completed", func(t *testing.T) {
		n := startNode(t, "127.0.0.1", nil)
		c := newClient(t, "udp://"+n.Addrs().UDP)
		ih := infohash.T{0x5a}
		for range 50 {
			c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('c'), Port: 6100, NumWant: -1, Event: tracker.Completed})
		}
		// Announces are applied in order after their answers: once a
		// later one shows, the 50 completes are applied.
		c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('d'), Left: 1, Port: 6101, NumWant: -1, Event: tracker.Started})
		eventually.True(t, 5*time.Second, "the last announce is applied", func() bool {
			r := c.scrape(ih)
			return len(r) == 1 && r[0].Leechers == 1
		})
		if r := c.scrape(ih); r[0].Completed != 1 || r[0].Seeders != 1 {
			t.Errorf("after 50 completes by one peer: downloaded %d, seeders %d; want 1 and 1", r[0].Completed, r[0].Seeders)
		}
	})
	t.Run("forward applied twice", func(t *testing.T) {
		nodes := startConverged(t, "r1", "r2")
		ih := bittorrent.InfoHash{0x5b}
		batch := &transport.ApplyRequest{Changes: []bittorrent.Change{
			{InfoHash: ih, Op: bittorrent.OpPut, Peer: bittorrent.Peer{ID: peerID('e'), Addr: netip.MustParseAddrPort("127.0.0.1:6200")}},
			{InfoHash: ih, Op: bittorrent.OpComplete, Seeder: true, Peer: bittorrent.Peer{ID: peerID('e'), Addr: netip.MustParseAddrPort("127.0.0.1:6200")}},
		}}
		for attempt := range 2 { // the second is the retry after a lost ack
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := nodes[1].cl.tr.Call(ctx, nodes[0].Addrs().Data, batch)
			cancel()
			if err != nil {
				t.Fatalf("apply attempt %d: %v", attempt, err)
			}
		}
		if got := nodes[0].store.Counts(ih); got.Snatches != 1 || got.Seeders != 1 {
			t.Errorf("after a batch applied twice: counts %+v; want 1 seeder, 1 snatch", got)
		}
	})
}
