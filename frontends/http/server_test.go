package http

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	nethttp "net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// fakeTracker answers with fixed counts and peers of the announcer's
// family, and records what it was asked.
// scrapeOne is a scrape of testHash, the simplest request with a body.
var scrapeOne = "/scrape?info_hash=" + escapeAll(testHash[:])

type fakeTracker struct {
	announceErr error
	scrapeErr   error
	peers       []bittorrent.Peer
	// gate, when set, makes Announce signal entered and wait for it.
	gate    chan struct{}
	entered chan struct{}

	mu        sync.Mutex
	announces []bittorrent.AnnounceRequest
	scrapes   []bittorrent.ScrapeRequest
	after     []bittorrent.AnnounceRequest
}

func (f *fakeTracker) Announce(_ context.Context, req *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	if f.gate != nil {
		f.entered <- struct{}{}
		<-f.gate
	}
	f.mu.Lock()
	f.announces = append(f.announces, *req)
	f.mu.Unlock()
	if f.announceErr != nil {
		return f.announceErr
	}
	resp.Interval, resp.MinInterval, resp.Complete, resp.Incomplete = 1800, 900, 5, 7
	for _, p := range f.peers {
		if p.Addr.Addr().Is4() == req.Addr.Addr().Is4() {
			resp.Peers = append(resp.Peers, p)
		}
	}
	return nil
}

func (f *fakeTracker) Scrape(_ context.Context, req *bittorrent.ScrapeRequest, resp *bittorrent.ScrapeResponse) error {
	f.mu.Lock()
	cp := *req
	cp.InfoHashes = append([]bittorrent.InfoHash(nil), req.InfoHashes...)
	f.scrapes = append(f.scrapes, cp)
	f.mu.Unlock()
	if f.scrapeErr != nil {
		return f.scrapeErr
	}
	for i, ih := range req.InfoHashes {
		resp.Files = append(resp.Files, bittorrent.Scrape{InfoHash: ih, Counts: bittorrent.Counts{Seeders: uint32(i + 1), Leechers: 2, Snatches: 3}})
	}
	return nil
}

func (f *fakeTracker) AfterAnnounce(req *bittorrent.AnnounceRequest) {
	f.mu.Lock()
	f.after = append(f.after, *req)
	f.mu.Unlock()
}

func (f *fakeTracker) lastAnnounce(t *testing.T) bittorrent.AnnounceRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.announces) == 0 {
		t.Fatal("tracker saw no announce")
	}
	return f.announces[len(f.announces)-1]
}

func (f *fakeTracker) afterCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.after)
}

func (f *fakeTracker) announceCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.announces)
}

// testServer starts a server on a loopback port with cfg adjusted by
// mutate, and shuts it down when the test ends.
func testServer(t *testing.T, f hooks.Tracker, rec *frontends.Recorder, mutate func(*Config)) (*Server, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.ReadTimeout, cfg.WriteTimeout, cfg.IdleTimeout = 2*time.Second, 2*time.Second, 5*time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, f, rec, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		if strings.Contains(cfg.Addr, "::") {
			t.Skipf("no IPv6 here: %v", err)
		}
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s, s.Addr().String()
}

// get fetches url with net/http's client and decodes the bencoded body.
func get(t *testing.T, c *nethttp.Client, url string) (*nethttp.Response, map[string]any) {
	t.Helper()
	if c == nil {
		c = &nethttp.Client{Timeout: 5 * time.Second}
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, body %q", url, resp.StatusCode, body)
	}
	v, err := bencode.Decoder{SortedKeys: true}.Decode(body)
	if err != nil {
		t.Fatalf("body %q is not canonical bencode: %v", body, err)
	}
	d, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("body %q is not a dictionary", body)
	}
	return resp, d
}

