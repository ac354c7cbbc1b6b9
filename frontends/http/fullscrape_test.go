package http

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	nethttp "net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// fullTracker is a fakeTracker that lists swarms for full scrapes, in
// batches of three in descending infohash order (so the frontend must sort).
type fullTracker struct {
	fakeTracker
	files []bittorrent.Scrape
	err   error
	calls int
}

func (f *fullTracker) ScrapeAll(_ context.Context, _ *bittorrent.ScrapeRequest, fn func([]bittorrent.Scrape) error) error {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	for i := len(f.files); i > 0; i -= 3 {
		batch := make([]bittorrent.Scrape, 0, 3)
		for j := i - 1; j >= max(0, i-3); j-- {
			batch = append(batch, f.files[j])
		}
		if err := fn(batch); err != nil {
			return err
		}
	}
	return nil
}

func testFiles(n int) []bittorrent.Scrape {
	files := make([]bittorrent.Scrape, n)
	for i := range files {
		files[i] = bittorrent.Scrape{InfoHash: bittorrent.InfoHash{byte(i >> 8), byte(i), 0xf5}, Counts: bittorrent.Counts{Seeders: uint32(i), Leechers: 1, Snatches: uint32(2 * i)}}
	}
	return files
}

// wantFiles is the decoded files dictionary of files.
func wantFiles(files []bittorrent.Scrape) map[string]any {
	out := map[string]any{}
	for _, f := range files {
		out[string(f.InfoHash[:])] = map[string]any{"complete": int64(f.Seeders), "downloaded": int64(f.Snatches), "incomplete": int64(f.Leechers)}
	}
	return map[string]any{"files": out}
}

func TestFullScrape(t *testing.T) {
	files := testFiles(1000)
	tests := []struct {
		name, request string
		gzip, head    bool
	}{
		{"plain", "GET /scrape HTTP/1.1\r\nHost: t\r\n\r\n", false, false},
		{"gzip", "GET /scrape HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br, gzip;q=0.8\r\n\r\n", true, false},
		{"gzip refused by q=0", "GET /scrape HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip;q=0, identity\r\n\r\n", false, false},
		{"head", "HEAD /scrape HTTP/1.1\r\nHost: t\r\n\r\n", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fullTracker{files: files}
			reg := prometheus.NewRegistry()
			m, err := frontends.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			rec := m.ForConnections("http")
			_, addr := testServer(t, f, rec, func(c *Config) { c.FullScrape = true })
			r := dialRaw(t, addr)
			r.write(tt.request)
			method := "GET"
			if tt.head {
				method = "HEAD"
			}
			resp, body := r.read(method)
			if resp.ContentLength != -1 || !resp.Close {
				t.Errorf("Content-Length %d, close %v; want none, and the connection closed", resp.ContentLength, resp.Close)
			}
			if got := resp.Header.Get("Content-Encoding") == "gzip"; got != tt.gzip {
				t.Errorf("Content-Encoding %q, want gzip %v", resp.Header.Get("Content-Encoding"), tt.gzip)
			}
			r.expectClosed()
			if tt.head {
				if body != "" {
					t.Errorf("HEAD got a body of %d bytes", len(body))
				}
				return
			}
			raw := []byte(body)
			if tt.gzip {
				zr, err := gzip.NewReader(bytes.NewReader(raw))
				if err != nil {
					t.Fatal(err)
				}
				if raw, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			v, err := bencode.Decoder{SortedKeys: true}.Decode(raw)
			if err != nil {
				t.Fatalf("body is not canonical bencode: %v", err)
			}
			if !reflect.DeepEqual(v, wantFiles(files)) {
				t.Errorf("full scrape lists %d swarms, or wrong counts", len(v.(map[string]any)["files"].(map[string]any)))
			}
			if got := fullScrapes(t, reg, frontends.FullScrapeOK); got != 1 {
				t.Errorf("ok full scrapes counted %v, want 1", got)
			}
		})
	}
}

// fullScrapes reads karuta_frontend_full_scrapes_total{result} from reg.
func fullScrapes(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "karuta_frontend_full_scrapes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no karuta_frontend_full_scrapes_total{result=%q}", result)
	return 0
}

