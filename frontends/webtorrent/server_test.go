package webtorrent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
	"github.com/karuta-tracker/karuta/store"
)

// testTracker is a frontend over a real hook chain and in-memory store.
type testTracker struct {
	s     *Server
	store *store.Memory
	chain *hooks.Chain
	reg   *prometheus.Registry
	url   string
}

// goroutineMode makes the test trackers read every socket on a goroutine
// of its own, as for wss://; TestGoroutineMode reruns tests so.
var goroutineMode bool

func newTestTracker(t *testing.T, edit func(*Config)) *testTracker {
	t.Helper()
	reg := prometheus.NewRegistry()
	st, err := store.NewMemory(store.DefaultConfig(), reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	chain, err := hooks.New(hooks.DefaultConfig(), []hooks.PreHook{hooks.NewResponder(st)}, []hooks.PostHook{hooks.NewSwarmWriter(st)}, reg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	fm, err := frontends.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	wm, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, chain, NewLocalRelay(), fm.ForConnections("webtorrent"), wm, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.noPoll = goroutineMode
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		_ = chain.Close(ctx)
	})
	return &testTracker{s: s, store: st, chain: chain, reg: reg, url: "ws://" + s.Addr()}
}

// counter reads one series of the tracker's registry.
func (tt *testTracker) counter(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := tt.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// client is a WebSocket client speaking the protocol by hand.
type client struct {
	t  *testing.T
	nc net.Conn
	rw io.ReadWriter
}

type readWriter struct {
	io.Reader
	io.Writer
}

func dial(t *testing.T, url string) *client {
	t.Helper()
	nc, br, _, err := ws.Dial(t.Context(), url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	var r io.Reader = nc
	if br != nil {
		r = io.MultiReader(br, nc)
	}
	return &client{t: t, nc: nc, rw: readWriter{r, nc}}
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := wsutil.WriteClientText(c.nc, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv reads the next message as a map.
func (c *client) recv() map[string]any {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := wsutil.ReadServerText(c.rw)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("recv %q: %v", b, err)
	}
	return m
}

// closed reports whether the server closed the socket (reading until it
// does, for at most d).
func (c *client) closed(d time.Duration) bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	for {
		if _, err := wsutil.ReadServerText(c.rw); err != nil {
			var ne net.Error
			return !errors.As(err, &ne) || !ne.Timeout()
		}
	}
}

// bin is a 20-byte binary string made of one repeated character.
func bin(c byte) string { return string(rune(c)) + strings.Repeat("x", 19) }

func announce(ih, peer string, left int, offers ...map[string]any) map[string]any {
	m := map[string]any{"action": "announce", "info_hash": ih, "peer_id": peer, "left": left, "numwant": len(offers)}
	if offers != nil {
		m["offers"] = offers
	}
	return m
}

func offerOf(id string) map[string]any {
	return map[string]any{"offer_id": id, "offer": map[string]any{"type": "offer", "sdp": "v=0 " + id}}
}

func TestAnnounceOfferAnswer(t *testing.T) {
	tt := newTestTracker(t, nil)
	ih := "\u0000\u0001\u007f\u00ff\u00e9" + strings.Repeat("h", 15)
	a, b := dial(t, tt.url+"/announce"), dial(t, tt.url+"/")

	a.send(announce(ih, bin('a'), 0, offerOf("a1")))
	r := a.recv()
	if r["info_hash"] != ih || r["complete"] != 1.0 || r["incomplete"] != 0.0 || r["interval"] != 1800.0 {
		t.Fatalf("first announce answered %v", r)
	}
	eventually.True(t, 5*time.Second, "the seeder is stored", func() bool { return tt.store.Counts(toIH(ih)).Seeders == 1 })

	b.send(announce(ih, bin('b'), 100, offerOf("b1"), offerOf("b2")))
	if r := b.recv(); r["complete"] != 1.0 || r["incomplete"] != 1.0 {
		t.Fatalf("second announce answered %v", r)
	}
	o := a.recv()
	if o["peer_id"] != bin('b') || o["offer_id"] != "b1" || o["info_hash"] != ih {
		t.Fatalf("seeder was sent %v; want b's offer b1", o)
	}
	if sdp := o["offer"].(map[string]any)["sdp"]; sdp != "v=0 b1" {
		t.Errorf("offer sdp %v", sdp)
	}

	answer := map[string]any{
		"action": "announce", "info_hash": ih, "peer_id": bin('a'), "to_peer_id": bin('b'),
		"offer_id": "b1", "answer": map[string]any{"type": "answer", "sdp": "v=0 a"},
	}
	a.send(answer)
	got := b.recv()
	if got["peer_id"] != bin('a') || got["offer_id"] != "b1" || got["answer"].(map[string]any)["sdp"] != "v=0 a" {
		t.Fatalf("leecher was sent %v; want a's answer to b1", got)
	}
	// The offer is answered: a second answer is not relayed.
	a.send(answer)
	eventually.True(t, 5*time.Second, "the repeated answer is refused", func() bool {
		return tt.counter(t, "karuta_webtorrent_signals_total", "kind", "answer", "result", "no_offer") == 1
	})
	if v := tt.counter(t, "karuta_webtorrent_signals_total", "kind", "offer", "result", "delivered"); v != 1 {
		t.Errorf("offers delivered = %v; want 1 (one peer to offer to)", v)
	}

	// Stopped takes the peer out of the swarm; closing the socket takes
	// the other.
	b.send(map[string]any{"action": "announce", "info_hash": ih, "peer_id": bin('b'), "event": "stopped", "left": 100})
	if r := b.recv(); r["incomplete"] != 0.0 {
		t.Errorf("stopped answered %v", r)
	}
	_ = a.nc.Close()
	eventually.True(t, 5*time.Second, "both peers leave the swarm", func() bool {
		c := tt.store.Counts(toIH(ih))
		return c.Seeders == 0 && c.Leechers == 0
	})
}

func toIH(s string) bittorrent.InfoHash {
	var ih bittorrent.InfoHash
	decodeBinary(s, ih[:])
	return ih
}

// HTTP and UDP peers count in the swarm but are never offered to, and
// never see WebSocket peers.
func TestWebRTCAndHostPeersApart(t *testing.T) {
	tt := newTestTracker(t, nil)
	ih := bin('s')
	hostPeer := bittorrent.AnnounceRequest{InfoHash: toIH(ih), Addr: netip.MustParseAddrPort("192.0.2.1:6881"), Left: 0}
	tt.chain.AfterAnnounce(&hostPeer)
	eventually.True(t, 5*time.Second, "host peer stored", func() bool { return tt.store.Counts(toIH(ih)).Seeders == 1 })

	a := dial(t, tt.url)
	a.send(announce(ih, bin('a'), 5, offerOf("o1")))
	if r := a.recv(); r["complete"] != 1.0 || r["incomplete"] != 1.0 {
		t.Fatalf("answered %v; want the host seeder counted", r)
	}
	eventually.True(t, 5*time.Second, "WebRTC peer stored", func() bool { return tt.store.Counts(toIH(ih)).Leechers == 1 })
	if v := tt.counter(t, "karuta_webtorrent_signals_total", "kind", "offer", "result", "delivered"); v != 0 {
		t.Errorf("an offer was delivered with no WebRTC peer to take it")
	}
	var resp bittorrent.AnnounceResponse
	req := bittorrent.AnnounceRequest{InfoHash: toIH(ih), Addr: netip.MustParseAddrPort("192.0.2.2:6881"), NumWant: 50, NumWantSet: true, Left: 1}
	if err := tt.chain.Announce(t.Context(), &req, &resp); err != nil {
		t.Fatal(err)
	}
	for _, p := range resp.Peers {
		if bittorrent.IsWebRTC(p.Addr) {
			t.Errorf("an HTTP/UDP announce was given WebRTC peer %v", p.Addr)
		}
	}
}

func TestScrape(t *testing.T) {
	tt := newTestTracker(t, nil)
	a := dial(t, tt.url)
	ih1, ih2 := bin('1'), bin('2')
	a.send(announce(ih1, bin('a'), 0))
	a.recv()
	eventually.True(t, 5*time.Second, "peer stored", func() bool { return tt.store.Counts(toIH(ih1)).Seeders == 1 })
	a.send(map[string]any{"action": "scrape", "info_hash": ih1})
	files := a.recv()["files"].(map[string]any)
	if f := files[ih1].(map[string]any); f["complete"] != 1.0 || f["incomplete"] != 0.0 || f["downloaded"] != 0.0 {
		t.Errorf("scrape of one: %v", files)
	}
	a.send(map[string]any{"action": "scrape", "info_hash": []string{ih1, ih2}})
	if files := a.recv()["files"].(map[string]any); len(files) != 2 || files[ih2].(map[string]any)["complete"] != 0.0 {
		t.Errorf("scrape of two: %v", files)
	}
	a.send(map[string]any{"action": "scrape"})
	if r := a.recv(); !strings.HasPrefix(fmt.Sprint(r["failure reason"]), "full scrape is disabled") {
		t.Errorf("full scrape with full_scrape off: %v", r)
	}
}

func TestFullScrape(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.FullScrape = true })
	a := dial(t, tt.url)
	a.send(announce(bin('1'), bin('a'), 0))
	a.recv()
	eventually.True(t, 5*time.Second, "peer stored", func() bool { return tt.store.Counts(toIH(bin('1'))).Seeders == 1 })
	a.send(map[string]any{"action": "scrape"})
	if files := a.recv()["files"].(map[string]any); len(files) != 1 {
		t.Errorf("full scrape: %v", files)
	}
	a.send(map[string]any{"action": "scrape"})
	if r := a.recv(); !strings.Contains(fmt.Sprint(r["failure reason"]), "rate limit") {
		t.Errorf("second full scrape at once: %v", r)
	}
}

