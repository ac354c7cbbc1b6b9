package udp

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	trackerudp "github.com/anacrolix/torrent/tracker/udp"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
)

// TestInteropAnacrolix talks to the server with an independent client, the
// UDP tracker client of github.com/anacrolix/torrent, over IPv4 and IPv6.
func TestInteropAnacrolix(t *testing.T) {
	for _, tc := range []struct {
		network, host string
	}{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(tc.network, func(t *testing.T) {
			tr := &fakeTracker{
				peers:  testPeers(3),
				counts: bittorrent.Counts{Seeders: 8, Leechers: 9},
				after:  make(chan bittorrent.AnnounceRequest, 1),
			}
			s := startServer(t, Config{Addr: net.JoinHostPort(tc.host, "0")}, tr, nil)
			cc, err := trackerudp.NewConnClient(trackerudp.NewConnClientOpts{
				Network: tc.network,
				Host:    net.JoinHostPort(tc.host, fmt.Sprint(s.Addr().(*net.UDPAddr).Port)),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			req := trackerudp.AnnounceRequest{
				InfoHash: [20]byte(hashN(1)), Left: 100, Event: 2, NumWant: -1, Port: 51413, Key: 7,
			}
			copy(req.PeerId[:], "-AZ0001-0123456789ab")
			hdr, peers, err := cc.Announce(ctx, req, trackerudp.Options{RequestUri: "/announce?passkey=interop"})
			if err != nil {
				t.Fatalf("announce: %v", err)
			}
			if hdr.Interval != 1800 || hdr.Seeders != 8 || hdr.Leechers != 9 {
				t.Errorf("announce header %+v", hdr)
			}
			if peers == nil {
				t.Fatal("announce returned no peer list")
			}
			if addrs := peers.NodeAddrs(); len(addrs) != 3 {
				t.Errorf("got %d peers, want 3: %v", len(addrs), addrs)
			}
			var got bittorrent.AnnounceRequest
			select {
			case got = <-tr.after:
			case <-ctx.Done():
				t.Fatal("AfterAnnounce not called")
			}
			if got.Addr.Port() != 51413 || got.Params.Path != "/announce" || got.Params.Query != "passkey=interop" ||
				got.Event != bittorrent.EventStarted || got.NumWantSet {
				t.Errorf("tracker saw %+v", got)
			}

			sr, err := cc.Client.Scrape(ctx, []trackerudp.InfoHash{hashN(3), hashN(4)})
			if err != nil {
				t.Fatalf("scrape: %v", err)
			}
			if len(sr) != 2 || sr[0].Seeders != 3 || sr[0].Completed != 4 || sr[0].Leechers != 5 || sr[1].Seeders != 4 {
				t.Errorf("scrape %+v", sr)
			}

			tr.mu.Lock()
			tr.scrapeErr = bittorrent.ClientError("scrapes are disabled")
			tr.mu.Unlock()
			if _, err := cc.Client.Scrape(ctx, []trackerudp.InfoHash{hashN(3)}); err == nil {
				t.Error("scrape error not reported to the client")
			} else if want := (trackerudp.ErrorResponse{Message: "scrapes are disabled"}); err.Error() != want.Error() {
				t.Errorf("scrape error %q, want %q", err, want)
			}
		})
	}
}