// TestFullScrapeRefusals covers every way a full scrape is refused, each
// with its failure reason and counted, on a connection that stays open.
func TestFullScrapeRefusals(t *testing.T) {
	tests := []struct {
		name    string
		on      bool
		tr      hooks.Tracker
		twice   bool
		want    string
		outcome string
	}{
		{"off", false, &fullTracker{files: testFiles(3)}, false, string(errFullScrapeOff), frontends.FullScrapeDisabled},
		{"tracker cannot list", true, &fakeTracker{}, false, string(errFullScrapeOff), frontends.FullScrapeDisabled},
		{"too soon", true, &fullTracker{files: testFiles(3)}, true, string(errFullScrapeLimited), frontends.FullScrapeRateLimited},
		{"a hook refuses", true, &fullTracker{err: bittorrent.ClientError("missing passkey")}, false, "missing passkey", frontends.FullScrapeRefused},
		{"the source fails", true, &fullTracker{err: errors.New("cluster: member n2 did not answer")}, false, string(bittorrent.ErrInternal), frontends.FullScrapeError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := frontends.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			_, addr := testServer(t, tt.tr, m.ForConnections("http"), func(c *Config) { c.FullScrape = tt.on; c.FullScrapeInterval = time.Hour })
			if tt.twice {
				r := dialRaw(t, addr)
				r.write("GET /scrape HTTP/1.1\r\nHost: t\r\n\r\n")
				r.read("GET")
			}
			r := dialRaw(t, addr)
			r.write("GET /scrape HTTP/1.1\r\nHost: t\r\n\r\n")
			resp, body := r.read("GET")
			v, err := bencode.Decoder{SortedKeys: true}.Decode([]byte(body))
			if err != nil || !reflect.DeepEqual(v, map[string]any{"failure reason": tt.want}) {
				t.Errorf("answer %q (%v), want failure reason %q", body, err, tt.want)
			}
			if resp.Close {
				t.Error("a refused full scrape closed the connection")
			}
			if got := fullScrapes(t, reg, tt.outcome); got != 1 {
				t.Errorf("full scrapes %s = %v, want 1", tt.outcome, got)
			}
			// The connection still answers.
			r.write("GET " + scrapeOne + " HTTP/1.1\r\nHost: t\r\n\r\n")
			if _, body := r.read("GET"); !strings.HasPrefix(body, "d") {
				t.Errorf("next request on the connection: %q", body)
			}
		})
	}
}

// TestFullScrapeGate checks that full scrapes go one at a time and that
// each source, an address or an IPv6 /64, gets one per interval while
// others still get theirs.
func TestFullScrapeGate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := fullScrapeGate{interval: 10 * time.Second}
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.2")
	v6, v6same := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9")
	steps := []struct {
		at      time.Duration
		src     netip.Addr
		release bool // release the one in flight first
		want    bool
	}{
		{0, a, false, true},
		{time.Second, b, false, false},                                           // one in flight
		{2 * time.Second, a, true, false},                                        // done, but a had one within the interval
		{2 * time.Second, b, false, true},                                        // another source's turn
		{3 * time.Second, v6, true, true},                                        // and another's
		{4 * time.Second, v6same, true, false},                                   // the same /64
		{4 * time.Second, netip.MustParseAddr("::ffff:192.0.2.1"), false, false}, // a, IPv4-mapped
		{10 * time.Second, a, false, true},                                       // a's interval has passed
		{25 * time.Second, b, false, false},                                      // still in flight, however long ago it started
		{25 * time.Second, b, true, true},                                        // released
	}
	for i, s := range steps {
		if s.release {
			g.release()
		}
		if got := g.acquire(s.src, t0.Add(s.at)); got != s.want {
			t.Errorf("step %d at +%s from %s: acquire = %v, want %v", i, s.at, s.src, got, s.want)
		}
	}
}

// TestFullScrapeFairPerSource has one client poll full scrapes while
// another asks once: the poller gets one and is refused after it, and the
// other client still gets its own, where a gate shared by all clients gave
// the poller every turn.
func TestFullScrapeFairPerSource(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := frontends.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := testServer(t, &fullTracker{files: testFiles(3)}, m.ForConnections("http"), func(c *Config) { c.FullScrape = true; c.FullScrapeInterval = time.Hour })
	full := func(local string) string {
		r := dialRawFrom(t, addr, local)
		r.write("GET /scrape HTTP/1.1\r\nHost: t\r\n\r\n")
		_, body := r.read("GET")
		return body
	}
	if body := full("127.0.0.1"); !strings.HasPrefix(body, "d5:filesd") {
		t.Fatalf("the poller's first full scrape: %q", body)
	}
	for i := range 20 {
		if body := full("127.0.0.1"); !strings.Contains(body, string(errFullScrapeLimited)) {
			t.Fatalf("the poller's full scrape %d: %q, want refused within its interval", i+2, body)
		}
	}
	if body := full("127.0.0.2"); !strings.HasPrefix(body, "d5:filesd") {
		t.Errorf("another client's full scrape while one polls: %q, want it answered", body)
	}
	if got := fullScrapes(t, reg, frontends.FullScrapeOK); got != 2 {
		t.Errorf("full scrapes answered: %v, want 2", got)
	}
	if got := fullScrapes(t, reg, frontends.FullScrapeRateLimited); got != 20 {
		t.Errorf("full scrapes refused: %v, want 20", got)
	}
}