func TestFailureReasons(t *testing.T) {
	tt := newTestTracker(t, nil)
	a := dial(t, tt.url)
	for _, tc := range []struct {
		msg  any
		want string
	}{
		{"not an object", "not a JSON object"},
		{map[string]any{"action": "dance"}, "action must be"},
		{map[string]any{"action": "announce", "info_hash": "short", "peer_id": bin('a')}, "info_hash"},
		{map[string]any{"action": "announce", "info_hash": "\u0100" + strings.Repeat("x", 19), "peer_id": bin('a')}, "info_hash"},
		{map[string]any{"action": "announce", "info_hash": bin('1')}, "peer_id"},
		{map[string]any{"action": "announce", "info_hash": bin('1'), "peer_id": bin('a'), "event": "bogus"}, "event"},
		{map[string]any{"action": "announce", "info_hash": bin('1'), "peer_id": bin('a'), "offers": []any{map[string]any{"offer_id": "x"}}}, "offer"},
		{map[string]any{"action": "announce", "info_hash": bin('1'), "peer_id": bin('a'), "answer": map[string]any{}}, "answer"},
		{map[string]any{"action": "scrape", "info_hash": 7}, "info_hash"},
	} {
		a.send(tc.msg)
		r := a.recv()
		if !strings.Contains(fmt.Sprint(r["failure reason"]), tc.want) {
			t.Errorf("%v answered %v; want a failure reason about %s", tc.msg, r, tc.want)
		}
	}
	// None of it closed the socket.
	a.send(announce(bin('1'), bin('a'), 0))
	if r := a.recv(); r["complete"] != 1.0 {
		t.Errorf("announce after the bad ones: %v", r)
	}
}

