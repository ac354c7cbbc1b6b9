package http

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"net/netip"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// benchTracker answers every announce with the same 50 IPv4 peers and
// records nothing, so benchmarks measure the frontend alone.
type benchTracker struct{ peers []bittorrent.Peer }

func newBenchTracker() *benchTracker {
	bt := &benchTracker{}
	for i := range 50 {
		bt.peers = append(bt.peers, bittorrent.Peer{
			ID:   bittorrent.PeerID{0: byte(i)},
			Addr: netipAddrPort(10, 0, byte(i>>8), byte(i), uint16(6881+i)),
		})
	}
	return bt
}

func (bt *benchTracker) Announce(_ context.Context, _ *bittorrent.AnnounceRequest, resp *bittorrent.AnnounceResponse) error {
	resp.Interval, resp.MinInterval, resp.Complete, resp.Incomplete = 1800, 900, 40, 10
	resp.Peers = append(resp.Peers[:0], bt.peers...)
	return nil
}

func (bt *benchTracker) Scrape(context.Context, *bittorrent.ScrapeRequest, *bittorrent.ScrapeResponse) error {
	return nil
}

func (bt *benchTracker) AfterAnnounce(*bittorrent.AnnounceRequest) {}

// benchRequest is a typical client announce, headers included.
var benchRequest = []byte("GET /announce?" + baseQuery +
	"&uploaded=0&downloaded=0&left=123456&corrupt=0&key=1A2B3C4D&event=started&numwant=50&compact=1&no_peer_id=1&supportcrypto=1&redundant=0 HTTP/1.1\r\n" +
	"Host: tracker.example.org:6969\r\nUser-Agent: qBittorrent/4.6.0\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")

func init() {
	// The query above repeats left; keep the first one only.
	benchRequest = bytes.Replace(benchRequest, []byte("&left=123456"), nil, 1)
	benchRequest = bytes.Replace(benchRequest, []byte("Connection: close\r\n"), nil, 1)
}