func TestServerAnnounce(t *testing.T) {
	f := &fakeTracker{peers: []bittorrent.Peer{peer('a', "10.0.0.1:6881"), peer('c', "[2001:db8::1]:6881")}}
	_, addr := testServer(t, f, nil, nil)
	resp, d := get(t, nil, "http://"+addr+"/announce?"+baseQuery+"&event=started&numwant=20&ip=6.6.6.6&passkey=x")
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type = %q, want text/plain", ct)
	}
	want := map[string]any{
		"complete": int64(5), "incomplete": int64(7), "interval": int64(1800), "min interval": int64(900),
		"peers": "\x0a\x00\x00\x01\x1a\xe1",
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("response = %#v, want %#v", d, want)
	}
	got := f.lastAnnounce(t)
	if got.InfoHash != testHash || got.PeerID != testPeer || got.Event != bittorrent.EventStarted || !got.NumWantSet || got.NumWant != 20 || !got.Compact {
		t.Errorf("tracker saw %+v", got)
	}
	if got.Addr != netip.MustParseAddrPort("127.0.0.1:6881") {
		t.Errorf("Addr = %v, want 127.0.0.1:6881 (the ip parameter must be ignored)", got.Addr)
	}
	if got.Params.Path != "/announce" || !strings.HasSuffix(got.Params.Query, "&passkey=x") || got.Params.Route != nil {
		t.Errorf("Params = %+v", got.Params)
	}
	if v, _ := got.Params.Get("passkey"); v != "x" {
		t.Errorf("Params.Get(passkey) = %q", v)
	}
	eventually.True(t, 5*time.Second, "AfterAnnounce", func() bool { return f.afterCount() == 1 })
	f.mu.Lock()
	after := f.after[0]
	f.mu.Unlock()
	if !reflect.DeepEqual(after, got) {
		t.Errorf("AfterAnnounce got %+v, want the announced request %+v", after, got)
	}
}

func TestServerAnnounceNonCompact(t *testing.T) {
	f := &fakeTracker{peers: []bittorrent.Peer{peer('a', "10.0.0.1:6881")}}
	_, addr := testServer(t, f, nil, nil)
	for _, tt := range []struct {
		query string
		want  map[string]any
	}{
		{"&compact=0", map[string]any{"ip": "10.0.0.1", "peer id": strings.Repeat("a", 20), "port": int64(6881)}},
		{"&compact=0&no_peer_id=1", map[string]any{"ip": "10.0.0.1", "port": int64(6881)}},
	} {
		_, d := get(t, nil, "http://"+addr+"/announce?"+baseQuery+tt.query)
		if got := d["peers"]; !reflect.DeepEqual(got, []any{tt.want}) {
			t.Errorf("%s: peers = %#v, want [%#v]", tt.query, got, tt.want)
		}
	}
}

func TestServerIPv6(t *testing.T) {
	f := &fakeTracker{peers: []bittorrent.Peer{peer('a', "10.0.0.1:6881"), peer('c', "[2001:db8::1]:6881")}}
	_, addr := testServer(t, f, nil, func(c *Config) { c.Addr = "[::1]:0" })
	_, d := get(t, nil, "http://"+addr+"/announce?"+baseQuery)
	if d["peers"] != "" {
		t.Errorf("peers = %q, want empty for an IPv6 client", d["peers"])
	}
	if p6, _ := d["peers6"].(string); len(p6) != 18 {
		t.Errorf("peers6 = %q, want one 18-byte entry", p6)
	}
	if got := f.lastAnnounce(t).Addr; got != netip.MustParseAddrPort("[::1]:6881") {
		t.Errorf("Addr = %v", got)
	}
}

func TestServerDualStackUnmaps(t *testing.T) {
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, func(c *Config) { c.Addr = "[::]:0" })
	_, port, _ := net.SplitHostPort(addr)
	get(t, nil, "http://127.0.0.1:"+port+"/announce?"+baseQuery)
	if got := f.lastAnnounce(t).Addr.Addr(); !got.Is4() || got.String() != "127.0.0.1" {
		t.Errorf("client address = %v, want unmapped 127.0.0.1", got)
	}
}

func TestServerScrape(t *testing.T) {
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, nil)
	h2 := bittorrent.InfoHash{19: 1}
	_, d := get(t, nil, "http://"+addr+"/scrape?info_hash="+escapeAll(testHash[:])+"&info_hash="+escapeAll(h2[:]))
	want := map[string]any{"files": map[string]any{
		string(testHash[:]): map[string]any{"complete": int64(1), "downloaded": int64(3), "incomplete": int64(2)},
		string(h2[:]):       map[string]any{"complete": int64(2), "downloaded": int64(3), "incomplete": int64(2)},
	}}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("scrape = %#v, want %#v", d, want)
	}
	// No info_hash at all is a full scrape, off by default: refused without
	// asking the tracker.
	_, d = get(t, nil, "http://"+addr+"/scrape")
	if want := map[string]any{"failure reason": string(errFullScrapeOff)}; !reflect.DeepEqual(d, want) {
		t.Errorf("full scrape when off = %#v, want %#v", d, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.scrapes) != 1 || f.scrapes[0].Addr.Addr().String() != "127.0.0.1" || f.scrapes[0].Params.Path != "/scrape" {
		t.Errorf("tracker saw scrapes %+v", f.scrapes)
	}
	if len(f.after) != 0 {
		t.Errorf("AfterAnnounce called for a scrape")
	}
}