func TestRoutesCarryParams(t *testing.T) {
	var got bittorrent.Params
	tt := newTestTracker(t, func(c *Config) { c.Routes = []string{"/{passkey}/announce"} })
	tt.s.t = paramTracker{Tracker: tt.chain, got: &got}
	a := dial(t, tt.url+"/s%20cret/announce?jwt=tok")
	a.send(announce(bin('1'), bin('a'), 0))
	a.recv()
	if v, _ := got.Get("passkey"); v != "s cret" {
		t.Errorf("passkey = %q", v)
	}
	if v, _ := got.Get("jwt"); v != "tok" {
		t.Errorf("jwt = %q", v)
	}
	if _, _, _, err := ws.Dial(t.Context(), tt.url+"/announce"); err == nil {
		t.Error("a path matching no route was upgraded")
	}
	eventually.True(t, 5*time.Second, "refused upgrade counted", func() bool {
		return tt.counter(t, "karuta_webtorrent_handshakes_total", "result", "no_route") == 1
	})
}

type paramTracker struct {
	hooks.Tracker
	got *bittorrent.Params
}

func (p paramTracker) Announce(ctx context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	*p.got = req.Params
	p.got.Route = append([]bittorrent.Param(nil), req.Params.Route...)
	return p.Tracker.Announce(ctx, req, resp)
}

// Limits: each abuse is refused and counted.

