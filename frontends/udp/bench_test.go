package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/karuta-tracker/karuta/frontends"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// BenchmarkHandleAnnounce measures one announce through the reader's
// handling function (verify the connection ID, parse, ask a tracker that
// returns 50 peers, write the reply, record metrics, pass the announce on),
// socket I/O excluded. It must report 0 allocs/op.
func BenchmarkHandleAnnounce(b *testing.B) {
	for _, bc := range []struct {
		name    string
		from    string
		options []byte
	}{
		{"v4", "192.0.2.1:5000", nil},
		{"v6", "[2001:db8::1]:5000", nil},
		{"v4_url_data", "192.0.2.1:5000", urlOption("/announce?passkey=0123456789abcdef")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m, err := frontends.NewMetrics(prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			h := newTestHandler(b, &fakeTracker{peers: testPeers(50)})
			h.rec = m.For("udp")
			from := netip.MustParseAddrPort(bc.from)
			a := testAnnounce()
			a.numWant, a.options = 50, bc.options
			s := newSlot()
			s.n = copy(s.buf, a.packet(mintFor(b, from.Addr(), testNow), 1))
			s.from = from
			h.handle(&s, testNow)
			if s.result != frontends.ResultOK {
				b.Fatalf("announce failed: %q", s.reply)
			}
			b.ReportAllocs()
			for b.Loop() {
				h.handle(&s, testNow)
				h.finish(&s)
			}
		})
	}
}

// BenchmarkHandleScrape measures a scrape of 10 infohashes.
func BenchmarkHandleScrape(b *testing.B) {
	from := netip.MustParseAddrPort("192.0.2.1:5000")
	hashes := make([]bittorrent.InfoHash, 10)
	for i := range hashes {
		hashes[i] = hashN(byte(i))
	}
	h := newTestHandler(b, &fakeTracker{})
	s := newSlot()
	s.n = copy(s.buf, scrapePacket(mintFor(b, from.Addr(), testNow), 1, hashes...))
	s.from = from
	b.ReportAllocs()
	for b.Loop() {
		h.handle(&s, testNow)
	}
}

// BenchmarkConnID measures minting and verifying connection IDs, the
// latter with the key in first and in second place (mid-rotation).
func BenchmarkConnID(b *testing.B) {
	ip := netip.MustParseAddr("192.0.2.1")
	kr, err := newKeyring([]string{"key-A-0123456789abcdef", "key-B-0123456789abcdef"})
	if err != nil {
		b.Fatal(err)
	}
	var m idMAC
	m.use(kr)
	b.Run("mint", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.mint(ip, testNow)
		}
	})
	b.Run("verify", func(b *testing.B) {
		id := m.mint(ip, testNow)
		b.ReportAllocs()
		for b.Loop() {
			if !m.verify(id, ip, testNow) {
				b.Fatal("rejected")
			}
		}
	})
	b.Run("verify_second_key", func(b *testing.B) {
		id := mintFor(b, ip, testNow, "key-B-0123456789abcdef")
		b.ReportAllocs()
		for b.Loop() {
			if !m.verify(id, ip, testNow) {
				b.Fatal("rejected")
			}
		}
	})
}

// BenchmarkServerLoopback measures announces answered over loopback by a
// server with one reader, against clients that keep several requests in
// flight so that batches can form. Clients share the CPU with the server,
// so compare runs with each other (benchstat), not with the handler
// benchmark.
func BenchmarkServerLoopback(b *testing.B) {
	for _, batch := range []int{1, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s, err := New(Config{Addr: "127.0.0.1:0", Readers: 1, BatchSize: batch, ConnectionIDKeys: []string{testKey}},
				&fakeTracker{peers: testPeers(50)}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Start(); err != nil {
				b.Fatal(err)
			}
			defer s.Shutdown(context.Background())
			const clients, window = 8, 16
			conns := make([]*net.UDPConn, clients)
			pkts := make([][]byte, clients)
			for i := range conns {
				c, err := net.DialUDP("udp", nil, s.Addr().(*net.UDPAddr))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				conns[i] = c
				ip := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
				pkts[i] = testAnnounce().packet(mintFor(b, ip, time.Now()), 1)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range conns {
				wg.Go(func() {
					buf := make([]byte, 2048)
					for next.Add(window) <= int64(b.N)+window-1 {
						for range window {
							if _, err := conns[i].Write(pkts[i]); err != nil {
								b.Error(err)
								return
							}
						}
						for range window {
							if err := conns[i].SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
								b.Error(err)
								return
							}
							if _, err := conns[i].Read(buf); err != nil {
								b.Error(err) // a lost datagram; rare on loopback
								return
							}
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