func TestServerFailureReasons(t *testing.T) {
	replace := func(from, to string) string { return strings.Replace(baseQuery, from, to, 1) }
	tests := []struct {
		name        string
		path        string
		announceErr error
		scrapeErr   error
		want        string
		reachesHook bool
	}{
		{"missing info_hash", "/announce?port=1", nil, nil, "missing info_hash", false},
		{"bad info_hash", "/announce?" + replace("info_hash=%00", "info_hash="), nil, nil, "info_hash must be 20 bytes", false},
		{"missing peer_id", "/announce?info_hash=" + escapeAll(testHash[:]), nil, nil, "missing peer_id", false},
		{"bad peer_id", "/announce?" + replace("peer_id=", "peer_id=x"), nil, nil, "peer_id must be 20 bytes", false},
		{"missing port", "/announce?" + replace("port=6881&", ""), nil, nil, "missing port", false},
		{"bad port", "/announce?" + replace("port=6881", "port=0"), nil, nil, "port must be an integer from 1 to 65535", false},
		{"missing left", "/announce?" + replace("&left=0", ""), nil, nil, "missing left", false},
		{"negative left", "/announce?" + replace("left=0", "left=-1"), nil, nil, "left must be a non-negative integer", false},
		{"negative uploaded", "/announce?" + baseQuery + "&uploaded=-1", nil, nil, "uploaded must be a non-negative integer", false},
		{"negative downloaded", "/announce?" + baseQuery + "&downloaded=-1", nil, nil, "downloaded must be a non-negative integer", false},
		{"negative numwant", "/announce?" + baseQuery + "&numwant=-1", nil, nil, "numwant must be a non-negative integer", false},
		{"numwant past 64 bits", "/announce?" + baseQuery + "&numwant=99999999999999999999", nil, nil, "numwant is too large; at most 18446744073709551615", false},
		{"bad event", "/announce?" + baseQuery + "&event=bogus", nil, nil, "event must be one of started, completed, stopped, paused or empty", false},
		{"bad escape", "/announce?" + replace("info_hash=%00", "info_hash=%0"), nil, nil, "malformed percent-encoding in query", false},
		{"repeated", "/announce?" + baseQuery + "&left=1", nil, nil, "left given more than once", false},
		{"tracker client error", "/announce?" + baseQuery, fmt.Errorf("hook: %w", bittorrent.ClientError("torrent not registered")), nil, "torrent not registered", true},
		{"tracker internal error", "/announce?" + baseQuery, errors.New("store: shard 3 on fire"), nil, "internal server error", true},
		{"scrape bad hash", "/scrape?info_hash=abc", nil, nil, "info_hash must be 20 bytes", false},
		{"scrape too many", "/scrape?info_hash=" + escapeAll(testHash[:]), nil, bittorrent.ErrTooManyHashes, "too many info_hash values in scrape", false},
		{"scrape internal error", scrapeOne, nil, errors.New("boom"), "internal server error", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTracker{announceErr: tt.announceErr, scrapeErr: tt.scrapeErr}
			_, addr := testServer(t, f, nil, nil)
			resp, d := get(t, nil, "http://"+addr+tt.path)
			if resp.StatusCode != 200 {
				t.Errorf("status = %d, want 200", resp.StatusCode)
			}
			if want := map[string]any{"failure reason": tt.want}; !reflect.DeepEqual(d, want) {
				t.Errorf("response = %#v, want %#v", d, want)
			}
			if got := f.announceCount() > 0; got != tt.reachesHook {
				t.Errorf("tracker called = %v, want %v", got, tt.reachesHook)
			}
			// Give a wrongly queued AfterAnnounce the chance to show up.
			get(t, nil, "http://"+addr+scrapeOne)
			if n := f.afterCount(); n != 0 {
				t.Errorf("AfterAnnounce called %d times for a failed announce", n)
			}
		})
	}
}