func TestLimitConnections(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.MaxConnections = 3; c.MaxConnectionsPerIP = 2 })
	dial(t, tt.url)
	dial(t, tt.url)
	// A third from the same address is over the per-IP cap.
	nc, _, _, err := ws.Dial(t.Context(), tt.url)
	if err == nil {
		_ = nc.Close()
		t.Error("a third socket from one IP was accepted")
	}
	// Another address gets the last of the total, then no more.
	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 3, 1)}
		return nd.DialContext(ctx, network, addr)
	}}
	if nc, _, _, err := d.Dial(t.Context(), tt.url); err != nil {
		t.Fatalf("a socket from a second IP: %v", err)
	} else {
		t.Cleanup(func() { _ = nc.Close() })
	}
	d2 := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 3, 2)}
		return nd.DialContext(ctx, network, addr)
	}}
	if nc, _, _, err := d2.Dial(t.Context(), tt.url); err == nil {
		_ = nc.Close()
		t.Error("a socket over max_connections was accepted")
	}
	eventually.True(t, 5*time.Second, "refusals counted", func() bool {
		return tt.counter(t, "karuta_frontend_connections_refused_total", "frontend", "webtorrent", "reason", frontends.RefusedMaxConnectionsPerIP) == 1 &&
			tt.counter(t, "karuta_frontend_connections_refused_total", "frontend", "webtorrent", "reason", frontends.RefusedMaxConnections) == 1
	})
}

func TestLimitHalfOpen(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	nc, err := net.Dial("tcp", tt.s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _ = nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // and never the rest
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatalf("the half-open socket was not closed: %v", err)
	}
	eventually.True(t, 5*time.Second, "timeout counted", func() bool {
		return tt.counter(t, "karuta_webtorrent_handshakes_total", "result", "timeout") == 1 && tt.s.ConnCount() == 0
	})
}

func TestLimitMessageSize(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.MaxMessageBytes = 1024 })
	a := dial(t, tt.url)
	a.send(map[string]any{"action": "announce", "pad": strings.Repeat("x", 2000)})
	if !a.closed(5 * time.Second) {
		t.Fatal("socket sending an oversized message stays open")
	}
	eventually.True(t, 5*time.Second, "counted", func() bool {
		return tt.counter(t, "karuta_webtorrent_limited_total", "limit", "message_size") == 1
	})
	// Fragments count together.
	b := dial(t, tt.url)
	for range 3 {
		_ = ws.WriteFrame(b.nc, ws.MaskFrame(ws.NewFrame(ws.OpText, false, make([]byte, 500))))
	}
	if !b.closed(5 * time.Second) {
		t.Fatal("socket sending an oversized fragmented message stays open")
	}
}

func TestLimitMessageRate(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.MessagesPerSecond = 1; c.MessageBurst = 5 })
	a := dial(t, tt.url)
	for range 20 {
		b, _ := json.Marshal(map[string]any{"action": "scrape", "info_hash": bin('1')})
		if err := wsutil.WriteClientText(a.nc, b); err != nil {
			break
		}
	}
	if !a.closed(5 * time.Second) {
		t.Fatal("socket over messages_per_second stays open")
	}
	eventually.True(t, 5*time.Second, "counted", func() bool {
		return tt.counter(t, "karuta_webtorrent_limited_total", "limit", "message_rate") == 1
	})
}

func TestLimitIdle(t *testing.T) {
	// A second gives a loaded machine room to answer pings.
	tt := newTestTracker(t, func(c *Config) { c.IdleTimeout = time.Second })
	// A client that answers pings (as browsers do) stays.
	live := dial(t, tt.url)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_ = live.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := wsutil.ReadServerData(live.rw); err != nil { // answers pings
				return
			}
		}
	}()
	// A raw TCP client that upgrades and then says nothing is closed.
	mute := dial(t, tt.url)
	_ = mute.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	sawPing := false
	for {
		h, err := ws.ReadHeader(mute.rw)
		if err != nil {
			break
		}
		if h.OpCode == ws.OpPing {
			sawPing = true
		}
		_, _ = io.CopyN(io.Discard, mute.rw, h.Length)
	}
	if !sawPing {
		t.Error("the idle socket was not pinged before being closed")
	}
	eventually.True(t, 5*time.Second, "idle close counted", func() bool {
		return tt.counter(t, "karuta_webtorrent_sockets_closed_total", "reason", closeIdle) == 1
	})
	select {
	case <-done:
		t.Error("the socket answering pings was closed")
	default:
	}
}

