package node

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/anacrolix/torrent/tracker"
	"github.com/anacrolix/torrent/types/infohash"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// announceForFullScrape announces to swarms swarms through the clients in
// turn: swarm i gets i%3+1 seeders and one leecher, and its first seeder
// completed. It returns the counts a full scrape must show, by raw infohash.
func announceForFullScrape(t *testing.T, clients []*client, swarms int) map[string]map[string]any {
	t.Helper()
	want := map[string]map[string]any{}
	for i := range swarms {
		ih := infohash.T{0xf5, byte(i)}
		c := clients[i%len(clients)]
		seeders := i%3 + 1
		for k := range seeders {
			ev := tracker.Started
			if k == 0 {
				ev = tracker.Completed
			}
			c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID(byte('a' + k)), Port: uint16(7200 + k), NumWant: -1, Event: ev})
		}
		c.announce(tracker.AnnounceRequest{InfoHash: ih, PeerId: peerID('z'), Port: 7299, Left: 1, NumWant: -1, Event: tracker.Started})
		want[string(ih[:])] = map[string]any{"complete": int64(seeders), "downloaded": int64(1), "incomplete": int64(1)}
	}
	return want
}

// checkFullScrape GETs url plain and with gzip and checks that both list
// exactly the swarms of want with their counts. Full scrapes are rate
// limited, so it waits out the interval between the two.
func checkFullScrape(t *testing.T, url string, want map[string]map[string]any) {
	t.Helper()
	for _, gz := range []bool{false, true} {
		var files map[string]any
		eventually.True(t, 10*time.Second, "full scrape shows every swarm with its counts", func() bool {
			files = fullScrape(t, url, gz)
			if len(files) != len(want) {
				return false
			}
			for ih, w := range want {
				got, ok := files[ih].(map[string]any)
				if !ok {
					return false
				}
				for k, v := range w {
					if got[k] != v {
						return false
					}
				}
			}
			return true
		})
	}
}

// fullScrape GETs a full scrape and returns its files dictionary, or nil
// when it was refused (rate limit).
func fullScrape(t *testing.T, url string, gz bool) map[string]any {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gz {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if gotGz := resp.Header.Get("Content-Encoding") == "gzip"; gotGz != gz {
		if bytes.Contains(body, []byte("failure reason")) {
			return nil
		}
		t.Fatalf("Content-Encoding %q with Accept-Encoding gzip %v", resp.Header.Get("Content-Encoding"), gz)
	}
	if gz {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	v, err := bencode.Decoder{SortedKeys: true}.Decode(body)
	if err != nil {
		t.Fatalf("full scrape is not canonical bencode: %v", err)
	}
	d, _ := v.(map[string]any)
	if _, refused := d["failure reason"]; refused {
		return nil
	}
	files, ok := d["files"].(map[string]any)
	if !ok {
		t.Fatalf("full scrape %v has no files dictionary", d)
	}
	return files
}

// TestFullScrapeCluster announces to the three nodes of a cluster in turn
// and checks every node's full scrape lists every swarm of the cluster
// once with the right counts.
func TestFullScrapeCluster(t *testing.T) {
	var nodes []*Node
	for i, name := range []string{"f1", "f2", "f3"} {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) {
			c.Frontends.HTTP.FullScrape = true
			c.Frontends.HTTP.FullScrapeInterval = time.Second
		}))
	}
	eventually.NoError(t, convergeWithin, "cluster converges", func() error { return converged(nodes) })
	var clients []*client
	for _, n := range nodes {
		clients = append(clients, newClient(t, "udp://"+n.Addrs().UDP))
	}
	want := announceForFullScrape(t, clients, 30)
	for _, n := range nodes {
		checkFullScrape(t, "http://"+n.Addrs().HTTP+"/scrape", want)
	}
}