// rawConn is a client connection for writing exact bytes.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) write(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// read reads one response to a request with method and returns it with its
// body.
func (r *rawConn) read(method string) (*nethttp.Response, string) {
	r.t.Helper()
	resp, err := nethttp.ReadResponse(r.br, &nethttp.Request{Method: method})
	if err != nil {
		r.t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

// expectClosed checks the server closes the connection without sending
// anything more.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	rest, err := io.ReadAll(r.br)
	if err != nil {
		r.t.Fatalf("connection not closed: %v", err)
	}
	if len(rest) > 0 {
		r.t.Errorf("unexpected bytes before close: %q", rest)
	}
}

func TestServerStatusCodes(t *testing.T) {
	tests := []struct {
		name      string
		req       string
		method    string
		status    int
		allow     string
		closeConn bool
	}{
		{"not found", "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", "GET", 404, "", false},
		{"trailing slash", "GET /announce/ HTTP/1.1\r\nHost: t\r\n\r\n", "GET", 404, "", false},
		{"post", "POST /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", "POST", 405, "GET, HEAD", false},
		{"post with body", "POST /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", "POST", 405, "GET, HEAD", true},
		{"options", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "OPTIONS", 405, "GET, HEAD", false},
		{"get with body", "GET /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", "GET", 400, "", true},
		{"chunked", "GET /announce HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET", 400, "", true},
		{"bare LF", "GET /announce HTTP/1.1\nHost: t\n\n", "GET", 400, "", true},
		{"obs-fold", "GET /announce HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", "GET", 400, "", true},
		{"duplicate content-length", "GET /announce HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", "GET", 400, "", true},
		{"missing host", "GET /announce HTTP/1.1\r\n\r\n", "GET", 400, "", true},
		{"http/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "GET", 505, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, addr := testServer(t, &fakeTracker{}, nil, nil)
			r := dialRaw(t, addr)
			r.write(tt.req)
			resp, _ := r.read(tt.method)
			if resp.StatusCode != tt.status {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.status)
			}
			if got := resp.Header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
			if resp.Close != tt.closeConn {
				t.Errorf("response close = %v, want %v", resp.Close, tt.closeConn)
			}
			if tt.closeConn {
				r.expectClosed()
				return
			}
			// The connection is still usable.
			r.write("GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n")
			if resp, _ := r.read("GET"); resp.StatusCode != 200 {
				t.Errorf("next request: status %d", resp.StatusCode)
			}
		})
	}
}

func TestServerKeepAlive(t *testing.T) {
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, nil)
	r := dialRaw(t, addr)
	for i := range 5 {
		r.write(fmt.Sprintf("GET /announce?%s&numwant=%d HTTP/1.1\r\nHost: t\r\n\r\n", baseQuery, i))
		resp, body := r.read("GET")
		if resp.StatusCode != 200 || resp.Close || !strings.HasPrefix(body, "d8:complete") {
			t.Fatalf("request %d: status %d, close %v, body %q", i, resp.StatusCode, resp.Close, body)
		}
		if resp.Header.Get("Date") == "" {
			t.Error("no Date header")
		}
	}
	// net/http's client reuses the connection too.
	c := &nethttp.Client{Timeout: 5 * time.Second}
	var conns sync.Map
	c.Transport = &nethttp.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if err == nil {
			conns.Store(nc.LocalAddr().String(), true)
		}
		return nc, err
	}}
	for range 3 {
		get(t, c, "http://"+addr+"/announce?"+baseQuery)
	}
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("net/http client used %d connections for 3 requests, want 1", n)
	}
	eventually.True(t, 5*time.Second, "AfterAnnounce", func() bool { return f.afterCount() == 8 })
}