// A socket that never reads is closed once its queue fills, not buffered
// without bound.
func TestLimitSlowReader(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) {
		c.SendQueue = 4
		c.MessagesPerSecond, c.MessageBurst = 1e5, 10000
		c.MaxOutstandingOffers = 10000
		c.WriteTimeout = time.Second
	})
	ih := bin('z')
	victim := dial(t, tt.url)
	victim.send(announce(ih, bin('v'), 0))
	victim.recv()
	eventually.True(t, 5*time.Second, "victim stored", func() bool { return tt.store.Counts(toIH(ih)).Seeders == 1 })
	// The victim stops reading; another peer sends it large offers.
	sender := dial(t, tt.url)
	sdp := strings.Repeat("s", 30000)
	go func() {
		for i := range 2000 {
			b, _ := json.Marshal(announce(ih, bin('w'), 1, map[string]any{"offer_id": fmt.Sprint(i), "offer": map[string]any{"sdp": sdp}}))
			if wsutil.WriteClientText(sender.nc, b) != nil {
				return
			}
			_, _ = wsutil.ReadServerText(sender.rw)
		}
	}()
	eventually.True(t, 20*time.Second, "slow reader closed", func() bool {
		return tt.counter(t, "karuta_webtorrent_limited_total", "limit", "slow_reader")+
			tt.counter(t, "karuta_webtorrent_limited_total", "limit", "write_timeout") >= 1
	})
	eventually.True(t, 5*time.Second, "the victim's peer left the swarm", func() bool { return tt.store.Counts(toIH(ih)).Seeders == 0 })
}

func TestLimitOffers(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.MaxOffers = 2; c.MaxOutstandingOffers = 3 })
	ih := bin('o')
	for i := range 4 {
		p := dial(t, tt.url)
		p.send(announce(ih, bin(byte('p'+i)), 0))
		p.recv()
	}
	eventually.True(t, 5*time.Second, "four peers", func() bool { return tt.store.Counts(toIH(ih)).Seeders == 4 })
	a := dial(t, tt.url)
	a.send(announce(ih, bin('a'), 1, offerOf("1"), offerOf("2"), offerOf("3")))
	a.recv()
	a.send(announce(ih, bin('a'), 1, offerOf("4"), offerOf("5")))
	a.recv()
	eventually.True(t, 5*time.Second, "offers over the caps counted", func() bool {
		// 3 offers, max 2: 1 over max_offers. Then 2 more with 2
		// outstanding and a cap of 3: 1 over the cap.
		return tt.counter(t, "karuta_webtorrent_signals_total", "kind", "offer", "result", "over_max_offers") == 1 &&
			tt.counter(t, "karuta_webtorrent_signals_total", "kind", "offer", "result", "over_outstanding") == 1 &&
			tt.counter(t, "karuta_webtorrent_signals_total", "kind", "offer", "result", "delivered") == 3
	})
}

func TestLimitSwarmsPerSocket(t *testing.T) {
	tt := newTestTracker(t, func(c *Config) { c.MaxSwarmsPerConnection = 2 })
	a := dial(t, tt.url)
	for i := range 3 {
		a.send(announce(bin(byte('1'+i)), bin('a'), 0))
		r := a.recv()
		if (i < 2) != (r["failure reason"] == nil) {
			t.Errorf("announce %d answered %v", i, r)
		}
	}
	if v := tt.counter(t, "karuta_webtorrent_limited_total", "limit", "max_swarms"); v != 1 {
		t.Errorf("max_swarms counted %v", v)
	}
}