// TestFullScrapeGateBounded fills the gate with more sources than it
// remembers: it stays at its bound and still takes new sources.
func TestFullScrapeGateBounded(t *testing.T) {
	t0 := time.Unix(1000, 0)
	g := fullScrapeGate{interval: time.Hour}
	for i := range maxFullScrapeSources + 100 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if !g.acquire(src, t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("source %d refused its first full scrape", i)
		}
		g.release()
		if len(g.last) > maxFullScrapeSources {
			t.Fatalf("gate remembers %d sources, bound %d", len(g.last), maxFullScrapeSources)
		}
	}
	// The newest are remembered, the oldest forgotten.
	if g.acquire(netip.AddrFrom4([4]byte{10, 0, 0x10, 0x63}), t0.Add(time.Hour-time.Second)) {
		t.Error("the newest source got a second full scrape within its interval")
	}
}

func TestAcceptsGzip(t *testing.T) {
	tests := map[string]bool{
		"gzip":                 true,
		"GZIP":                 true,
		"x-gzip":               true,
		"deflate, gzip":        true,
		"gzip;q=0.5, br":       true,
		"gzip; q=1":            true,
		"gzip;q=0":             false,
		"gzip;q=0.000":         false,
		"br, deflate":          false,
		"*":                    false,
		"":                     false,
		"gzipx":                false,
		"identity, gzip ; q=0": false,
	}
	for v, want := range tests {
		if got := acceptsGzip([]byte(v)); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", v, got, want)
		}
	}
}

// FuzzFullScrapeConn serves arbitrary input on a connection whose server
// answers full scrapes: every response must parse, every 200 body must be
// canonical bencode once gunzipped when it says gzip, and nothing may
// follow a full scrape's answer, which ends with the connection.
func FuzzFullScrapeConn(f *testing.F) {
	f.Add(uint8(255), []byte("GET /scrape HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n"))
	f.Add(uint8(3), []byte("GET "+scrapeOne+" HTTP/1.1\r\nHost: t\r\n\r\nGET /scrape?x=1 HTTP/1.0\r\nAccept-Encoding: x-gzip;q=0.1\r\n\r\nGET /scrape HTTP/1.1\r\nHost: t\r\n\r\n"))
	f.Add(uint8(9), []byte("GET /scrape HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip;q=0, *\r\nAccept-Encoding: deflate\r\n\r\n"))
	f.Fuzz(func(t *testing.T, chunk uint8, in []byte) {
		in = bytes.ReplaceAll(in, []byte("HEAD"), []byte("GETX")) // see FuzzConn
		cfg := DefaultConfig()
		cfg.MaxRequestBytes = 512
		cfg.FullScrape = true
		s, err := New(cfg, &fullTracker{files: testFiles(20)}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		sc := &scriptConn{in: in, chunk: int(chunk) + 1}
		c := newConn(s, sc)
		if ok, refused := s.track(c); !ok {
			t.Fatalf("track failed (refused: %q)", refused)
		}
		c.serve()
		br := bufio.NewReader(bytes.NewReader(sc.out.Bytes()))
		for full := false; ; {
			if _, err := br.Peek(1); err == io.EOF {
				break
			}
			if full {
				t.Fatal("a response follows a full scrape's answer")
			}
			resp, err := nethttp.ReadResponse(br, &nethttp.Request{Method: "GET"})
			if err != nil {
				t.Fatalf("malformed response: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("bad body: %v", err)
			}
			full = resp.ContentLength < 0
			if resp.Header.Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatalf("gzip body: %v", err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatalf("gzip body: %v", err)
				}
			}
			if resp.StatusCode == 200 {
				if _, err := (bencode.Decoder{SortedKeys: true}).Decode(body); err != nil {
					t.Fatalf("200 body %q is not canonical bencode: %v", body, err)
				}
			}
		}
	})
}