func TestServerPipelining(t *testing.T) {
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, func(c *Config) {
		c.AnnounceRoutes = []string{"/announce", "/{passkey}/announce"}
	})
	r := dialRaw(t, addr)
	// Several requests in one write, the last split across two writes.
	last := "GET /key2/announce?" + baseQuery + "&numwant=3 HTTP/1.1\r\nHost: t\r\n\r\n"
	r.write("GET /key1/announce?" + baseQuery + "&numwant=1 HTTP/1.1\r\nHost: t\r\n\r\n" +
		"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n" +
		"HEAD /announce?" + baseQuery + "&numwant=2 HTTP/1.1\r\nHost: t\r\n\r\n" +
		"GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n" + last[:40])
	for i, want := range []struct {
		method string
		status int
		body   string
	}{
		{"GET", 200, "d8:complete"},
		{"GET", 404, "404"},
		{"HEAD", 200, ""},
		{"GET", 200, "d5:files"},
		{"GET", 200, "d8:complete"},
	} {
		if i == 4 {
			// The server has answered everything before the partial
			// request, so it has seen the partial one alone.
			r.write(last[40:])
		}
		resp, body := r.read(want.method)
		if resp.StatusCode != want.status || !strings.HasPrefix(body, want.body) || resp.Close {
			t.Errorf("response %d: status %d body %q close %v, want %d %q", i, resp.StatusCode, body, resp.Close, want.status, want.body)
		}
		if want.method == "HEAD" && (body != "" || resp.ContentLength <= 0) {
			t.Errorf("HEAD: body %q, Content-Length %d; want no body and the GET length", body, resp.ContentLength)
		}
	}
	// Overwrite the connection's read buffer with other requests; what the
	// earlier announces handed to AfterAnnounce must not change.
	junk := strings.Repeat("Z", 200)
	r.write("GET /keyX/announce?" + strings.Repeat(junk+"=1&", 2) + baseQuery + "&numwant=9 HTTP/1.1\r\nHost: t\r\n\r\n" +
		"GET /announce?" + junk + "&" + baseQuery + "&numwant=9 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
	r.read("GET")
	r.read("GET")
	r.expectClosed()
	eventually.True(t, 5*time.Second, "AfterAnnounce", func() bool { return f.afterCount() == 5 })
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, want := range []struct{ passkey, path string }{{"key1", "/key1/announce"}, {"", "/announce"}, {"key2", "/key2/announce"}} {
		a := f.after[i]
		if a.NumWant != uint32(i+1) {
			t.Errorf("AfterAnnounce %d: numwant %d, want %d (answered out of order?)", i, a.NumWant, i+1)
		}
		if got, _ := a.Params.Get("passkey"); got != want.passkey || a.Params.Path != want.path {
			t.Errorf("AfterAnnounce %d: passkey %q path %q, want %q %q", i, got, a.Params.Path, want.passkey, want.path)
		}
		if wantQ := baseQuery + fmt.Sprintf("&numwant=%d", i+1); a.Params.Query != wantQ {
			t.Errorf("AfterAnnounce %d: query %q, want %q", i, a.Params.Query, wantQ)
		}
	}
}