// Offers expire: an answer after offer_timeout is not relayed. Time is
// passed in, so no clock is waited for.
func TestOfferExpiry(t *testing.T) {
	m, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	s := &Server{cfg: cfg, m: m.m, conns: map[uint32]*conn{}, perIP: map[netip.Addr]int{}}
	ih := toIH(bin('e'))
	// writing set: delivered messages stay queued, with no socket to flush to.
	offerer := &conn{s: s, writing: true, addr: bittorrent.WebRTCAddr(1, 1), swarms: []joined{{ih: ih, id: bittorrent.PeerID{'a'}}}}
	answerer := &conn{s: s, writing: true, addr: bittorrent.WebRTCAddr(1, 2), swarms: []joined{{ih: ih, id: bittorrent.PeerID{'b'}}}}
	t0 := time.Unix(1000, 0)
	offer := bittorrent.Signal{Kind: bittorrent.SignalOffer, InfoHash: ih, From: offerer.addr, FromID: bittorrent.PeerID{'a'}, To: answerer.addr, ToID: bittorrent.PeerID{'b'}, OfferID: "o", SDP: []byte("{}")}
	if !offerer.expect(&offer, t0) {
		t.Fatal("expect refused the first offer")
	}
	if r := answerer.receive(&offer, t0.UnixNano()); r != "" {
		t.Fatalf("offer not delivered: %s", r)
	}
	answer := bittorrent.Signal{Kind: bittorrent.SignalAnswer, InfoHash: ih, From: answerer.addr, FromID: bittorrent.PeerID{'b'}, To: offerer.addr, ToID: bittorrent.PeerID{'a'}, OfferID: "o", SDP: []byte("{}")}
	late := t0.Add(cfg.OfferTimeout).UnixNano()
	if r := offerer.receive(&answer, late); r != "no_offer" {
		t.Errorf("answer at offer_timeout: %q; want no_offer", r)
	}
	if r := offerer.receive(&answer, late-1); r != "" {
		t.Errorf("answer just before offer_timeout: %q; want delivered", r)
	}
	if r := offerer.receive(&answer, late-1); r != "no_offer" {
		t.Errorf("second answer: %q; want no_offer", r)
	}
	if len(offerer.out) != 1 || len(answerer.out) != 1 {
		t.Errorf("queued %d messages to the offerer and %d to the answerer; want 1 each", len(offerer.out), len(answerer.out))
	}
	// A peer that changed its peer ID (or left) is not the target any more.
	answerer.swarms[0].id = bittorrent.PeerID{'c'}
	if r := answerer.receive(&offer, t0.UnixNano()); r != "not_in_swarm" {
		t.Errorf("offer to a peer ID no longer there: %q", r)
	}
}

// Sockets that read on goroutines of their own (wss://, or no epoll)
// behave the same as those the poller wakes.
func TestGoroutineMode(t *testing.T) {
	goroutineMode = true
	t.Cleanup(func() { goroutineMode = false })
	for name, test := range map[string]func(*testing.T){
		"AnnounceOfferAnswer": TestAnnounceOfferAnswer,
		"LimitMessageSize":    TestLimitMessageSize,
		"LimitIdle":           TestLimitIdle,
		"LimitSlowReader":     TestLimitSlowReader,
		"FailureReasons":      TestFailureReasons,
	} {
		t.Run(name, test)
	}
}

// Behind a trusted proxy the client's address is the one its header
// gives; anyone else's header is ignored.
func TestTrustedProxy(t *testing.T) {
	var mu sync.Mutex
	var got netip.Addr
	tt := newTestTracker(t, func(c *Config) { c.TrustedProxies = []string{"127.0.5.1"}; c.MaxConnectionsPerIP = 1 })
	tt.s.t = sourceTracker{Tracker: tt.chain, mu: &mu, got: &got}
	for _, tc := range []struct {
		src, want string
	}{{"127.0.5.1", "203.0.113.7"}, {"127.0.5.2", "127.0.5.2"}} {
		d := ws.Dialer{
			Header: ws.HandshakeHeaderHTTP{"X-Forwarded-For": []string{"203.0.113.7"}},
			NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tc.src)}}
				return nd.DialContext(ctx, network, addr)
			},
		}
		for range 2 { // two sockets: the proxy is exempt from the per-IP cap of 1
			nc, br, _, err := d.Dial(t.Context(), tt.url)
			if err != nil {
				if tc.src == "127.0.5.2" {
					continue // the second socket of a plain client is over the cap
				}
				t.Fatalf("dial from %s: %v", tc.src, err)
			}
			if br != nil {
				ws.PutReader(br)
			}
			t.Cleanup(func() { _ = nc.Close() })
			c := &client{t: t, nc: nc, rw: nc}
			c.send(announce(bin('1'), bin('a'), 0))
			c.recv()
			mu.Lock()
			if got.String() != tc.want {
				t.Errorf("socket from %s: client IP %v; want %s", tc.src, got, tc.want)
			}
			mu.Unlock()
		}
	}
}

type sourceTracker struct {
	hooks.Tracker
	mu  *sync.Mutex
	got *netip.Addr
}

func (s sourceTracker) Announce(ctx context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	s.mu.Lock()
	*s.got = req.Source
	s.mu.Unlock()
	return s.Tracker.Announce(ctx, req, resp)
}