func BenchmarkParseAnnounce(b *testing.B) {
	var req request
	if _, err := parseRequest(benchRequest, "", &req); err != nil {
		b.Fatal(err)
	}
	var ar bittorrent.AnnounceRequest
	b.ReportAllocs()
	b.SetBytes(int64(len(req.query)))
	for b.Loop() {
		if _, err := parseAnnounce(req.query, &ar); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseRequest(b *testing.B) {
	var req request
	b.ReportAllocs()
	b.SetBytes(int64(len(benchRequest)))
	for b.Loop() {
		if _, err := parseRequest(benchRequest, "x-forwarded-for", &req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendAnnounce50(b *testing.B) {
	bt := newBenchTracker()
	resp := &bittorrent.AnnounceResponse{Interval: 1800, MinInterval: 900, Complete: 40, Incomplete: 10, Peers: bt.peers}
	for _, tc := range []struct {
		name              string
		compact, noPeerID bool
	}{{"compact", true, false}, {"dict", false, false}} {
		b.Run(tc.name, func(b *testing.B) {
			buf := make([]byte, 0, 8192)
			b.ReportAllocs()
			for b.Loop() {
				buf = appendAnnounce(buf[:0], resp, false, tc.compact, tc.noPeerID)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// loopConn hands out the same request on every Read, n times, and
// discards what is written: the connection handler runs with no system
// calls, so the benchmark measures its own cost per keep-alive request.
type loopConn struct {
	scriptConn
	req []byte
	n   int
}

func (c *loopConn) Read(p []byte) (int, error) {
	if c.n == 0 {
		return 0, io.EOF
	}
	c.n--
	return copy(p, c.req), nil
}

func (c *loopConn) Write(p []byte) (int, error) { return len(p), nil }

func BenchmarkConnRequest(b *testing.B) {
	cfg := DefaultConfig()
	s, err := New(cfg, newBenchTracker(), nil, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	lc := &loopConn{req: benchRequest}
	c := newConn(s, lc)
	b.ReportAllocs()
	b.ResetTimer()
	lc.n = b.N
	s.track(c)
	c.serve()
}

// BenchmarkServerLoopback runs keep-alive announces over a real loopback TCP
// connection, client and server in this process; cpu-us/op is the CPU time
// of both per request.
func BenchmarkServerLoopback(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	s, err := New(cfg, newBenchTracker(), nil, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	benchLoopback(b, s.Addr().String())
}

// BenchmarkNetHTTPLoopback is the baseline the custom server is measured
// against: net/http serving a body of the same size, same client.
func BenchmarkNetHTTPLoopback(b *testing.B) {
	body := appendAnnounce(nil, &bittorrent.AnnounceResponse{Peers: newBenchTracker().peers}, false, true, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &nethttp.Server{ReadHeaderTimeout: time.Minute, Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		_ = r.URL.Query() // parse the query, as any handler must
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, nethttp.ErrServerClosed) {
			b.Errorf("serve: %v", err)
		}
	}()
	benchLoopback(b, ln.Addr().String())
}

// BenchmarkEchoLoopback is the floor under both: a server that reads a
// request and writes a canned response of the same size, parsing nothing.
func BenchmarkEchoLoopback(b *testing.B) {
	body := appendAnnounce(nil, &bittorrent.AnnounceResponse{Peers: newBenchTracker().peers}, false, true, false)
	canned := appendHead(nil, head{minor: 1, status: status200, contentLen: len(body)})
	canned = append(canned, body...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		buf := make([]byte, 8192)
		for {
			if _, err := nc.Read(buf); err != nil {
				return
			}
			if _, err := nc.Write(canned); err != nil {
				return
			}
		}
	}()
	benchLoopback(b, ln.Addr().String())
}

func benchLoopback(b *testing.B, addr string) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	buf := make([]byte, 8192)
	roundTrip := func() {
		if _, err := nc.Write(benchRequest); err != nil {
			b.Fatal(err)
		}
		have, want := 0, -1
		for want < 0 || have < want {
			n, err := nc.Read(buf[have:])
			if err != nil {
				b.Fatal(err)
			}
			have += n
			if want < 0 {
				if end := bytes.Index(buf[:have], []byte("\r\n\r\n")); end >= 0 {
					want = end + 4 + contentLength(buf[:end])
				}
			}
		}
	}
	roundTrip() // warm up
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip()
	}
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
}

func contentLength(head []byte) int {
	i := bytes.Index(head, []byte("Content-Length: ")) // both servers write it so
	if i < 0 {
		return 0
	}
	rest := head[i+len("Content-Length: "):]
	if j := bytes.IndexByte(rest, '\r'); j >= 0 {
		rest = rest[:j]
	}
	n, _ := strconv.Atoi(string(rest))
	return n
}

func netipAddrPort(a, b, c, d byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a, b, c, d}), port)
}

// BenchmarkIdleConnMemory measures the Go memory (heap and goroutine
// stacks) an idle keep-alive connection holds after one announce: what
// max_connections multiplies. The client's side of each loopback
// connection, a few hundred bytes, is included; kernel socket buffers are
// not.
func BenchmarkIdleConnMemory(b *testing.B) {
	const conns = 2000
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.IdleTimeout = time.Hour
	cfg.MaxConnectionsPerIP = conns // all from one loopback address
	var perConn float64
	for b.Loop() {
		s, err := New(cfg, newBenchTracker(), nil, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Start(); err != nil {
			b.Fatal(err)
		}
		req := []byte("GET /announce?" + baseQuery + " HTTP/1.1\r\nHost: t\r\n\r\n")
		buf := make([]byte, 64<<10)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		open := make([]net.Conn, 0, conns)
		for range conns {
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			open = append(open, c)
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perConn = float64((after.HeapInuse+after.StackInuse)-(before.HeapInuse+before.StackInuse)) / conns
		for _, c := range open {
			c.Close()
		}
		_ = s.Shutdown(context.Background())
	}
	b.ReportMetric(perConn, "B/conn")
}
