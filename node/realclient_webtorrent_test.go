//go:build realclient

package node

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/bencode"
	"github.com/anacrolix/torrent/metainfo"
	"github.com/anacrolix/torrent/storage"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// webtorrentDownloadTimeout bounds one WebRTC download of the test file.
const webtorrentDownloadTimeout = 90 * time.Second

// TestRealClientWebTorrent: two anacrolix/torrent clients that can only
// speak WebRTC (no TCP, no uTP, no DHT, no PEX, no web seeds, and no
// tracker but Karuta's WebSocket) download a file from each other through
// one node.
func TestRealClientWebTorrent(t *testing.T) {
	n := startNode(t, "127.0.0.1", func(c *Config) { c.Frontends.WebTorrent.Addr = "127.0.0.1:0" })
	url := "ws://" + n.Addrs().WebTorrent + "/announce"
	webtorrentDownload(t, url, url, n, n)
	m := fetchPromSamples(t, "http://"+n.Addrs().Metrics+"/metrics")
	if v := m.value("karuta_webtorrent_signals_total", "kind", "offer", "result", "delivered"); v == 0 {
		t.Error("no offer was delivered through the tracker")
	}
	if v := m.value("karuta_webtorrent_signals_total", "kind", "answer", "result", "delivered"); v == 0 {
		t.Error("no answer was delivered through the tracker")
	}
}

// TestRealClientWebTorrentCluster: the same download through a cluster of
// three nodes, the seeder's socket on the first and the leecher's on the
// third, so offers and answers cross nodes.
func TestRealClientWebTorrentCluster(t *testing.T) {
	var nodes []*Node
	for i, name := range []string{"wt1", "wt2", "wt3"} {
		var join []string
		if i > 0 {
			join = []string{nodes[0].Addrs().Gossip}
		}
		nodes = append(nodes, startClusterNode(t, name, join, func(c *Config) { c.Frontends.WebTorrent.Addr = "127.0.0.1:0" }))
	}
	eventually.NoError(t, convergeWithin, "cluster converges", func() error { return converged(nodes) })
	seed, leech := nodes[0], nodes[2]
	webtorrentDownload(t, "ws://"+seed.Addrs().WebTorrent+"/announce", "ws://"+leech.Addrs().WebTorrent+"/announce", leech, nodes...)

	// The offers went from the leecher's node to the seeder's, the answers back.
	ms := fetchPromSamples(t, "http://"+seed.Addrs().Metrics+"/metrics")
	ml := fetchPromSamples(t, "http://"+leech.Addrs().Metrics+"/metrics")
	if v := ml.value("karuta_webtorrent_signals_relayed_total", "kind", "offer"); v == 0 {
		t.Error("the leecher's node relayed no offer to another node")
	}
	if v := ms.value("karuta_webtorrent_signals_total", "kind", "offer", "result", "delivered"); v == 0 {
		t.Error("the seeder's node delivered no offer")
	}
	if v := ms.value("karuta_webtorrent_signals_relayed_total", "kind", "answer"); v == 0 {
		t.Error("the seeder's node relayed no answer to another node")
	}
	if v := ml.value("karuta_webtorrent_signals_total", "kind", "answer", "result", "delivered"); v == 0 {
		t.Error("the leecher's node delivered no answer")
	}
	for _, n := range nodes {
		m := fetchPromSamples(t, "http://"+n.Addrs().Metrics+"/metrics")
		for _, r := range []string{"queue_full", "unreachable", "no_node"} {
			if v := m.value("karuta_cluster_signals_total", "result", r); v != 0 {
				t.Errorf("%s dropped %v signals: %s", nodeName(n), v, r)
			}
		}
	}
}