func TestServerHTTP10(t *testing.T) {
	_, addr := testServer(t, &fakeTracker{}, nil, nil)

	r := dialRaw(t, addr)
	r.write("GET /announce?" + baseQuery + " HTTP/1.0\r\n\r\n")
	resp, body := r.read("GET")
	if resp.StatusCode != 200 || resp.Proto != "HTTP/1.0" || !strings.HasPrefix(body, "d8:complete") {
		t.Errorf("HTTP/1.0: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	r.expectClosed()

	r = dialRaw(t, addr)
	for range 2 {
		r.write("GET /announce?" + baseQuery + " HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		resp, _ = r.read("GET")
		if resp.StatusCode != 200 || resp.Header.Get("Connection") != "keep-alive" {
			t.Errorf("HTTP/1.0 keep-alive: status %d, Connection %q", resp.StatusCode, resp.Header.Get("Connection"))
		}
	}
}

func TestServerTimeouts(t *testing.T) {
	_, addr := testServer(t, &fakeTracker{}, nil, func(c *Config) {
		c.IdleTimeout = 50 * time.Millisecond
		c.ReadTimeout = 50 * time.Millisecond
	})
	t.Run("idle", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.write("GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n")
		r.read("GET")
		start := time.Now()
		r.expectClosed()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("idle connection closed after %s", d)
		}
	})
	t.Run("silent new connection", func(t *testing.T) {
		dialRaw(t, addr).expectClosed()
	})
	t.Run("slow request", func(t *testing.T) {
		r := dialRaw(t, addr)
		r.write("GET " + scrapeOne + " HTTP/1.1\r\nHo")
		r.expectClosed()
	})
}

func TestServerRequestTooLarge(t *testing.T) {
	_, addr := testServer(t, &fakeTracker{}, nil, func(c *Config) { c.MaxRequestBytes = 1024 })
	tests := []struct{ name, req string }{
		{"long line", "GET /announce?" + strings.Repeat("x", 2000) + " HTTP/1.1\r\nHost: t\r\n\r\n"},
		{"many headers", "GET /announce HTTP/1.1\r\nHost: t\r\n" + strings.Repeat("X-Pad: 0123456789\r\n", 100) + "\r\n"},
		{"no end", strings.Repeat("G", 1024)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialRaw(t, addr)
			go func() { _, _ = io.WriteString(r.c, tt.req) }() // the server may close before reading it all
			resp, body := r.read("GET")
			if resp.StatusCode != 200 || body != "d14:failure reason17:request too largee" || !resp.Close {
				t.Errorf("got %d %q close=%v", resp.StatusCode, body, resp.Close)
			}
			r.expectClosed()
		})
	}
	// A request of just under the limit is fine, also behind a pipelined one.
	r := dialRaw(t, addr)
	first := "GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n"
	pad := "GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\nX-Pad: "
	second := pad + strings.Repeat("x", 1024-len(pad)-4) + "\r\n\r\n"
	r.write(first + second)
	for range 2 {
		if resp, body := r.read("GET"); resp.StatusCode != 200 || !strings.HasPrefix(body, "d5:files") {
			t.Errorf("request at the limit: %d %q", resp.StatusCode, body)
		}
	}
}

func TestServerTrustedProxy(t *testing.T) {
	tests := []struct {
		name    string
		proxies []string
		header  string
		want    string
	}{
		{"trusted proxy honoured", []string{"127.0.0.0/8"}, "X-Forwarded-For", "198.51.100.1"},
		{"custom header", []string{"127.0.0.1"}, "X-Real-IP", "198.51.100.1"},
		{"untrusted ignored", []string{"10.0.0.0/8"}, "X-Forwarded-For", "127.0.0.1"},
		{"no proxies ignored", nil, "X-Forwarded-For", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTracker{}
			_, addr := testServer(t, f, nil, func(c *Config) { c.TrustedProxies, c.RealIPHeader = tt.proxies, tt.header })
			r := dialRaw(t, addr)
			r.write("GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\n" + tt.header + ": 6.6.6.6, 198.51.100.1, 127.0.0.1\r\n\r\n")
			r.read("GET")
			if got := f.lastAnnounce(t).Addr; got.Addr().String() != tt.want || got.Port() != 6881 {
				t.Errorf("client = %v, want %s:6881", got, tt.want)
			}
		})
	}
	t.Run("garbage from trusted proxy", func(t *testing.T) {
		f := &fakeTracker{}
		_, addr := testServer(t, f, nil, func(c *Config) { c.TrustedProxies = []string{"127.0.0.1"} })
		r := dialRaw(t, addr)
		r.write("GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: unknown\r\n\r\n")
		if _, body := r.read("GET"); !strings.Contains(body, "cannot determine client IP") || f.announceCount() != 0 {
			t.Errorf("body %q, announces %d", body, f.announceCount())
		}
	})
}

func TestServerRouteParams(t *testing.T) {
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, func(c *Config) {
		c.AnnounceRoutes = []string{"/{passkey}/announce"}
		c.ScrapeRoutes = []string{"/{passkey}/scrape"}
	})
	c := &nethttp.Client{Timeout: 5 * time.Second}
	req, _ := nethttp.NewRequest("GET", "http://"+addr+"/s3cr%2Ft/announce?"+baseQuery, nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := f.lastAnnounce(t)
	want := []bittorrent.Param{{Key: "passkey", Value: "s3cr/t"}}
	if !reflect.DeepEqual(got.Params.Route, want) || got.Params.Path != "/s3cr%2Ft/announce" || got.Params.Authorization != "Bearer tok" {
		t.Errorf("Params = %+v", got.Params)
	}
	get(t, c, "http://"+addr+"/abc/scrape?"+baseQuery)
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.scrapes[0].Params; !reflect.DeepEqual(p.Route, []bittorrent.Param{{Key: "passkey", Value: "abc"}}) {
		t.Errorf("scrape Params = %+v", p)
	}
	if resp, err := c.Get("http://" + addr + "/announce"); err != nil || resp.StatusCode != 404 {
		t.Errorf("unconfigured /announce: %v %v", resp, err)
	}
}