// webtorrentDownload seeds a random file to seedURL's tracker and
// downloads it through leechURL's (leechNode's), WebRTC only, and checks
// the bytes.
func webtorrentDownload(t *testing.T, seedURL, leechURL string, leechNode *Node, nodes ...*Node) {
	t.Helper()
	const size = 1 << 20
	data := make([]byte, size)
	_, _ = rand.Read(data)
	seedDir, leechDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(seedDir, "payload.bin"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	info := metainfo.Info{PieceLength: 64 << 10}
	if err := info.BuildFromFilePath(filepath.Join(seedDir, "payload.bin")); err != nil {
		t.Fatal(err)
	}
	infoBytes, err := bencode.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	viaOther := map[string]int{} // bytes received over anything but WebRTC
	var viaWebRTC int
	newClient := func(dir string) *torrent.Client {
		cfg := torrent.NewDefaultClientConfig()
		cfg.DataDir = dir
		cfg.DefaultStorage = storage.NewFile(dir)
		cfg.DisableTCP = true
		cfg.DisableUTP = true
		cfg.NoDHT = true
		cfg.DisablePEX = true
		cfg.DisableWebseeds = true
		cfg.DisableIPv6 = true
		cfg.ListenPort = 0
		cfg.Seed = true
		cfg.ICEServers = nil // host candidates only: no STUN or TURN
		cfg.ICEServerList = nil
		cfg.Callbacks.ReceivedUsefulData = append(cfg.Callbacks.ReceivedUsefulData, func(e torrent.ReceivedUsefulDataEvent) {
			mu.Lock()
			defer mu.Unlock()
			if e.Peer.Network == "webrtc" {
				viaWebRTC += len(e.Message.Piece)
			} else {
				viaOther[e.Peer.Network] += len(e.Message.Piece)
			}
		})
		cl, err := torrent.NewClient(cfg)
		if err != nil {
			t.Fatalf("anacrolix client: %v", err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	add := func(cl *torrent.Client, tracker string) *torrent.Torrent {
		mi := metainfo.MetaInfo{InfoBytes: infoBytes, AnnounceList: [][]string{{tracker}}}
		tor, err := cl.AddTorrent(&mi)
		if err != nil {
			t.Fatal(err)
		}
		return tor
	}

	seeder := add(newClient(seedDir), seedURL)
	<-seeder.GotInfo()
	if err := seeder.VerifyDataContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-seeder.Complete().On():
	case <-time.After(10 * time.Second):
		t.Fatalf("the seeder does not have the whole file: %d of %d bytes", seeder.BytesCompleted(), size)
	}
	// A WebTorrent client announces again only after minutes, so a
	// leecher whose first announce beat the seeder's registration at the
	// swarm's owners (the milliseconds of a forward) would find no one to
	// offer to. Start it once the leecher's node counts the seeder in the
	// swarm (a scrape reads the swarm as an announce does), as in a swarm
	// already running.
	if leechNode != nil && leechNode.Addrs().HTTP != "" {
		ih := metainfo.HashBytes(infoBytes)
		scrape := "http://" + leechNode.Addrs().HTTP + "/scrape?info_hash=" + url.QueryEscape(string(ih[:]))
		eventually.True(t, 10*time.Second, "the leecher's node counts the seeder", func() bool {
			resp, err := http.Get(scrape)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return strings.Contains(string(body), "8:completei1e")
		})
	}
	leecher := add(newClient(leechDir), leechURL)
	<-leecher.GotInfo()
	leecher.DownloadAll()
	select {
	case <-leecher.Complete().On():
	case <-time.After(webtorrentDownloadTimeout):
		for _, n := range nodes {
			t.Logf("%s: %s", nodeName(n), webtorrentMetrics(t, n))
		}
		t.Fatalf("download incomplete after %s: %d of %d bytes; leecher stats %+v", webtorrentDownloadTimeout, leecher.BytesCompleted(), size, leecher.Stats())
	}
	got, err := os.ReadFile(filepath.Join(leechDir, "payload.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("downloaded file differs: sha256 %x, want %x", sha256.Sum256(got), sha256.Sum256(data))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(viaOther) > 0 {
		t.Errorf("bytes came by other paths than WebRTC: %v", viaOther)
	}
	if viaWebRTC < size {
		t.Errorf("%d bytes came over WebRTC; want at least the file's %d", viaWebRTC, size)
	}
	t.Logf("downloaded %d bytes over WebRTC", viaWebRTC)
}

// webtorrentMetrics is a node's WebTorrent series, for failure reports.
func webtorrentMetrics(t *testing.T, n *Node) string {
	var b strings.Builder
	for _, line := range strings.Split(scrapeMetrics(t, n.Addrs().Metrics), "\n") {
		if (strings.Contains(line, "webtorrent") || strings.Contains(line, "signals")) && !strings.HasPrefix(line, "#") && !strings.HasSuffix(line, " 0") {
			b.WriteString(line + "; ")
		}
	}
	return b.String()
}