func TestServerTLS(t *testing.T) {
	certFile, keyFile, pool := selfSignedCert(t)
	f := &fakeTracker{}
	_, addr := testServer(t, f, nil, func(c *Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	c := &nethttp.Client{Timeout: 5 * time.Second, Transport: &nethttp.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	_, d := get(t, c, "https://"+addr+"/announce?"+baseQuery)
	if d["interval"] != int64(1800) {
		t.Errorf("response %#v", d)
	}
	// Plain HTTP on the TLS port gets nowhere.
	r := dialRaw(t, addr)
	r.write("GET /announce HTTP/1.1\r\nHost: t\r\n\r\n")
	if b, _ := io.ReadAll(r.br); strings.Contains(string(b), "d8:") {
		t.Errorf("plain HTTP answered on the TLS port: %q", b)
	}
}

func selfSignedCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "karuta test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestServerShutdown(t *testing.T) {
	f := &fakeTracker{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg, f, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	idle := dialRaw(t, addr)
	idle.write("GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n")
	idle.read("GET")

	busy := dialRaw(t, addr)
	busy.write("GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\n\r\n")
	<-f.entered

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	idle.expectClosed()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("server still accepts connections during shutdown")
	}
	close(f.gate)
	resp, body := busy.read("GET")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "d8:complete") || !resp.Close {
		t.Errorf("in-flight request: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	busy.expectClosed()
	if err := <-done; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if f.afterCount() != 1 {
		t.Errorf("AfterAnnounce called %d times for the in-flight announce, want 1", f.afterCount())
	}
	if err := s.Start(); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Start after Shutdown = %v, want ErrServerClosed", err)
	}
}

func TestServerShutdownDeadline(t *testing.T) {
	f := &fakeTracker{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg, f, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	busy := dialRaw(t, s.Addr().String())
	busy.write("GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\n\r\n")
	<-f.entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	go func() {
		<-ctx.Done()
		close(f.gate) // a well-behaved hook returns once its context ends
	}()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
}

func TestServerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := frontends.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTracker{}
	_, addr := testServer(t, f, m.ForConnections("http"), nil)
	get(t, nil, "http://"+addr+"/announce?"+baseQuery)
	get(t, nil, "http://"+addr+"/announce?"+baseQuery+"&event=x")
	get(t, nil, "http://"+addr+scrapeOne)
	resp, err := nethttp.Get("http://" + addr + "/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := `
# HELP karuta_frontend_requests_total Requests answered, by frontend, action and result.
# TYPE karuta_frontend_requests_total counter
karuta_frontend_requests_total{action="announce",frontend="http",result="client_error"} 1
karuta_frontend_requests_total{action="announce",frontend="http",result="error"} 0
karuta_frontend_requests_total{action="announce",frontend="http",result="ok"} 1
karuta_frontend_requests_total{action="scrape",frontend="http",result="client_error"} 0
karuta_frontend_requests_total{action="scrape",frontend="http",result="error"} 0
karuta_frontend_requests_total{action="scrape",frontend="http",result="ok"} 1
karuta_frontend_requests_total{action="unknown",frontend="http",result="client_error"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "karuta_frontend_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestNewRejects(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Addr = ""
	if _, err := New(cfg, &fakeTracker{}, nil, zaptest.NewLogger(t)); err == nil {
		t.Error("New with empty addr succeeded")
	}
	cfg = DefaultConfig()
	cfg.TLSCert, cfg.TLSKey = "/nonexistent/c.pem", "/nonexistent/k.pem"
	if _, err := New(cfg, &fakeTracker{}, nil, zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), "tls_cert") {
		t.Errorf("New with missing cert = %v", err)
	}
	cfg = DefaultConfig()
	cfg.ReadTimeout = 0
	if _, err := New(cfg, &fakeTracker{}, nil, zaptest.NewLogger(t)); err == nil || !strings.HasPrefix(err.Error(), "http: read_timeout:") {
		t.Errorf("New with bad config = %v", err)
	}
}
